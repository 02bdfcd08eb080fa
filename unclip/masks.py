"""An edit's picture and mask, read and checked: what ``pipe.edit``, ``unclip edit`` and ``/v1/images/edits`` take.

    canvas = read_canvas("photo.png", "mask.png")           # inpainting: white = repaint, black = keep
    canvas = read_canvas("photo.png", pad=(64, 0, 64, 0))    # outpainting: new border (left, top, right, bottom)
    canvas.rgb, canvas.mask, canvas.describe()               # (3, H, W) in [0, 1]; (1, H, W) bool; metadata

A mask is a greyscale or RGB picture read at 50 % grey (white, ≥ 128: repaint), or a picture with an alpha
channel whose transparent pixels (alpha < 128) mark the region, as OpenAI's Images API takes it. Without a mask,
an image's own transparent pixels are the mask. Edits work on square pictures, as DALL·E 2's did.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip.errors import UnclipError
from unclip.images import open_image

MaskInput = Image.Image | str | Path | torch.Tensor | np.ndarray
MASK_HELP = "white = repaint, black = keep; or an RGBA PNG whose transparent pixels are the region"


@dataclass
class Canvas:
    """A square picture to edit and what to repaint in it."""

    rgb: torch.Tensor  # (3, H, W) float in [0, 1]
    mask: torch.Tensor  # (1, H, W) bool: True where the edit repaints
    source: str = "image"  # the image's file name, for the metadata
    pad: tuple[int, int, int, int] | None = None  # outpainting: the border added (left, top, right, bottom)

    @property
    def kind(self) -> str:
        return "outpaint" if self.pad else "inpaint"

    @property
    def fraction(self) -> float:
        """The share of the picture the edit repaints."""
        return float(self.mask.float().mean())

    def check_region(self) -> None:
        """Refuse a mask that marks nothing: the edit would give the picture back (what `unclip edit` and the server
        refuse; ``pipe.edit`` only warns)."""
        if self.fraction == 0:
            raise UnclipError("the mask marks nothing to repaint: paint the region to change white (or transparent)")

    def mask_sha256(self) -> str:
        """A hash of the mask as used (its bits and its size), to tell edits apart in the metadata."""
        bits = np.packbits(self.mask.numpy().astype(np.uint8))
        return hashlib.sha256(f"{tuple(self.mask.shape)}".encode() + bits.tobytes()).hexdigest()

    def describe(self) -> dict:
        info = {"edit": self.kind, "source": self.source, "mask_sha256": self.mask_sha256()[:16],
                "mask_fraction": round(self.fraction, 4)}  # fmt: skip
        return {**info, "pad": list(self.pad)} if self.pad else info

    def at(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The picture in [-1, 1] (1, 3, size, size) and the mask (1, 1, size, size) float at the output size: the
        picture resized (antialiased bicubic) when it differs; a pixel of the mask repaints when any pixel it
        covers does."""
        rgb, mask = self.rgb[None], self.mask[None].float()
        if rgb.shape[-1] != size:
            rgb = F.interpolate(rgb, size=[size, size], mode="bicubic", align_corners=False, antialias=True)
            bigger = size > mask.shape[-1]
            mask = F.interpolate(mask, size=[size, size], mode="nearest-exact") if bigger else (
                F.adaptive_max_pool2d(mask, size))  # fmt: skip
        return rgb.clamp(0, 1) * 2 - 1, mask


def parse_pad(text: str | int | tuple | list) -> tuple[int, int, int, int]:
    """``PIXELS`` (every side), or ``LEFT,TOP,RIGHT,BOTTOM``: whole numbers ≥ 0, not all 0."""
    values = (
        [text] if isinstance(text, int) else list(text) if isinstance(text, (tuple, list)) else str(text).split(",")
    )
    try:
        numbers = [int(str(v).strip()) for v in values]
    except ValueError:
        numbers = []
    if len(numbers) == 1:
        numbers = numbers * 4
    if len(numbers) != 4 or min(numbers) < 0 or max(numbers) == 0:
        raise UnclipError(
            f"pad {text!r}: give PIXELS or LEFT,TOP,RIGHT,BOTTOM, whole numbers ≥ 0, e.g. 64 or 0,0,128,0"
        )
    return tuple(numbers)


def _open(item, what: str) -> Image.Image:
    return item if isinstance(item, Image.Image) else open_image(item, what, "give a PNG file")


def _alpha(picture: Image.Image) -> np.ndarray | None:
    """Where a picture with an alpha channel is transparent (< 128); None when it has none or is opaque."""
    if picture.mode == "P" and "transparency" in picture.info:
        picture = picture.convert("RGBA")
    if picture.mode not in ("RGBA", "LA", "PA"):
        return None
    alpha = np.asarray(picture.getchannel("A"))
    return alpha < 128 if (alpha < 255).any() else None


def read_mask(mask: MaskInput) -> torch.Tensor:
    """(1, H, W) bool, True = repaint, from a file, a PIL image, or a (H, W) / (1, H, W) array in [0, 1]."""
    if isinstance(mask, (torch.Tensor, np.ndarray)):
        array = torch.as_tensor(np.asarray(mask, dtype=np.float32))
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise UnclipError(f"a mask array must be (H, W) or (1, H, W) in [0, 1], got shape {tuple(array.shape)}")
        return (array > 0.5)[None]
    picture = _open(mask, "mask")
    transparent = _alpha(picture)
    if transparent is None:
        transparent = np.asarray(picture.convert("L")) >= 128
    return torch.from_numpy(transparent.copy())[None]


def read_canvas(image, mask: MaskInput | None = None, pad=None) -> Canvas:
    """The picture, its mask (given, or the picture's transparent pixels) and an outpainting border, checked.
    ``image``: a file, a PIL image, an (H, W, 3 or 4) uint8 array, or a (3, H, W) tensor in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise UnclipError(f"an image array must be (H, W, 3) or (H, W, 4) uint8, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise UnclipError(f"an image tensor must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
        rgb, own, name = image.detach().float().cpu().clamp(0, 1), None, "image"
    else:
        picture = _open(image, "image")
        name = str(image) if isinstance(image, (str, Path)) else getattr(picture, "filename", "") or "image"
        own = _alpha(picture)
        rgb = torch.from_numpy(np.asarray(picture.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    height, width = rgb.shape[1:]
    if mask is not None:
        region = read_mask(mask)
        if tuple(region.shape[1:]) != (height, width):
            raise UnclipError(
                f"the mask is {region.shape[2]}×{region.shape[1]} but the image is {width}×{height}: give a mask "
                "of the image's size (resize it with the same crop as the image)"
            )
    elif own is not None:
        region = torch.from_numpy(own.copy())[None]
    elif pad is None:
        raise UnclipError(f"nothing to repaint: give a mask ({MASK_HELP}), or a border to add (--expand or --pad)")
    else:
        region = torch.zeros(1, height, width, dtype=torch.bool)
    if pad is not None:
        pad = parse_pad(pad)
        left, top, right, bottom = pad
        sides = (left, right, top, bottom)  # torch's order: the last dimension first
        rgb = F.pad(rgb[None], sides, mode="replicate")[0]  # the border starts as the picture's edge, stretched
        region = F.pad(region[None].float(), sides, value=1.0)[0] > 0.5
    height, width = rgb.shape[1:]
    if height != width:
        fix = "crop it square, or add a border that makes it square (--pad)" if pad is None else "change --pad"
        raise UnclipError(f"the picture to edit is {width}×{height}, not square: {fix}")
    return Canvas(rgb, region, name, pad)
