"""Prompt files for `unclip batch`: .txt, .jsonl and .csv, read and checked whole before any work starts.

    from unclip.batch.prompts import read_prompts
    rows = read_prompts("prompts.txt")   # [PromptRow(row=0, line=1, prompt="a red circle ..."), ...]

* ``.txt``: one prompt a line; blank lines and lines starting with ``#`` are skipped.
* ``.jsonl``: one JSON object a line with a ``"prompt"``; blank lines are skipped.
* ``.csv``: a header row with a ``prompt`` column (any order, other known columns optional).

Optional per-row overrides (.jsonl keys, .csv columns; an empty .csv cell or a JSON null means "not given"):
``negative_prompt``, ``seed`` (≥ 0), ``num_images`` (≥ 1), ``steps`` and ``guidance`` (the 64 px decoder's,
the stage that decides what is drawn) and ``size`` (64, 256 or 1024). An unknown field or a bad value is an
``UnclipError`` naming ``FILE:LINE``. ``row`` numbers the prompts from 0 in file order (comments and blank
lines not counted): with the image index it makes each image's id and seed (``unclip.batch.plan``).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unclip.errors import UnclipError
from unclip.settings import SETTINGS
from unclip.stages import SIZES

FORMATS = (".txt", ".jsonl", ".csv")


class _LineError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class PromptRow:
    row: int  # the prompt's number in the file, from 0
    line: int  # its line in the file, from 1 (for messages)
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    num_images: int | None = None
    steps: int | None = None
    guidance: float | None = None
    size: int | None = None


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, str):
        value = value.strip()
        if value.lstrip("-").isdigit():
            value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return value


def _number(value: Any, name: str) -> float:
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return number


def _stage_setting(setting: str):
    """A row's per-stage setting (the decoder's): read as the table's kind, then the table's one check of it."""

    def parse(value: Any, name: str):
        value = _integer(value, name, 0) if SETTINGS[setting].kind is int else _number(value, name)
        problem = SETTINGS[setting].problem(value)
        if problem:
            raise ValueError(f"{name} {problem}")
        return value

    return parse


def _size(value: Any, name: str) -> int:
    size = _integer(value, name, 1)
    if size not in SIZES:
        raise ValueError(f"{name} must be one of {', '.join(map(str, SIZES))}, got {size}")
    return size


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text, got {value!r}")
    return value


PARSERS = {
    "negative_prompt": _text,
    "seed": lambda v, n: _integer(v, n, 0),
    "num_images": lambda v, n: _integer(v, n, 1),
    "steps": _stage_setting("steps"),
    "guidance": _stage_setting("guidance"),
    "size": _size,
}


def _row(fields: dict[str, Any], row: int, line: int) -> PromptRow:
    """A checked row from a mapping of field → raw value (ValueError with the problem, no location)."""
    unknown = sorted(set(fields) - {"prompt", *PARSERS})
    if unknown:
        raise ValueError(f"unknown field '{unknown[0]}'; known: prompt, {', '.join(PARSERS)}")
    prompt = fields.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f'needs a non-empty "prompt", got {prompt!r}')
    given = {k: v for k, v in fields.items() if k != "prompt" and v is not None and v != ""}
    return PromptRow(row, line, prompt.strip(), **{k: PARSERS[k](v, k) for k, v in given.items()})


def _txt(content: str):
    for number, text in enumerate(content.splitlines(), 1):
        if text.strip() and not text.lstrip().startswith("#"):
            yield number, {"prompt": text.strip()}


def _jsonl(content: str):
    for number, text in enumerate(content.splitlines(), 1):
        if not text.strip():
            continue
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            raise _LineError(number, f"not valid JSON ({err.msg})") from None
        if not isinstance(fields, dict):
            raise _LineError(number, 'each line must be a JSON object such as {"prompt": "a cat"}')
        yield number, fields


def _csv(content: str):
    reader = csv.reader(io.StringIO(content, newline=""))
    header = next(reader, None)
    if not header or "prompt" not in [h.strip() for h in header]:
        raise _LineError(1, "a .csv needs a header row with a 'prompt' column")
    names = [h.strip() for h in header]
    for cells in reader:
        number = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(names):
            raise _LineError(number, f"{len(cells)} cells for {len(names)} columns ({', '.join(names)})")
        yield number, dict(zip(names, cells, strict=True))


READERS = {".txt": _txt, ".jsonl": _jsonl, ".csv": _csv}


def read_prompts(path: str | Path) -> list[PromptRow]:
    """Every prompt row of ``path``, checked; ``UnclipError("FILE:LINE: ...")`` at the first bad line."""
    path = Path(path)
    if path.suffix.lower() not in READERS:
        raise UnclipError(f"{path}: unknown prompt file type '{path.suffix}': use one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise UnclipError(f"{path}: no such prompt file")
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UnclipError(f"{path}: not UTF-8 text") from None
    rows: list[PromptRow] = []
    try:
        for number, fields in READERS[path.suffix.lower()](content):
            try:
                rows.append(_row(fields, len(rows), number))
            except ValueError as err:
                raise _LineError(number, str(err)) from None
    except _LineError as err:
        raise UnclipError(f"{path}:{err.line}: {err}") from None
    if not rows:
        raise UnclipError(f"{path}: no prompts (blank lines and # comments are skipped)")
    return rows
