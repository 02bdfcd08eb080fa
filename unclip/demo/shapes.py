"""Procedural shapes: one antialiased circle, square or triangle on a plain background, with its caption.

    from unclip.demo.shapes import eval_prompts, render, sample_scene, write_dataset

    scene = sample_scene(seed=0, index=7)     # attributes and placement, from (seed, index) alone
    scene.attributes.caption                  # "a large red circle in the top left on a blue background"
    pixels = render(scene, 1024)              # (1024, 1024, 3) uint8
    write_dataset("data/shapes", n=20000, seed=0, size=1024, workers=8)   # what `unclip data shapes` runs
    eval_prompts(96)                          # the fixed evaluation prompts, held-out combinations included

Captions: "a [small|large] <colour> <shape> [in the <position>] on a <colour> background", e.g. "a large red
circle in the top left on a blue background", with "an" where English wants it ("an orange square", "on an
orange background"). An image's caption says its size and, unless it is "anywhere", its position; ``captions``
lists every caption true of it — the size word, "in the <position>" each said or left out, each with and without
a final full stop — and the dataset's ``text`` holds them all, the full one first, for training to draw from.
Capitals and doubled spaces need no captions of their own: CLIP's tokenizer lowercases and collapses spaces.
The colour-and-shape combinations of ``HELD_OUT`` (purple triangle, orange square, green
circle) never appear in the training data, only in ``eval_prompts``.

Geometry, in fractions of the image side: a shape is placed by its centroid and sized by its area (``AREAS``:
small 1-2.5 % of the image, large 6-10 %). The fixed positions put the centroid at ``ANCHORS`` ± ``JITTER``,
"anywhere" anywhere; every shape stays at least ``MARGIN`` inside the image (a large triangle at the top is
pushed down to fit). ``unclip.demo.checker`` reads position and size back with thresholds between these ranges.

Rendering is analytic: a signed distance per shape, coverage = clip(0.5 - distance in pixels, 0, 1), blended
over the background, over the shape's bounding box only (a few milliseconds for 1024 px).
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from unclip.errors import UnclipError

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (35, 75, 225),
    "yellow": (250, 225, 25),
    "purple": (140, 50, 190),
    "orange": (250, 135, 0),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center", "anywhere")
AREAS: dict[str, tuple[float, float]] = {"small": (0.01, 0.025), "large": (0.06, 0.10)}  # fraction of the image
HELD_OUT: tuple[tuple[str, str], ...] = (("purple", "triangle"), ("orange", "square"), ("green", "circle"))
ANCHORS: dict[str, tuple[float, float]] = {  # centroid (x, y), fractions of the side, y down
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
JITTER = 0.02
MARGIN = 0.02
ATTRIBUTES = ("colour", "shape", "position", "background", "size")  # the order reports use
EVAL_SEED = 20240
METADATA = "metadata.jsonl"
SQRT3 = math.sqrt(3.0)


@dataclass(frozen=True)
class Attributes:
    """What a caption says about its image, and how it is written (``style``)."""

    shape: str
    colour: str
    background: str
    size: str | None  # None: the caption leaves the size word out (any size is right)
    position: str  # "anywhere": the caption leaves "in the <position>" out
    style: str = "plain"  # STYLES: how a person might type the same caption

    @property
    def caption(self) -> str:
        where = "" if self.position == "anywhere" else f" in the {self.position}"
        shape = " ".join(word for word in (self.size, self.colour, self.shape) if word)
        background = f"{_article(self.background)} {self.background} background"
        return STYLES[self.style](f"{_article(shape)} {shape}{where} on {background}")

    @property
    def form(self) -> str:
        """Which optional parts of the grammar the caption says (``FORMS``)."""
        said = (self.size is not None, self.position != "anywhere")
        return {(True, True): "size, position", (True, False): "size", (False, True): "position"}.get(said, "neither")

    @property
    def combination(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def held_out(self) -> bool:
        return (self.colour, self.shape) in HELD_OUT


@dataclass(frozen=True)
class Scene:
    """Attributes and where exactly the shape is: centroid (x, y) and area, as fractions of the image."""

    attributes: Attributes
    x: float
    y: float
    area: float


def captions(attributes: Attributes) -> list[str]:
    """Every caption of the grammar true of an image drawn for ``attributes`` (its size and position said): the size
    word and the position each said or left out (a position is never said of an "anywhere" image), each plain and
    with a final full stop; ``attributes.caption`` first."""
    sizes = (attributes.size, None)
    positions = (attributes.position, "anywhere") if attributes.position != "anywhere" else ("anywhere",)
    forms = [replace(attributes, size=s, position=p, style="plain") for s in sizes for p in positions]
    return [a.caption for a in forms] + [STYLES["full stop"](a.caption) for a in forms]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# The grammar's optional parts a caption may say (``Attributes.form``), and the harmless ways a person types it.
FORMS = ("size, position", "size", "position", "neither")
STYLES: dict[str, Callable[[str], str]] = {
    "plain": lambda text: text,
    "capital": lambda text: text[0].upper() + text[1:],
    "full stop": lambda text: text + ".",
    "double spaces": lambda text: text.replace(" ", "  "),
}


# ------------------------------------------------------------------------------------------------ geometry
def _circle(dx, dy, area: float):
    return np.hypot(dx, dy) - math.sqrt(area / math.pi)


def _square(dx, dy, area: float):
    half = math.sqrt(area) / 2
    qx, qy = np.abs(dx) - half, np.abs(dy) - half
    return np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)


def _triangle(dx, dy, area: float):
    """Equilateral, apex up, centroid at 0 (Inigo Quilez's sdEquilateralTriangle, y flipped to point down)."""
    r = math.sqrt(area / SQRT3)  # half the side: area = √3 r²
    px = np.abs(dx) - r
    py = r / SQRT3 - dy
    fold = px + SQRT3 * py > 0
    px, py = np.where(fold, (px - SQRT3 * py) / 2, px), np.where(fold, (-SQRT3 * px - py) / 2, py)
    px = px - np.clip(px, -2 * r, 0)
    return -np.hypot(px, py) * np.sign(py)


def _round_extents(area: float) -> tuple[float, float, float, float]:
    r = math.sqrt(area / math.pi)
    return r, r, r, r


def _square_extents(area: float) -> tuple[float, float, float, float]:
    half = math.sqrt(area) / 2
    return half, half, half, half


def _triangle_extents(area: float) -> tuple[float, float, float, float]:
    r = math.sqrt(area / SQRT3)
    return r, 2 * r / SQRT3, r, r / SQRT3  # the apex is the circumradius above the centroid, the base the inradius


@dataclass(frozen=True)
class Geometry:
    distance: Callable  # (dx, dy, area) → signed distance, negative inside; y down, any unit
    extents: Callable[[float], tuple[float, float, float, float]]  # area → left, top, right, bottom of the centroid


GEOMETRY: dict[str, Geometry] = {
    "circle": Geometry(_circle, _round_extents),
    "square": Geometry(_square, _square_extents),
    "triangle": Geometry(_triangle, _triangle_extents),
}


def coverage(shape: str, dx: np.ndarray, dy: np.ndarray, area: float) -> np.ndarray:
    """Fraction of each pixel the shape covers; ``dx``, ``dy``: pixel centres minus the centroid, in pixels."""
    return np.clip(0.5 - GEOMETRY[shape].distance(dx, dy, area), 0, 1)


# ------------------------------------------------------------------------------------------------ sampling
def place(attributes: Attributes, rng: np.random.Generator) -> Scene:
    """Area and centroid for ``attributes``, drawn from ``rng``; the shape stays ``MARGIN`` inside the image. A size
    the caption leaves out (None) is drawn too, small or large."""
    size = attributes.size if attributes.size is not None else tuple(AREAS)[int(rng.integers(len(AREAS)))]
    area = float(rng.uniform(*AREAS[size]))
    left, top, right, bottom = GEOMETRY[attributes.shape].extents(area)
    if attributes.position == "anywhere":  # uniform over all the centroids that keep the shape inside
        u, v = rng.uniform(0, 1, 2)
        x = left + MARGIN + u * (1 - 2 * MARGIN - left - right)
        y = top + MARGIN + v * (1 - 2 * MARGIN - top - bottom)
    else:
        x, y = np.asarray(ANCHORS[attributes.position]) + rng.uniform(-JITTER, JITTER, 2)
    x = min(max(float(x), left + MARGIN), 1 - right - MARGIN)
    y = min(max(float(y), top + MARGIN), 1 - bottom - MARGIN)
    return Scene(attributes, x, y, area)


def sample_attributes(rng: np.random.Generator) -> Attributes:
    """Training attributes: a (colour, shape) pair not in ``HELD_OUT``, another colour behind it."""
    pairs = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT]
    colour, shape = pairs[rng.integers(len(pairs))]
    backgrounds = [c for c in COLOURS if c != colour]
    return Attributes(
        shape=shape,
        colour=colour,
        background=backgrounds[rng.integers(len(backgrounds))],
        size=tuple(AREAS)[rng.integers(len(AREAS))],
        position=POSITIONS[rng.integers(len(POSITIONS))],
    )


