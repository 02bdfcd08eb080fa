"""What every route of `unclip serve` shares: the error JSON, the JSON body, waiting for a job, the result files.

from unclip.serve.http import error_response, json_body, results, result_path
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from unclip.serve.engine import Cancelled, Engine, Job
from unclip.serve.requests import BadRequest

FILE_NAME = re.compile(r"^\d{5}-\d+\.png$")  # what unclip.outputs.save_images writes, nothing else
POLL = 0.5  # seconds between checks that a waiting client is still there


def error_response(request, status: int, message: str, kind: str, param: str | None = None):
    """OpenAI's error JSON everywhere (A1111's clients read ``error`` and ``detail``: both are there)."""
    from fastapi.responses import JSONResponse

    body: dict[str, Any] = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    if request.url.path.startswith("/sdapi/"):
        body["detail"] = message
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


async def json_body(request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON: send a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


async def wait_for(job: Job, request, engine: Engine) -> list:
    """The job's images; cancels it when the client goes away first. Raises Cancelled or the job's error."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=POLL)
        if done:
            return future.result()
        if await request.is_disconnected():
            engine.cancel(job.id)
            raise Cancelled(f"{job.id}: the client went away")


class GenerationFailed(Exception):
    """The model failed on a request that passed every check: the app answers 500 with the cause."""


async def results(job: Job, request, engine: Engine) -> list:
    """``wait_for``, the job's failure raised as the app answers it: Cancelled, BadRequest and UnclipError (400)
    as they are, anything else as GenerationFailed (500)."""
    from unclip.errors import UnclipError

    try:
        return await wait_for(job, request, engine)
    except (Cancelled, BadRequest, UnclipError):
        raise
    except Exception as err:
        raise GenerationFailed(f"generation failed: {type(err).__name__}: {err}") from err


def result_path(out: Path, name: str) -> Path:
    """A file of the output folder by name alone: ``NNNNN-SEED.png`` directly in it, nothing else (404); the file
    itself is resolved, so a link in the folder that points out of it is refused too."""
    from fastapi import HTTPException

    path = out / name
    if not FILE_NAME.match(name) or path.resolve().parent != out.resolve() or not path.is_file():
        raise HTTPException(status_code=404, detail=f"no result {name}")
    return path


def load_result(engine: Engine, name: Any, param: str = "variation_of"):
    """A result of the output folder, by file name, as an RGB image (400 naming ``param`` when there is none)."""
    from PIL import Image

    if not isinstance(name, str):
        raise BadRequest(f"{param} must be the file name of a result", param)
    try:
        path = result_path(engine.out, name)
    except Exception:
        raise BadRequest(f"no result {name} in this server's output folder", param) from None
    with Image.open(path) as image:
        return image.convert("RGB")


def describe(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    from unclip.outputs import a1111_parameters

    return {"file": path.name, "url": f"/files/{path.name}", "metadata": metadata,
            "parameters": a1111_parameters(metadata)}  # fmt: skip
