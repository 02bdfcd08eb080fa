"""What a cascade call returns (``CascadeOutput``) and writes: PNGs that carry their parameters (A1111's
``parameters`` text) and one metadata.jsonl line per image.

Nothing is ever overwritten: file numbers continue after the highest already in the folder, and each
PNG is created exclusively (a clash moves on to the next number).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from unclip.errors import UnclipError

_NUMBERED = re.compile(r"^(\d+)-")


@dataclass
class CascadeOutput(BaseOutput):
    """``images``: PIL images, an (N, H, W, 3) float array or an (N, 3, H, W) tensor in [0, 1].
    ``metadata``: one dict per image with everything needed to make it again."""

    images: Any
    metadata: list[dict[str, Any]]


def postprocess(x: torch.Tensor, output_type: str):
    """Images in [-1, 1] as ``output_type`` (``pil``, ``np`` or ``pt``) in [0, 1]."""
    images = (x * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.float().cpu()
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else DiffusionPipeline.numpy_to_pil(array)


def output(x: torch.Tensor, metadata: list[dict[str, Any]], output_type: str, return_dict: bool):
    """What a cascade call returns: a ``CascadeOutput``, or ``(images, metadata)``."""
    images = postprocess(x, output_type)
    return CascadeOutput(images=images, metadata=metadata) if return_dict else (images, metadata)


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
    """The AUTOMATIC1111 ``parameters`` text: prompt, ``Negative prompt:`` line, then ``Key: value`` pairs: the
    decoder's settings under A1111's own keys (Steps, CFG scale, Sampler), then seed, size and model, then the
    other stages' (``Prior steps``, ``SR1024 noise level``, ...), named by ``unclip.plan.LABELS``."""
    from unclip.plan import LABELS

    stages = meta["stages"]

    def label(stage: str, name: str) -> str:  # (metadata of another version may hold a setting no longer made)
        return LABELS.get((stage, name), f"{stage} {name.replace('_', ' ')}")

    pairs = {label("decoder", name): value for name, value in stages.get("decoder", {}).items()}
    pairs.update({"Seed": meta["seed"], "Size": f"{meta['size']}x{meta['size']}", "Model": meta["model"]})
    for stage, settings in stages.items():
        if stage != "decoder":
            pairs.update({label(stage, name): value for name, value in settings.items()})
    if "edit" in meta:
        pairs["Edit"] = meta["edit"]
    if meta.get("lora"):
        pairs["Lora"] = " ".join(f"{lora['name']}:{lora['scale']:g}" for lora in meta["lora"])
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
    """Write each image as ``NNNNN-SEED.png`` with its parameters, and append its metadata.jsonl line.

    A PNG appears whole or not at all: it is written to a hidden ``.unclip-partial-*`` file, then hard-linked to its
    name (which fails, rather than overwrite, when the name is taken) and the partial name removed. A process
    killed meanwhile leaves only the hidden file (``remove_partial`` clears those)."""
    written = []
    number = _next_number(folder)
    for image, meta in zip(images, metadata, strict=True):
        info = PngInfo()
        info.add_text("parameters", a1111_parameters(meta))
        partial = folder / f"{PARTIAL}{secrets.token_hex(8)}.png"
        try:
            with open(partial, "xb") as handle:  # the umask's permissions, as any other output
                image.save(handle, format="PNG", pnginfo=info)
                handle.flush()
                os.fsync(handle.fileno())
            while True:
                path = folder / f"{number:05d}-{meta['seed']}.png"
                number += 1
                try:
                    os.link(partial, path)  # exclusive: never overwrite
                    break
                except FileExistsError:
                    continue
                except OSError:  # a file system without hard links: an exclusive copy (whole unless killed midway)
                    try:
                        with open(path, "xb") as copy:
                            copy.write(partial.read_bytes())
                        break
                    except FileExistsError:
                        continue
        finally:
            partial.unlink(missing_ok=True)
        with open(folder / "metadata.jsonl", "a") as handle:
            handle.write(json.dumps({"file_name": path.name, "text": meta["prompt"], **meta}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        written.append(path)
    return written


PARTIAL = ".unclip-partial-"


def remove_partial(folder: Path) -> int:
    """Delete the hidden partial PNGs a killed process left in ``folder``; returns how many."""
    stale = list(folder.glob(f"{PARTIAL}*.png"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


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
