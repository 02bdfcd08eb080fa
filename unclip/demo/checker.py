"""Reads a shapes image back from its pixels: background, shape colour, shape, position and size.

    from unclip.demo.checker import check, detect
    result = check(pixels, expected)   # pixels: (H, W, 3) uint8, float in [0, 1] or a PIL image; any size
    result.correct                     # {"colour": True, "shape": False, ...}; result.all: every one right
    result.detected                    # Detection: what was read, and the measurements behind it

Deterministic, numpy only. The steps:

* background: each pixel of a border ring (1/32 of the side) → nearest ``PALETTE`` colour; the most common.
* shape colour: the median of the pixels far from the (measured) background → nearest palette colour.
* mask: the pixels more than halfway from the background to that shape colour (projected on the line
  between the two: exactly coverage > 0.5 on a clean render).
* position: the mask's centroid in a 3 × 3 grid split at ``SPLITS`` (halfway between where the generator
  puts corner and centre centroids), named "top left" ... "center" ("top", "left" ... between them).
  The expected position "anywhere" (a caption without "in the ...") is not asked.
* size: the mask's area fraction against ``SIZE_SPLIT``, the geometric mean of the largest small and the
  smallest large area the generator draws. The expected size None (a caption without a size word) is not asked.
* edge width: the pixels whose colour lies between 20 % and 80 % of the way from the background to the shape
  colour (the band a blurred or speckled picture widens), per pixel of outline (the pixels the mask's outline
  passes through: the changes between 4-neighbours, its crack length). A clean render: about 0.5; at 1024 px,
  bicubic from a clean 256 px render: about 2.5.
* dark band (``dark_band``, for the outline style of issue 20): the pixels nearer ``OUTLINE`` than the background and
  shape colours (and within ``FAR`` of it), per pixel of the outline of everything that is not background. At 64 px,
  a clean render: 0 (up to 0.3 on black, the colour nearest ``OUTLINE``); one drawn with ``outline=0.03``: 0.5-1.2.
* shape: the one whose template (same area, same centroid, upright as the generator draws it) overlaps the
  mask best (intersection over union); ``fill`` (mask area / its bounding box: circle π/4, square 1, triangle
  1/2) is reported alongside.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from unclip.demo.shapes import AREAS, ATTRIBUTES, COLOURS, OUTLINE, PALETTE, SHAPES, Attributes, coverage
from unclip.errors import UnclipError

_RGB = np.asarray([PALETTE[c] for c in COLOURS], dtype=np.float32)
# pairs of palette colours are ≥ 85 apart (RGB); a pixel this far from the background is part of the shape
FAR = 40.0
# corner centroids are ≤ 0.30 from their sides (0.27 ± 0.02, a large triangle at the top pushed to 0.30),
# centre ones 0.50 ± 0.02
SPLITS = (0.375, 0.625)
SIZE_SPLIT = math.sqrt(AREAS["small"][1] * AREAS["large"][0])
RING = 1 / 32  # border ring width, fraction of the shorter side (at least a pixel)


@dataclass(frozen=True)
class Detection:
    """What the pixels show. ``colour``, ``shape``, ``position`` and ``size`` are None when no shape was found."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    area: float  # of the mask, fraction of the image
    x: float  # centroid, fraction of the width
    y: float  # and of the height, down
    fill: float  # mask area / its bounding box's
    match: dict[str, float]  # shape → intersection over union of the mask with its template
    edge_width: float = 0.0  # pixels between 20 % and 80 % of the way to the shape colour, per pixel of outline


@dataclass(frozen=True)
class Check:
    expected: Attributes
    detected: Detection
    correct: dict[str, bool | None]  # attribute (ATTRIBUTES) → whether it was read as expected; None: not asked

    @property
    def all(self) -> bool:
        return all(right for right in self.correct.values() if right is not None)

    def to_json(self) -> dict[str, Any]:
        return {"expected": asdict(self.expected), "detected": asdict(self.detected), "correct": self.correct}


