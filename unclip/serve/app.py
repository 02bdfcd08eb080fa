"""The FastAPI application of `unclip serve`: the OpenAI Images API, the AUTOMATIC1111 API, the web page.

    from unclip.serve.app import create_app
    from unclip.serve.engine import Engine

    engine = Engine(pipe, out=Path("served")).start()
    app = create_app(engine, model="demo", api_key=None, cors=None)   # then uvicorn.run(app, host=..., port=...)

Routes: ``/v1/images/*`` (``openai_api``), ``/sdapi/v1/*`` (``a1111``), ``/api/*`` (the page's jobs: submit,
poll, cancel; the gallery), ``/files/NAME`` (a result in the output folder, by its file name only), ``/`` and
``/static/*`` (the page: no CDN, no external font or script). With ``api_key`` every route but the page and its
static files needs ``Authorization: Bearer KEY`` (401 otherwise). FastAPI's /docs and /redoc load their scripts
from a CDN: they are off; ``/openapi.json`` stays.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from unclip.errors import UnclipError
from unclip.serve.engine import Cancelled, Engine, Job, QueueFull
from unclip.serve.http import FILE_NAME, GenerationFailed, describe, error_response, json_body, load_result, result_path
from unclip.serve.requests import (
    BadRequest,
    check_plan,
    count,
    prompt_of,
    seed_of,
    settings_of,
    size_of,
    without_prior,
)

STATIC = Path(__file__).parent / "static"


def create_app(engine: Engine, model: str = "model", api_key: str | None = None, cors: str | None = None):
    from unclip.serve import a1111, openai_api

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise Unauthorized()

    app = FastAPI(title="unclip", docs_url=None, redoc_url=None)
    app.state.engine, app.state.model = engine, model
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["*"], allow_headers=["*"])

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, err: Unauthorized):
        message = "missing or wrong API key: send the header Authorization: Bearer KEY"
        return error_response(request, 401, message, "invalid_api_key")

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return error_response(request, 400, str(err), "invalid_request_error", err.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
        param = where[0] if where else None
        message = f"{'.'.join(where) or 'request'}: {first.get('msg', 'invalid')}"
        return error_response(request, 400, message, "invalid_request_error", param)

    @app.exception_handler(UnclipError)
    async def refused(request: Request, err: UnclipError):  # e.g. n over --max-batch
        return error_response(request, 400, str(err), "invalid_request_error")

    @app.exception_handler(GenerationFailed)
    async def failed(request: Request, err: GenerationFailed):  # the model failed on a good request
        return error_response(request, 500, str(err), "server_error")

    @app.exception_handler(NotFound)
    async def not_found(request: Request, err: NotFound):
        return error_response(request, 404, str(err), "not_found", err.param)

    @app.exception_handler(QueueFull)
    async def full(request: Request, err: QueueFull):
        return error_response(request, 429, str(err), "rate_limit_exceeded")

    protected = [Depends(authorize)]
    app.include_router(openai_api.router, dependencies=protected)
    app.include_router(a1111.router, dependencies=protected)

    @app.post("/api/jobs", dependencies=protected)
    async def submit(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        pipe = engine.pipe
        size = size_of(body.get("size", f"{pipe.max_size}x{pipe.max_size}"), pipe)
        settings = settings_of(body.get("settings") or {}, pipe)
        source, ends = body.get("variation_of"), body.get("interpolate")
        if source is not None or ends is not None:  # the page sends every stage's fields; these run no prior
            settings = without_prior(settings)
        check_plan(pipe, size, settings, "prior" if source is None and ends is None else "decoder")
        seed = seed_of(body.get("seed"))
        if ends is not None:
            if not isinstance(ends, list) or len(ends) != 2:
                raise BadRequest("interpolate must be the file names of two results", "interpolate")
            images = tuple(load_result(engine, name, "interpolate") for name in ends)
            job = Job("interpolate", count(body.get("n", 5), "frames"), size, seed, image=images, settings=settings)
        elif source is not None:
            image = load_result(engine, source)
            job = Job("vary", count(body.get("n", 1)), size, seed, image=image, settings=settings)
        else:
            job = Job.generate(
                prompt_of(body.get("prompt")), count(body.get("n", 1)), size, seed,
                negative_prompt=prompt_of(body.get("negative_prompt"), "negative_prompt", required=False),
                settings=settings,
            )  # fmt: skip
        engine.submit(job)
        return {"id": job.id, "state": job.state}

    @app.get("/api/jobs/{job_id}", dependencies=protected)
    def poll(job_id: str) -> dict[str, Any]:
        job = engine.job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id} (finished jobs are kept for a while, not forever)", "id")
        out: dict[str, Any] = {"id": job.id, "state": job.state}
        progress = engine.progress()
        if job.id in progress["jobs"]:
            out["progress"] = progress
        if job.state == "done":
            out["images"] = [describe(image.path, image.metadata) for image in job.result()]
        elif job.future.done() and not isinstance(job.future.exception(), Cancelled):
            out["state"], out["error"] = "failed", str(job.future.exception())
        return out

    @app.delete("/api/jobs/{job_id}", dependencies=protected)
    def cancel(job_id: str) -> dict[str, Any]:
        return {"id": job_id, "cancelled": engine.cancel(job_id)}

    @app.get("/api/gallery", dependencies=protected)
    def gallery(limit: int = 100) -> dict[str, Any]:
        return {"images": read_gallery(engine.out, max(1, min(limit, 1000))), "model": model}

    @app.get("/api/info", dependencies=protected)
    def info() -> dict[str, Any]:
        from unclip.schedulers import SCHEDULERS
        from unclip.serve.requests import sizes

        pipe = engine.pipe
        return {
            "model": model, "sizes": sizes(pipe), "max_batch": engine.max_batch, "schedulers": list(SCHEDULERS),
            "completed": engine.completed, "calls": engine.calls,
            "stages": {name: stage_settings(pipe, name) for name in pipe.plan(pipe.max_size).stages},
        }  # fmt: skip

    @app.get("/files/{name}", dependencies=protected)
    def file(name: str):
        return FileResponse(result_path(engine.out, name), media_type="image/png")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class Unauthorized(Exception):
    pass


class NotFound(BadRequest):
    pass


def read_gallery(out: Path, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` results of the output folder's metadata.jsonl whose files exist, newest first."""
    metadata = out / "metadata.jsonl"
    lines = metadata.read_text(encoding="utf-8").splitlines() if metadata.exists() else []
    images = []
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        name = row.get("file_name", "")
        if isinstance(name, str) and FILE_NAME.match(name) and (out / name).is_file():
            images.append(describe(out / name, row))
        if len(images) == limit:
            break
    return images


def stage_settings(pipe, name: str) -> dict[str, Any]:
    """The settings a stage takes and their defaults for this model, for the page's Advanced panel."""
    from dataclasses import asdict

    from unclip.plan import KEYWORDS

    values = asdict(pipe.plan(pipe.max_size).settings[name])
    return {n.setting: {"keyword": k, "default": values.get(n.setting)} for k, n in KEYWORDS.items() if n.stage == name}
