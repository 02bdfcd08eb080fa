"""Writing generated images: PNGs that carry their parameters, and one metadata.jsonl line per image.

Nothing is ever overwritten: file numbers continue after the highest already in the folder, and each
PNG is created exclusively (a clash moves on to the next number).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from unclip.errors import UnclipError

_NUMBERED = re.compile(r"^(\d+)-")


def ensure_writable(folder: Path) -> Path:
    """Create ``folder`` if needed and prove a file can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".unclip-write-test-"):
            pass
    except OSError as err:
        raise UnclipError(
            f"output folder {folder} is not writable ({err.strerror or err}): choose another --out"
        ) from None
    return folder


def a1111_parameters(meta: dict[str, Any]) -> str:
    """The AUTOMATIC1111 ``parameters`` text: prompt, ``Negative prompt:`` line, then ``Key: value`` pairs."""
    stages = meta["stages"]
    decoder = stages["decoder"]
    pairs = {
        "Steps": decoder["steps"],
        "Sampler": decoder["scheduler"],
        "CFG scale": decoder["guidance"],
        "Seed": meta["seed"],
        "Size": f"{meta['size']}x{meta['size']}",
        "Model": meta["model"],
    }
    if "prior" in stages:  # the edits that start from an image embedding run no prior
        prior = stages["prior"]
        pairs.update({"Prior steps": prior["steps"], "Prior sampler": prior["scheduler"]})
        pairs["Prior CFG scale"] = prior["guidance"]
    if "sr256" in stages:
        pairs.update({"SR256 steps": stages["sr256"]["steps"], "SR256 sampler": stages["sr256"]["scheduler"]})
        pairs["SR256 noise level"] = stages["sr256"]["noise_level"]
    if "sr1024" in stages:
        sr = stages["sr1024"]
        pairs.update(
            {"SR1024 steps": sr["steps"], "SR1024 sampler": sr["scheduler"], "SR1024 CFG scale": sr["guidance"]}
        )
        pairs["Noise level"] = sr["noise_level"]
    if "edit" in meta:
        pairs["Edit"] = meta["edit"]
    pairs["Version"] = f"unclip {meta.get('version', '')}".strip()
    lines = [meta["prompt"]]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    lines.append(", ".join(f"{k}: {v}" for k, v in pairs.items()))
    return "\n".join(lines)


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
    return max(numbers, default=-1) + 1


def save_images(folder: Path, images: list[Image.Image], metadata: list[dict[str, Any]]) -> list[Path]:
    """Write each image as ``NNNNN-SEED.png`` with its parameters, and append its metadata.jsonl line."""
    written = []
    number = _next_number(folder)
    for image, meta in zip(images, metadata, strict=True):
        info = PngInfo()
        info.add_text("parameters", a1111_parameters(meta))
        while True:
            path = folder / f"{number:05d}-{meta['seed']}.png"
            number += 1
            try:
                with open(path, "xb") as handle:  # exclusive: never overwrite
                    image.save(handle, format="PNG", pnginfo=info)
                break
            except FileExistsError:
                continue
        with open(folder / "metadata.jsonl", "a") as handle:
            handle.write(json.dumps({"file_name": path.name, "text": meta["prompt"], **meta}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        written.append(path)
    return written


def save_gif(frames: list[Path], duration_ms: int = 250) -> Path:
    """An animated, looping GIF of saved frames, beside the first as ``NNNNN-SEED.gif`` (never overwritten:
    ``-2``, ``-3`` ... on a clash)."""
    first = frames[0]
    images = []
    for path in frames:
        with Image.open(path) as frame:
            images.append(frame.convert("RGB"))
    for n in range(1, 1000):
        path = first.with_name(first.stem + ("" if n == 1 else f"-{n}") + ".gif")
        try:
            with open(path, "xb") as handle:
                images[0].save(
                    handle, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0
                )
            return path
        except FileExistsError:
            continue
    raise UnclipError(f"cannot name a GIF beside {first}: 999 already exist")
