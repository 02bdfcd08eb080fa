"""What a client may ask for, checked once for every API: sizes, counts, seeds, prompts, per-stage settings.

Each check raises ``BadRequest`` naming the field (OpenAI's ``param``) and the fix; the routes turn it into their
API's error JSON with status 400.
"""

from __future__ import annotations

import io
import random
import re
from typing import Any

from unclip.plan import KEYWORDS
from unclip.schedulers import SCHEDULERS

MAX_IMAGES = 10  # n of one request (OpenAI's limit for DALL·E 2)
MAX_UPLOAD = 4 * 1024 * 1024  # bytes of an uploaded image (OpenAI's)
MAX_PROMPT = 1000  # characters (DALL·E 2's); CLIP reads the first 77 tokens, as `unclip generate` warns
_SIZE = re.compile(r"^(\d+)x(\d+)$")


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def sizes(pipe) -> list[int]:
    """The square sizes this model makes: 64 and each upsampler's output, up to its largest."""
    from unclip.stages import SIZES

    return [s for s in SIZES if s <= pipe.max_size]


def size_of(text: Any, pipe, param: str = "size") -> int:
    """ "WxH" (OpenAI) → the side, which must be one the model makes."""
    allowed = sizes(pipe)
    match = _SIZE.match(str(text))
    if match is None or match.group(1) != match.group(2) or int(match.group(1)) not in allowed:
        choices = ", ".join(f'"{s}x{s}"' for s in allowed)
        raise BadRequest(f"size {text!r} is not one this model makes: choose {choices}", param)
    return int(match.group(1))


def side_of(width: Any, height: Any, pipe) -> int:
    """A1111's width and height → the side: equal, and a size the model makes."""
    allowed = sizes(pipe)
    if width != height or width not in allowed:
        raise BadRequest(
            f"width {width} × height {height}: this model makes squares of {', '.join(map(str, allowed))} px", "width"
        )
    return int(width)


def count(value: Any, param: str = "n", limit: int = MAX_IMAGES) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise BadRequest(f"{param} must be a whole number from 1 to {limit}, got {value!r}", param)
    return value


def seed_of(value: Any, param: str = "seed") -> int:
    """A seed ≥ 0; None or −1: a random one (said back in the response)."""
    from unclip.sampling import whole_number

    if value is None or value == -1:
        return random.randrange(2**31)
    if not whole_number(value):
        raise BadRequest(f"{param} must be a whole number ≥ 0 (or -1 for a random one), got {value!r}", param)
    return value


def prompt_of(value: Any, param: str = "prompt", required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{param} must be a non-empty string", param)
    if len(value) > MAX_PROMPT:
        raise BadRequest(f"{param} is {len(value)} characters; at most {MAX_PROMPT}", param)
    return value


def settings_of(fields: dict[str, Any], pipe) -> dict[str, Any]:
    """The pipeline keywords among a request's fields (``unclip.plan.KEYWORDS``, e.g. ``decoder_guidance_scale``,
    and ``scheduler``), checked against the model's plan; the other fields are not looked at."""
    settings = {k: v for k, v in fields.items() if k in KEYWORDS and v is not None}
    scheduler = fields.get("scheduler")
    if scheduler is not None:
        if not isinstance(scheduler, str) or scheduler not in SCHEDULERS:
            raise BadRequest(f"scheduler {scheduler!r} is unknown: choose one of {', '.join(SCHEDULERS)}", "scheduler")
        settings["scheduler"] = scheduler
    return settings


def check_plan(pipe, size: int, settings: dict[str, Any], first_stage: str = "prior") -> None:
    """Every per-stage check the pipeline makes, before the request waits in the queue (variations start at the
    decoder: ``first_stage``)."""
    from unclip.errors import UnclipError

    stage_args = {k: v for k, v in settings.items() if k != "scheduler"}
    try:
        pipe.plan(size, settings.get("scheduler"), stage_args, first_stage=first_stage)
    except UnclipError as err:
        raise BadRequest(str(err)) from None


def without_prior(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` less the prior's (a variation starts from the picture's embedding: no prior runs)."""
    return {k: v for k, v in settings.items() if k not in KEYWORDS or KEYWORDS[k].stage != "prior"}


def image_of(data: bytes, param: str = "image", keep_alpha: bool = False):
    """Uploaded bytes → an RGB PIL image (RGBA with ``keep_alpha`` when it has transparency: an edit's mask), at
    most ``MAX_UPLOAD`` bytes."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD:
        raise BadRequest(f"{param} is {len(data) / 2**20:.1f} MB; at most 4 MB", param)
    if not data:
        raise BadRequest(f"{param} is empty: upload a PNG", param)
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()
            transparent = opened.mode in ("RGBA", "LA", "PA") or "transparency" in opened.info
            return opened.convert("RGBA" if keep_alpha and transparent else "RGB")
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadRequest(f"{param} is not an image PIL can read: upload a PNG", param) from None
