"""A batch run's browsable summary, rebuilt from metadata.jsonl at the end of every run.

    write_gallery(out, lines)   # out/grids/<row>.png (a prompt's images side by side), out/index.html

index.html lists each prompt (in file order) with its grid, then every image as a thumbnail linking to the
full PNG, with its id and seed (``unclip generate PROMPT --seed SEED`` remakes it). Both are written to a
temporary file and renamed, like the images.
"""

from __future__ import annotations

import html
import math
from itertools import groupby
from pathlib import Path
from typing import Any

from PIL import Image

from unclip.batch.store import write_atomically

GRIDS = "grids"
CELL = 256  # pixels per image in a grid


def grid(images: list[Image.Image], columns: int = 4, cell: int = CELL) -> Image.Image:
    """The images resized to ``cell`` pixels and laid out ``columns`` to a row."""
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * cell, rows * cell), "white")
    for k, image in enumerate(images):
        thumb = image.convert("RGB").resize((cell, cell), Image.Resampling.LANCZOS)
        sheet.paste(thumb, ((k % columns) * cell, (k // columns) * cell))
    return sheet


def _row_html(row: int, lines: list[dict[str, Any]]) -> str:
    first = lines[0]
    negative = (
        f'<div class="neg">negative: {html.escape(first["negative_prompt"])}</div>'
        if first.get("negative_prompt")
        else ""
    )
    cells = "".join(
        f'<figure><a href="{html.escape(line["file_name"])}"><img src="{html.escape(line["file_name"])}" '
        f'loading="lazy" width="128" height="128"></a><figcaption>{html.escape(line["id"])} · seed '
        f"{line['seed']}</figcaption></figure>"
        for line in lines
    )
    return (
        f'<section id="row-{row}"><h2>{row}. {html.escape(first["prompt"])}</h2>{negative}'
        f'<a href="{GRIDS}/{row:05d}.png">grid</a><div class="images">{cells}</div></section>'
    )


STYLE = (
    "body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:0 8px 8px 0}"
    "figcaption{font-size:12px;color:#555}.neg{color:#a00;font-size:14px}img{image-rendering:auto}"
)


def write_gallery(out: Path, lines: dict[str, dict[str, Any]]) -> None:
    """Grids and index.html for the finished images ``lines`` (file name → metadata line)."""
    ordered = sorted(lines.values(), key=lambda line: (line["row"], line["index"]))
    (out / GRIDS).mkdir(exist_ok=True)
    sections = []
    for row, same in groupby(ordered, key=lambda line: line["row"]):
        same = list(same)
        images = []
        for line in same:
            with Image.open(out / line["file_name"]) as image:
                images.append(image.convert("RGB"))
        sheet = grid(images)
        write_atomically(out / GRIDS / f"{row:05d}.png", lambda handle, sheet=sheet: sheet.save(handle, format="PNG"))
        sections.append(_row_html(row, same))
    page = (
        f"<!doctype html><meta charset=utf-8><title>unclip batch: {html.escape(out.name)}</title>"
        f"<style>{STYLE}</style><h1>{html.escape(out.name)}: {len(ordered)} images</h1>" + "".join(sections)
    )
    write_atomically(out / "index.html", lambda handle: handle.write(page.encode("utf-8")))
