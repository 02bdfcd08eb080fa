"""The output folder of a batch run: complete PNGs only, exactly one metadata line per finished image.

    DIR/<id>.png                      a finished image (written as a temporary file, then renamed)
    DIR/metadata.jsonl                one JSON line per finished image, sorted by id (``repair`` writes it)
    DIR/.parts/metadata-<rank>.jsonl  each process's lines while it runs (processes never share a file)

A PNG that exists is complete: it is written to ``.<id>.png.tmp-<pid>``, flushed to disk and renamed, and it
carries its own metadata line in a PNG text chunk (``unclip``; ``parameters`` holds the AUTOMATIC1111 text).
A process killed at any moment leaves at most a temporary file and a torn last line in its part file;
``repair`` (at the start and end of every run, by the main process alone) removes the first, ignores the
second, keeps one line per id, drops lines whose PNG is gone and recovers a line from each PNG that lacks one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from unclip.outputs import a1111_parameters

METADATA = "metadata.jsonl"
PARTS = ".parts"
TEXT_KEY = "unclip"  # the PNG text chunk holding the image's metadata line


def write_atomically(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """``write(handle)`` into ``.<name>.tmp-<pid>`` beside ``path``, flush it to disk, rename it to ``path``:
    a reader (or a crash) sees the old file or the whole new one, never part of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def write_image(folder: Path, image_id: str, image: Image.Image, meta: dict[str, Any]) -> Path:
    """Write ``<id>.png`` atomically, with ``meta`` (which must hold ``file_name``) in its text chunks."""
    info = PngInfo()
    info.add_text("parameters", a1111_parameters(meta))
    info.add_text(TEXT_KEY, json.dumps(meta))
    return write_atomically(folder / f"{image_id}.png", lambda handle: image.save(handle, format="PNG", pnginfo=info))


def append_line(folder: Path, rank: int, meta: dict[str, Any]) -> None:
    """Append ``meta`` to this process's part file (after its PNG is in place)."""
    parts = folder / PARTS
    parts.mkdir(exist_ok=True)
    with open(parts / f"metadata-{rank}.jsonl", "a") as handle:
        handle.write(json.dumps(meta) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The well-formed JSON objects of a metadata file (a torn or garbled line is skipped)."""
    out = []
    if path.is_file():
        for text in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict) and isinstance(line.get("file_name"), str):
                out.append(line)
    return out


def _embedded(png: Path) -> dict[str, Any] | None:
    """The metadata line a PNG carries, or None if the file is not a complete, readable PNG of ours."""
    try:
        with Image.open(png) as image:
            image.load()
            text = image.text.get(TEXT_KEY)  # type: ignore[attr-defined]
        line = json.loads(text) if text else None
    except (OSError, SyntaxError, ValueError):
        return None
    return line if isinstance(line, dict) and line.get("file_name") == png.name else None


def repair(folder: Path) -> dict[str, dict[str, Any]]:
    """Make ``metadata.jsonl`` exactly one line per finished image; returns them by file name.

    Only the main process may call it, while no other process writes (start and end of a run)."""
    for tmp in folder.glob(".*.png.tmp-*"):
        tmp.unlink(missing_ok=True)
    parts = sorted((folder / PARTS).glob("metadata-*.jsonl")) if (folder / PARTS).is_dir() else []
    lines: dict[str, dict[str, Any]] = {}
    for path in [folder / METADATA, *parts]:
        for line in read_lines(path):
            lines.setdefault(line["file_name"], line)
    pngs = {p.name for p in folder.glob("*.png")}
    lines = {name: line for name, line in lines.items() if name in pngs}
    for name in sorted(pngs - set(lines)):
        line = _embedded(folder / name)
        if line is None:  # not one of ours, or unreadable: left alone, and not counted as finished
            continue
        lines[name] = line
    text = "".join(json.dumps(lines[name]) + "\n" for name in sorted(lines))
    write_atomically(folder / METADATA, lambda handle: handle.write(text.encode("utf-8")))
    for path in parts:
        path.unlink(missing_ok=True)
    return lines