def sample_scene(seed: int, index: int) -> Scene:
    """Training image ``index`` of the dataset ``seed``: a function of the two numbers only."""
    rng = np.random.default_rng([seed, index])
    return place(sample_attributes(rng), rng)


def eval_prompts(n: int, seed: int = EVAL_SEED, forms: bool = True) -> list[Attributes]:
    """The first ``n`` evaluation prompts, in rounds of 24 that hold every (colour, shape) pair once.

    Each round starts with the three ``HELD_OUT`` pairs, then one pair for each other colour, and cycles
    positions, sizes and backgrounds through all their values: n ≥ 3 holds every held-out pair, n ≥ 8 every
    colour, shape, position, size and (almost always) background. A list is a prefix of any longer one.

    ``forms``: prompt k of round r is said in form ``FORMS[(k + r) % 4]`` (the size word, "in the <position>",
    both or neither left out) and style ``STYLES[(k // 4 + r) % 4]``: every round holds every form and style,
    and over four rounds (n = 96) each held-out pair is asked in every form. Without: every part said, plainly.
    """
    prompts: list[Attributes] = []
    round_number = 0
    while len(prompts) < n:
        attributes = _eval_round(np.random.default_rng([seed, round_number]))
        if forms:
            attributes = [_in_form(a, k + round_number, k // 4 + round_number) for k, a in enumerate(attributes)]
        prompts += attributes
        round_number += 1
    return prompts[:n]


def _in_form(attributes: Attributes, form: int, style: int) -> Attributes:
    """``attributes`` said in ``FORMS[form % 4]`` (parts left out) and ``STYLES`` number ``style % 4``. A form that
    says the position gets one (an "anywhere" becomes ``tuple(ANCHORS)[form % 5]``): "anywhere" is the forms that
    leave it out."""
    said = FORMS[form % len(FORMS)]
    position = attributes.position if attributes.position != "anywhere" else tuple(ANCHORS)[form % len(ANCHORS)]
    return replace(
        attributes,
        size=attributes.size if "size" in said else None,
        position=position if "position" in said else "anywhere",
        style=tuple(STYLES)[style % len(STYLES)],
    )


def _eval_round(rng: np.random.Generator) -> list[Attributes]:
    held_colours = {colour for colour, _ in HELD_OUT}
    others = [COLOURS[i] for i in rng.permutation(len(COLOURS)) if COLOURS[i] not in held_colours]
    shapes = [SHAPES[i] for i in rng.permutation(len(SHAPES))] * 2
    first = list(HELD_OUT) + list(zip(others, shapes[: len(others)], strict=True))  # every colour and shape
    rest = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in first]
    pairs = first + [rest[i] for i in rng.permutation(len(rest))]
    positions = [POSITIONS[i] for _ in range(len(pairs) // len(POSITIONS)) for i in rng.permutation(len(POSITIONS))]
    sizes = [tuple(AREAS)[i] for _ in range(len(pairs) // len(AREAS)) for i in rng.permutation(len(AREAS))]
    backgrounds = [COLOURS[i] for i in rng.permutation(len(COLOURS))]
    prompts = []
    for k, (colour, shape) in enumerate(pairs):
        background = backgrounds[k % len(COLOURS)]
        if background == colour:
            background = backgrounds[(k + 1) % len(COLOURS)]
        prompts.append(Attributes(shape, colour, background, sizes[k], positions[k]))
    return prompts


# ------------------------------------------------------------------------------------------------ drawing
PLAIN = "plain"  # the subfolder of an outlined dataset's plain twins (``clip_file_name``)
OUTLINE = (40, 40, 40)  # the dark grey of ``outline``: a style to teach a LoRA adapter (issue 20)


def render(scene: Scene, size: int = 1024, outline: float = 0.0) -> np.ndarray:
    """The (size, size, 3) uint8 image of ``scene``, antialiased: each pixel is background + coverage × (colour -
    background), rounded (coverage in steps of 1/1023 through a lookup table: within 0.13 grey levels). With
    ``outline`` > 0 (a fraction of the side), a band that wide inside the shape's edge is ``OUTLINE`` instead."""
    if outline > 0:
        return _render_outlined(scene, size, outline * size)
    a = scene.attributes
    background = np.asarray(PALETTE[a.background], dtype=np.uint8)
    image = np.tile(np.tile(background, size), (size, 1)).reshape(size, size, 3)  # 50× faster than image[:] = rgb
    left, top, right, bottom = GEOMETRY[a.shape].extents(scene.area)
    x0, x1 = max(0, math.floor((scene.x - left) * size) - 1), min(size, math.ceil((scene.x + right) * size) + 2)
    y0, y1 = max(0, math.floor((scene.y - top) * size) - 1), min(size, math.ceil((scene.y + bottom) * size) + 2)
    dx = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - scene.x * size)
    dy = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - scene.y * size)
    cover = coverage(a.shape, dx[None, :], dy[:, None], scene.area * size * size)
    image[y0:y1, x0:x1] = np.take(_blend_table(a.colour, a.background), np.rint(cover * _LEVELS).astype(np.int32), 0)
    return image


def _render_outlined(scene: Scene, size: int, width: float) -> np.ndarray:
    """``render`` with a dark band ``width`` pixels wide inside the edge: the shape's coverage minus the coverage of
    the shape inset by ``width`` is the band's (both antialiased from the signed distance)."""
    a = scene.attributes
    y, x = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    distance = GEOMETRY[a.shape].distance(x - scene.x * size, y - scene.y * size, scene.area * size * size)
    cover = np.clip(0.5 - distance, 0, 1)[..., None]
    inner = np.clip(0.5 - (distance + width), 0, 1)[..., None]
    background, colour, dark = (np.asarray(c, dtype=np.float64) for c in (PALETTE[a.background], PALETTE[a.colour],
                                                                          OUTLINE))  # fmt: skip
    return np.rint(background * (1 - cover) + colour * inner + dark * (cover - inner)).astype(np.uint8)


_LEVELS = 1023


@functools.cache
def _blend_table(colour: str, background: str) -> np.ndarray:
    """(_LEVELS + 1, 3) uint8: the pixel at coverage k / _LEVELS."""
    fraction = np.linspace(0, 1, _LEVELS + 1)[:, None]
    start, end = np.asarray(PALETTE[background], dtype=np.float64), np.asarray(PALETTE[colour], dtype=np.float64)
    return np.rint(start + fraction * (end - start)).astype(np.uint8)


def metadata_row(scene: Scene, file_name: str, index: int) -> dict[str, Any]:
    """The metadata.jsonl line: file and captions (what training reads: ``captions``, the full one first), the
    attributes and exact placement."""
    return {
        "file_name": file_name,
        "text": captions(scene.attributes),
        **asdict(scene.attributes),
        "index": index,
        "x": round(scene.x, 5),
        "y": round(scene.y, 5),
        "area": round(scene.area, 6),
    }


def _write_one(job: tuple[Path, int, int, int, int, float]) -> dict[str, Any]:
    out, seed, index, size, width, outline = job
    scene = sample_scene(seed, index)
    name = f"{index:0{width}d}.png"
    _write_png(out / name, render(scene, size, outline))
    row = metadata_row(scene, name, index)
    if not outline:
        return row
    twin = f"{PLAIN}/{name}"  # the same scene unstyled: what the prior makes from the caption, for the image's z_i
    _write_png(out / twin, render(scene, size))
    return {**row, "outline": outline, "clip_file_name": twin}


def _write_png(path: Path, pixels: np.ndarray) -> None:
    with open(path, "xb") as handle:  # exclusive: never overwrite
        Image.fromarray(pixels).save(handle, format="PNG")


def prepare_folder(out: Path) -> Path:
    """Create ``out``; refuse one that holds anything, so that no earlier output can be overwritten."""
    if out.exists() and not out.is_dir():
        raise UnclipError(f"{out} is a file: give a new folder for the dataset")
    if out.is_dir() and any(out.iterdir()):
        raise UnclipError(f"{out} is not empty: give a new folder for the dataset (nothing is ever overwritten)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UnclipError(f"cannot create {out} ({err.strerror or err}): choose another folder") from None
    return out


def write_dataset(
    out: str | Path,
    n: int,
    seed: int = 0,
    size: int = 1024,
    workers: int = 0,
    progress: bool = True,
    outline: float = 0.0,
) -> Path:
    """Write ``n`` images and ``metadata.jsonl`` into the new or empty folder ``out``; returns the metadata path.

    The images depend on ``seed`` and their index only, not on ``workers`` (processes; 0: this one). With
    ``outline``, each image's plain twin goes into ``plain/`` and its row names it as ``clip_file_name``.
    """
    out = prepare_folder(Path(out))
    if outline:
        (out / PLAIN).mkdir()
    width = max(5, len(str(n - 1)))
    jobs = ((out, seed, i, size, width, outline) for i in range(n))
    metadata = out / METADATA
    with open(metadata, "x", encoding="utf-8") as lines:
        if workers == 0:
            _write_rows(map(_write_one, jobs), lines, n, progress)
        else:
            chunk = max(1, min(64, n // (4 * workers)))
            with multiprocessing.get_context().Pool(workers) as pool:
                _write_rows(pool.imap(_write_one, jobs, chunksize=chunk), lines, n, progress)
    return metadata


def _write_rows(rows, lines, n: int, progress: bool) -> None:
    for row in tqdm(rows, total=n, desc="shapes", unit="image", disable=not progress):
        lines.write(json.dumps(row) + "\n")