def as_pixels(image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255] from a PIL image, or an (H, W, 3|4) array: uint8, or float in [0, 1]."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or min(pixels.shape[:2]) < 8:
        raise UnclipError(f"expected an RGB image of (H, W, 3) pixels, at least 8 × 8; got shape {pixels.shape}")
    pixels = pixels[..., :3]
    if np.issubdtype(pixels.dtype, np.floating):
        return np.clip(pixels.astype(np.float32) * 255, 0, 255)
    return pixels.astype(np.float32)


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into ``COLOURS`` of the nearest palette colour of each (…, 3) RGB value."""
    return np.argmin(((rgb[..., None, :] - _RGB) ** 2).sum(-1), axis=-1)


def grid_position(x: float, y: float) -> str:
    """The 3 × 3 cell of a centroid: "top left", "top", "top right", "left", "center", … "bottom right"."""
    low, high = SPLITS
    row = "top" if y < low else "bottom" if y > high else ""
    column = "left" if x < low else "right" if x > high else ""
    return f"{row} {column}".strip() or "center"


def detect(image) -> Detection:
    """Read background, shape colour, shape, position and size from ``image`` (see the module docstring)."""
    pixels = as_pixels(image)
    height, width = pixels.shape[:2]
    ring = max(1, round(min(height, width) * RING))
    border = np.concatenate(
        [pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3)]
        + [pixels[ring:-ring, :ring].reshape(-1, 3), pixels[ring:-ring, -ring:].reshape(-1, 3)]
    )
    border = border[:: max(1, len(border) // 8192)]  # plenty for a mode and a median
    labels = nearest_colour(border)
    background = int(np.bincount(labels, minlength=len(COLOURS)).argmax())
    background_rgb = np.median(border[labels == background], axis=0)
    offset = pixels - background_rgb
    far = np.einsum("ijc,ijc->ij", offset, offset) > FAR**2
    if not far.any():
        return Detection(COLOURS[background], None, None, None, None, 0.0, 0.5, 0.5, 0.0, {})
    shape_rgb = np.median(pixels[far], axis=0)
    colour = COLOURS[int(nearest_colour(shape_rgb))]
    line = shape_rgb - background_rgb
    fraction = offset @ line / float(line @ line)  # 0 on the background, 1 on the shape colour
    mask = fraction > 0.5
    if not mask.any():
        return Detection(COLOURS[background], colour, None, None, None, 0.0, 0.5, 0.5, 0.0, {})

    rows, columns = np.nonzero(mask)
    count = rows.size
    cx, cy = columns.mean() + 0.5, rows.mean() + 0.5  # pixel centres
    box = (rows.max() - rows.min() + 1) * (columns.max() - columns.min() + 1)
    match = _template_match(mask, rows, columns, cx, cy)
    area = count / (height * width)
    band = int(((fraction > 0.2) & (fraction < 0.8)).sum())
    return Detection(
        background=COLOURS[background],
        colour=colour,
        shape=max(match, key=match.__getitem__),
        position=grid_position(cx / width, cy / height),
        size="small" if area < SIZE_SPLIT else "large",
        area=float(area),
        x=float(cx / width),
        y=float(cy / height),
        fill=float(count / box),
        match=match,
        edge_width=round(band / outline(mask), 4),
    )


def dark_band(image) -> float:
    """The width in pixels of the dark (``OUTLINE``) band along the shape's edge: its pixels per pixel of the outline
    of the not-background region (see the module docstring). Background and shape colour are read as ``detect``
    reads them; pictures whose background or shape is black (the palette colour nearest ``OUTLINE``) cannot show it."""
    found = detect(image)
    if found.colour is None:
        return 0.0
    pixels = as_pixels(image)
    anchors = np.asarray([PALETTE[found.background], PALETTE[found.colour], OUTLINE], dtype=np.float32)
    distance = np.sqrt(((pixels[..., None, :] - anchors) ** 2).sum(-1))  # (H, W, 3): to background, shape, outline
    dark = (distance.argmin(-1) == 2) & (distance[..., 2] < FAR)
    silhouette = distance.argmin(-1) != 0
    return round(int(dark.sum()) / max(1, outline(silhouette)), 4)


def outline(mask: np.ndarray) -> int:
    """The pixels ``mask``'s outline passes through: the number of 4-neighbour pairs one in and one out of it (the
    image's border counts as out). A line at angle θ passes |cos θ| + |sin θ| pixels per unit of length."""
    padded = np.pad(mask, 1).astype(np.int8)
    return int(np.abs(np.diff(padded, axis=0)).sum() + np.abs(np.diff(padded, axis=1)).sum())


def _template_match(mask: np.ndarray, rows: np.ndarray, columns: np.ndarray, cx: float, cy: float) -> dict:
    """Intersection over union of the mask with each shape of its area and centroid, over a window holding both."""
    count = rows.size
    reach = math.ceil(math.sqrt(count)) + 2  # beyond every template of this area (a triangle's apex: 0.88 √area)
    y0 = max(0, min(int(rows.min()), math.floor(cy) - reach))
    y1 = min(mask.shape[0], max(int(rows.max()) + 1, math.ceil(cy) + reach))
    x0 = max(0, min(int(columns.min()), math.floor(cx) - reach))
    x1 = min(mask.shape[1], max(int(columns.max()) + 1, math.ceil(cx) + reach))
    window = mask[y0:y1, x0:x1]
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - cx)
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - cy)
    match = {}
    for shape in SHAPES:
        template = coverage(shape, dx, dy, float(count)) > 0.5
        overlap = int((template & window).sum())
        match[shape] = round(overlap / (count + int(template.sum()) - overlap), 4)
    return match


def check(image, expected: Attributes) -> Check:
    """``detect`` the image and compare each attribute with ``expected``; what the caption leaves out (the position
    "anywhere", the size None) was not asked: None, and ``all`` looks at the rest."""
    found = detect(image)
    correct: dict[str, bool | None] = {name: getattr(found, name) == getattr(expected, name) for name in ATTRIBUTES}
    if expected.position == "anywhere":
        correct["position"] = None
    if expected.size is None:
        correct["size"] = None
    return Check(expected, found, correct)
