"""AUTOMATIC1111's web UI API (``/sdapi/v1``), as its front ends, plugins and the ``webuiapi`` client speak it.

    api = webuiapi.WebUIApi(host="127.0.0.1", port=7860)
    api.txt2img(prompt="a red circle on a blue background", seed=0, steps=25, cfg_scale=3, width=256, height=256)

``POST /txt2img`` takes the whole body A1111's clients send; fields unclip has no use for are ignored. Mapped:
``prompt``, ``negative_prompt``, ``seed`` (-1: random; image k uses seed + k), ``steps`` and ``cfg_scale`` (the
64 px decoder's, as the PNG parameters text names them), ``sampler_name`` or ``sampler_index`` (``SAMPLERS``: an
A1111 sampler with a matching unclip scheduler gets it for every stage; any other keeps the model's, and ``info``
says so), ``width`` = ``height`` (a size the model makes; default its largest), ``batch_size`` × ``n_iter``
images (≤ 10), and any unclip per-stage keyword (``prior_guidance_scale`` ...). The answer: ``images``
(base64 PNGs with their parameters text), ``parameters`` (the request), ``info`` (a JSON string: ``seed``,
``all_seeds``, ``infotexts`` ...). Also ``GET /progress``, ``POST /interrupt``, ``GET /sd-models``,
``GET /samplers``, ``GET /options``, ``POST /png-info``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from fastapi import APIRouter, Request

from unclip.serve.engine import Cancelled, Job
from unclip.serve.requests import BadRequest, check_plan, count, prompt_of, seed_of, settings_of, side_of

router = APIRouter(prefix="/sdapi/v1")
# A1111 sampler name → unclip scheduler (unclip.schedulers) where one is the same method
SAMPLERS: dict[str, str] = {"DDIM": "ddim", "DPM++ 2M": "dpmpp", "DDPM": "ddpm"}


@router.post("/txt2img")
async def txt2img(request: Request) -> Any:
    from unclip.serve.http import json_body, results

    body = await json_body(request)
    engine = request.app.state.engine
    pipe = engine.pipe
    size = side_of(body.get("width", pipe.max_size), body.get("height", pipe.max_size), pipe)
    n = count(_int(body.get("batch_size", 1), "batch_size") * _int(body.get("n_iter", 1), "n_iter"), "batch_size")
    fields = dict(body)
    if body.get("steps") is not None:
        fields.setdefault("decoder_num_inference_steps", _int(body["steps"], "steps"))
    if body.get("cfg_scale") is not None:
        fields.setdefault("decoder_guidance_scale", _float(body["cfg_scale"], "cfg_scale"))
    sampler = body.get("sampler_name") or body.get("sampler_index")
    notes = []
    if sampler:
        if sampler in SAMPLERS:
            fields.setdefault("scheduler", SAMPLERS[sampler])
        else:
            notes.append(f"sampler {sampler!r} has no unclip scheduler: the model's own were used")
    settings = settings_of({k: v for k, v in fields.items() if k != "scheduler"} | _scheduler(fields), pipe)
    check_plan(pipe, size, settings)
    job = Job.generate(
        prompt_of(body.get("prompt")), n, size, seed_of(body.get("seed")),
        negative_prompt=prompt_of(body.get("negative_prompt") or None, "negative_prompt", required=False),
        settings=settings,
    )  # fmt: skip
    engine.submit(job)
    try:
        images = await results(job, request, engine)
    except Cancelled:  # A1111 answers an interrupted request with what it made: nothing here
        info = {"prompt": job.prompt, "all_prompts": [], "seed": job.seed, "all_seeds": [], "infotexts": []}
        info["interrupted"] = True
        return {"images": [], "parameters": body, "info": json.dumps(info)}
    return {
        "images": [base64.b64encode(image.png).decode() for image in images],
        "parameters": body,
        "info": json.dumps(_info(job, images, notes)),
    }


def _info(job: Job, images: list, notes: list[str]) -> dict[str, Any]:
    from unclip.outputs import a1111_parameters

    first = images[0].metadata
    decoder = first["stages"].get("decoder", {})
    return {
        "prompt": job.prompt, "all_prompts": [job.prompt] * len(images), "negative_prompt": job.negative_prompt,
        "all_negative_prompts": [job.negative_prompt] * len(images), "seed": job.seed,
        "all_seeds": [image.metadata["seed"] for image in images], "subseed": -1, "all_subseeds": [-1] * len(images),
        "steps": decoder.get("steps"), "cfg_scale": decoder.get("guidance"),
        "sampler_name": decoder.get("scheduler"), "width": job.size, "height": job.size,
        "batch_size": len(images), "sd_model_name": first["model"],
        "infotexts": [a1111_parameters(image.metadata) for image in images],
        "files": [image.path.name for image in images], "job": job.id, "notes": notes,
    }  # fmt: skip


def _scheduler(fields: dict[str, Any]) -> dict[str, Any]:
    return {"scheduler": fields["scheduler"]} if fields.get("scheduler") else {}


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a whole number, got {value!r}", name)
    return value


def _float(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadRequest(f"{name} must be a number, got {value!r}", name)
    return float(value)


@router.get("/progress")
def progress(request: Request) -> dict[str, Any]:
    state = request.app.state.engine.progress()
    return {
        "progress": state["progress"], "eta_relative": state["eta"] or 0.0,
        "state": {"skipped": False, "interrupted": False, "job": ",".join(state["jobs"]),
                  "job_count": len(state["jobs"]) + state["queued"], "job_no": 0,
                  "sampling_step": state["step"], "sampling_steps": state["steps"]},
        "current_image": None, "textinfo": state["stage"],
    }  # fmt: skip


@router.post("/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    return {"interrupted": request.app.state.engine.interrupt()}


@router.post("/skip")
def skip(request: Request) -> dict[str, Any]:
    return {"interrupted": request.app.state.engine.interrupt()}


@router.get("/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    name = request.app.state.model
    return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}]


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    return [{"name": name, "aliases": [scheduler], "options": {}} for name, scheduler in SAMPLERS.items()]


@router.get("/options")
def options(request: Request) -> dict[str, Any]:
    return {"sd_model_checkpoint": request.app.state.model, "samples_format": "png"}


@router.post("/png-info")
async def png_info(request: Request) -> dict[str, Any]:
    from PIL import Image, UnidentifiedImageError

    from unclip.serve.http import json_body
    from unclip.serve.requests import MAX_UPLOAD

    body = await json_body(request)
    text = body.get("image")
    if not isinstance(text, str) or not text:
        raise BadRequest("image must be a base64 PNG (a data: URL too)", "image")
    try:
        data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("image is not base64", "image") from None
    if len(data) > MAX_UPLOAD:
        raise BadRequest("image is over 4 MB", "image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            items = {k: v for k, v in image.info.items() if isinstance(v, str)}
    except (UnidentifiedImageError, OSError):
        raise BadRequest("image is not a PNG PIL can read", "image") from None
    return {"info": items.pop("parameters", ""), "items": items}
