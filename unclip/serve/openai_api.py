"""OpenAI's Images API (made for DALL·E 2), as every OpenAI SDK speaks it once ``base_url`` points here.

    client = openai.OpenAI(base_url="http://127.0.0.1:7860/v1", api_key="KEY")
    client.images.generate(prompt="a red circle on a blue background", n=2, size="256x256")
    client.images.create_variation(image=open("x.png", "rb"), n=1, size="256x256")
    client.images.edit(image=open("x.png", "rb"), mask=open("mask.png", "rb"), prompt="a yellow circle", n=1)
    client.images.generate(prompt=..., extra_body={"seed": 0, "decoder_guidance_scale": 5})   # extra fields

``POST /v1/images/generations`` (JSON), ``/v1/images/variations`` and ``/v1/images/edits`` (multipart; an edit's
``mask`` is an RGBA PNG whose transparent pixels are the region, or white = repaint on black; without one, the
image's own transparent pixels): ``n`` 1-10, ``size`` "WxH" of a
size the model makes (default its largest), ``response_format`` ``b64_json`` (the default here) or ``url`` (a
``/files/NAME`` link to the saved PNG), ``model`` and ``user`` accepted and not used. Extra fields: ``seed``
(image k of the request uses seed + k; absent or -1: random), ``negative_prompt``, ``scheduler`` and the
per-stage keywords (``unclip.plan.KEYWORDS``: ``prior_guidance_scale``, ``decoder_num_inference_steps``, ...); an
edit's ``image_weight``, ``resample`` and ``blend`` (``UnCLIPCascade.edit``).
Errors are OpenAI's JSON: 400 for bad input, 401 for a missing or wrong key, 429 when the queue is full, 409
when the request was cancelled.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from fastapi import APIRouter, Request

from unclip.serve.engine import Cancelled, Job, ShuttingDown
from unclip.serve.requests import BadRequest, check_plan, count, image_of, prompt_of, seed_of, settings_of, size_of

router = APIRouter(prefix="/v1/images")
FORMATS = ("b64_json", "url")
# form fields that are numbers (multipart sends text)
_NUMBERS = ("n", "seed", "resample", "blend")
EDIT_OPTIONS = ("image_weight", "resample", "blend")


@router.post("/generations")
async def generations(request: Request) -> Any:
    from unclip.serve.http import json_body

    body = await json_body(request)
    engine = request.app.state.engine
    job = Job.generate(
        prompt_of(body.get("prompt")),
        count(body.get("n", 1)),
        _size(body, engine.pipe),
        seed_of(body.get("seed")),
        negative_prompt=prompt_of(body.get("negative_prompt"), "negative_prompt", required=False),
        settings=_settings(body, engine.pipe),
    )
    return await _respond(request, job, _format(body))


@router.post("/variations")
async def variations(request: Request) -> Any:
    form = await request.form()
    image = image_of(await _upload(form, "image", required=True))
    fields = _fields(form)
    engine = request.app.state.engine
    job = Job("vary", count(fields.get("n", 1)), _size(fields, engine.pipe), seed_of(fields.get("seed")), image=image,
              settings=_settings(fields, engine.pipe, first_stage="decoder"))  # fmt: skip
    return await _respond(request, job, _format(fields))


@router.post("/edits")
async def edits(request: Request) -> Any:
    from unclip.errors import UnclipError
    from unclip.inpaint import check_edit_options, first_stage
    from unclip.masks import read_canvas

    form = await request.form()
    image = image_of(await _upload(form, "image", required=True), keep_alpha=True)
    mask_bytes = await _upload(form, "mask")
    mask = image_of(mask_bytes, "mask", keep_alpha=True) if mask_bytes is not None else None
    fields = _fields(form)
    options = {k: fields.pop(k) for k in EDIT_OPTIONS if k in fields}
    try:
        canvas = read_canvas(image, mask)
        check_edit_options(options.get("image_weight", 0.0), options.get("resample", 1), options.get("blend"))
        canvas.check_region()
    except UnclipError as err:
        raise BadRequest(str(err), "mask" if "mask" in str(err) else "image") from None
    engine = request.app.state.engine
    first = first_stage(options.get("image_weight", 0.0))
    job = Job("edit", count(fields.get("n", 1)), _size(fields, engine.pipe), seed_of(fields.get("seed")),
              prompt=prompt_of(fields.get("prompt")), image=canvas, options=options,
              negative_prompt=prompt_of(fields.get("negative_prompt"), "negative_prompt", required=False),
              settings=_settings(fields, engine.pipe, first_stage=first))  # fmt: skip
    return await _respond(request, job, _format(fields))


async def _upload(form, name: str, required: bool = False) -> bytes | None:
    """The bytes of the file field ``name`` of a multipart form (None when absent and not required)."""
    upload = form.get(name)
    if upload is None or isinstance(upload, str):
        if required:
            raise BadRequest(f"{name} is required: a square PNG file (multipart/form-data)", name)
        return None
    return await upload.read()


def _fields(form) -> dict[str, Any]:
    """A multipart form's text fields, the numbers among them as numbers."""
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    for name in _NUMBERS:
        if name in fields:
            fields[name] = _number(fields[name], name)
    fields.update({k: _number(v, k, float) for k, v in fields.items() if k.endswith(("_scale", "_eta", "_weight"))})
    fields.update({k: _number(v, k) for k, v in fields.items() if k.endswith(("_steps", "_level", "_start"))})
    return fields


def _size(body: dict[str, Any], pipe) -> int:
    return size_of(body.get("size") or f"{pipe.max_size}x{pipe.max_size}", pipe)


def _settings(body: dict[str, Any], pipe, first_stage: str = "prior") -> dict[str, Any]:
    settings = settings_of(body, pipe)
    check_plan(pipe, _size(body, pipe), settings, first_stage)
    return settings


def _format(body: dict[str, Any]) -> str:
    value = body.get("response_format") or "b64_json"
    if value not in FORMATS:
        raise BadRequest(f"response_format must be b64_json or url, got {value!r}", "response_format")
    return value


def _number(text: Any, name: str, kind: type = int) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a number, got {text!r}", name) from None


async def _respond(request: Request, job: Job, response_format: str) -> Any:
    from unclip.serve.http import error_response, results

    engine = request.app.state.engine
    engine.submit(job)
    try:
        images = await results(job, request, engine)
    except ShuttingDown as err:
        return error_response(request, 503, f"{err}: retry when it is back", "server_unavailable")
    except Cancelled as err:
        return error_response(request, 409, f"the request was cancelled ({err})", "cancelled")
    data = []
    for image in images:
        if response_format == "url":
            data.append({"url": str(request.url_for("file", name=image.path.name)), "revised_prompt": None})
        else:
            data.append({"b64_json": base64.b64encode(image.png).decode(), "revised_prompt": None})
    return {"created": int(time.time()), "data": data}
