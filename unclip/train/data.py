"""Captioned images for training: an imagefolder with metadata.jsonl, or webdataset-style tar shards.

    from torch.utils.data import DataLoader
    from unclip.train.data import CaptionedImages, collate

    data = CaptionedImages("my/images", resolution=64)        # or "shards/", "shards-{000..009}.tar", "a.tar"
    loader = DataLoader(data, batch_size=8, shuffle=True, collate_fn=collate)
    batch = next(iter(loader))  # pixel_values (B, 3, 64, 64) in [-1, 1], text, captions, key, index, skipped

Formats, detected from the path:

* imagefolder: a folder with ``metadata.jsonl``, one JSON object a line with ``file_name`` (relative to the
  folder) and ``text`` (the Hugging Face datasets imagefolder convention). ``text`` may also be a list: every
  caption true of the image (MS-COCO has five; ``unclip data shapes`` writes each form of its grammar). Training
  draws one of them at random each time it sees the image (``pick_captions``); the first is the image's
  ``text`` everywhere else. An optional ``clip_file_name`` pairs the image with another whose CLIP embedding
  conditions it (z_i; ``unclip embed`` embeds that one, and training then needs the cache): a style drawn on
  content the prior makes unstyled, as in ``unclip data shapes --outline`` (each outlined image's plain twin).
* ``low_res``: a folder beside either format holding each image's low-res twin, the input an upsampler meets in the
  cascade (``scripts/make_low_res.py``: the image at a sixteenth of its side through a model's 64→256 stage), a
  quarter of the image's side, named as the image is (an imagefolder's ``file_name``; a shard's key + ``.png``).
  Items then carry ``low_res_values``, resized and cropped as the image is.
* webdataset: a ``.tar`` file, a folder of ``.tar`` files, or a glob or brace list (``shards-{000..009}.tar``).
  Members are grouped by key (the name up to the first dot of its base name); the image is the .jpg, .jpeg,
  .png or .webp member, the caption the .txt member or the ``text`` / ``caption`` field of the .json member
  (a string, or a list of captions as above).
  Keys without an image member are ignored. Members are indexed once (shard, offset, size) and read by seeking.

The dataset is map-style: item ``i`` depends only on ``i``. Every problem with the index (a missing caption, a
bad metadata line, a missing file) is an ``UnclipError`` at construction; an image that cannot be decoded is
``None`` at ``__getitem__`` time, which ``collate`` drops and counts as ``skipped``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import operator
import os
import posixpath
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageOps

from unclip.errors import UnclipError

logger = logging.getLogger(__name__)

LOW_RES_FACTOR = 4  # an upsampler's low-res input has a quarter of its output's side (64→256, 256→1024)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a key has several
CAPTION_FIELDS = ("text", "caption")  # of a webdataset .json member, in order of preference
METADATA = "metadata.jsonl"
_GLOB_CHARS = re.compile(r"[*?\[]")
_BRACES = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


class _Sample(NamedTuple):
    key: str
    captions: tuple[str, ...]  # every caption of the image, stripped; the first is its ``text``
    file: str  # the image file, or the shard that holds it
    offset: int  # of the image bytes in the shard; -1: the whole file
    size: int
    clip_file: str = ""  # imagefolder: the image CLIP embeds for this one's z_i (``clip_file_name``); "": itself

    @property
    def text(self) -> str:
        return self.captions[0]


def _captions(value: Any) -> tuple[str, ...] | None:
    """A caption field's captions: a non-empty string, or a non-empty list of them; else None."""
    values = value if isinstance(value, list) else [value]
    captions = tuple(v.strip() for v in values if isinstance(v, str))
    return captions if values and len(captions) == len(values) and all(captions) else None


@dataclass(frozen=True)
class Source:
    """Where a dataset lives, from its path alone (nothing read yet)."""

    format: str  # a key of FORMATS
    root: Path  # the imagefolder, or the folder of the (first) shard: caches live in root/.unclip-cache
    shards: tuple[Path, ...] = ()  # webdataset only
    label: str = ""  # "" when the path is a folder; else names the shard set, since several can share a folder


def locate(path: str | Path) -> Source:
    """Which format ``path`` is and where its files are; an ``UnclipError`` if it is neither."""
    spec = str(path)
    p = Path(spec).expanduser()
    if p.is_dir():
        if (p / METADATA).is_file():
            return Source("imagefolder", p)
        shards = sorted(p.glob("*.tar"))
        if shards:
            return Source("webdataset", p, tuple(shards))
        raise UnclipError(
            f"{p} has no {METADATA} and no .tar shards: an imagefolder needs one line per image, "
            '{"file_name": "a.png", "text": "a caption"}'
        )
    if p.is_file():
        if p.name == METADATA:
            return Source("imagefolder", p.parent)
        if p.suffix == ".tar":
            return Source("webdataset", p.parent, (p,), p.name)
        raise UnclipError(f"{p} is not a .tar shard: give an imagefolder (with {METADATA}) or .tar shards")
    if _BRACES.search(spec) or _GLOB_CHARS.search(spec):
        return _shard_list(spec)
    raise UnclipError(
        f"data path {spec} does not exist: give an imagefolder with {METADATA}, a .tar shard, a folder of shards "
        "or a brace list such as shards-{000..009}.tar"
    )


def _shard_list(spec: str) -> Source:
    names: list[str] = []
    for pattern in expand_braces(os.path.expanduser(spec)):
        if _GLOB_CHARS.search(pattern):
            names += sorted(glob.glob(pattern))
        elif not Path(pattern).is_file():
            raise UnclipError(f"shard {pattern} of {spec} does not exist: fix the path or the range")
        else:
            names.append(pattern)
    shards = tuple(Path(n) for n in dict.fromkeys(names))
    if not shards:
        raise UnclipError(f"no file matches {spec}: fix the pattern")
    not_tar = [s for s in shards if s.suffix != ".tar"]
    if not_tar:
        raise UnclipError(f"{not_tar[0]} (matched by {spec}) is not a .tar shard: narrow the pattern to .tar files")
    return Source("webdataset", shards[0].parent, shards, Path(spec).name)


def expand_braces(spec: str) -> list[str]:
    """``a-{000..002}.tar`` → ``a-000.tar a-001.tar a-002.tar``; ``{x,y}`` lists too, several groups nest."""
    match = _BRACES.search(spec)
    if match is None:
        return [spec]
    body, head, tail = match.group(1), spec[: match.start()], spec[match.end() :]
    numbers = _RANGE.match(body)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.lstrip("-").startswith("0") else 0
        step = 1 if int(last) >= int(first) else -1
        parts = [str(n).zfill(width) for n in range(int(first), int(last) + step, step)]
    else:
        parts = body.split(",")
    return [name for part in parts for name in expand_braces(head + part + tail)]


def _index_imagefolder(source: Source) -> tuple[list[_Sample], list[tuple[str, int, int]]]:
    folder, metadata = source.root, source.root / METADATA
    samples, stats = [], []
    try:
        lines = metadata.read_text(encoding="utf-8").split("\n")  # not splitlines(): JSON strings may hold U+2028
    except UnicodeDecodeError as err:
        raise UnclipError(f"{metadata} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{metadata}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UnclipError(f"{where}: not a JSON object ({err.msg}): fix or remove the line") from None
        if not isinstance(row, dict) or not isinstance(row.get("file_name"), str) or not row["file_name"]:
            raise UnclipError(f'{where}: no "file_name": each line needs {{"file_name": ..., "text": ...}}')
        name = row["file_name"]
        captions = _captions(row.get("text"))
        if captions is None:
            raise UnclipError(
                f'missing caption for {name} ({where}): give it a non-empty "text" (a string, or a list of strings)'
            )
        try:
            stat = (folder / name).stat()
        except OSError:
            raise UnclipError(f"{where}: file_name {name} does not exist in {folder}: fix or remove the line") from None
        stats.append((name, stat.st_size, stat.st_mtime_ns))
        clip_file = _clip_file(row, folder, where, stats)
        samples.append(_Sample(name, captions, str(folder / name), -1, stat.st_size, clip_file))
    return samples, stats


def _clip_file(row: dict, folder: Path, where: str, stats: list[tuple[str, int, int]]) -> str:
    """The path of the row's ``clip_file_name`` (the image CLIP sees for its z_i), or "" when it has none; its
    (name, size, mtime) joins ``stats``: a changed twin makes the cached embeddings stale too."""
    name = row.get("clip_file_name")
    if name is None:
        return ""
    if not isinstance(name, str) or not name:
        raise UnclipError(f'{where}: "clip_file_name" must name an image file in {folder}, or be left out')
    try:
        stat = (folder / name).stat()
    except OSError:
        raise UnclipError(f"{where}: clip_file_name {name} does not exist in {folder}: fix or remove it") from None
    stats.append((name, stat.st_size, stat.st_mtime_ns))
    return str(folder / name)


def _index_shards(source: Source) -> tuple[list[_Sample], list[tuple[str, int, int]]]:
    samples, stats = [], []
    for shard in source.shards:
        samples += _index_shard(shard)
        stat = shard.stat()
        stats.append((str(shard), stat.st_size, stat.st_mtime_ns))
    return samples, stats


def _index_shard(shard: Path) -> list[_Sample]:
    try:
        with tarfile.open(shard, mode="r:") as tar:
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for member in tar:
                folder, base = posixpath.split(posixpath.normpath(member.name))  # "./a/0.png" → "a", "0.png"
                stem, dot, extension = base.partition(".")
                if member.isfile() and dot and stem:
                    groups.setdefault(posixpath.join(folder, stem), {})[extension.lower()] = member
            samples, no_image = [], 0
            for key, members in groups.items():
                image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
                if image is None:
                    no_image += 1
                    continue
                text = _tar_caption(tar, members, f"{shard}:{key}")
                samples.append(_Sample(f"{shard.stem}/{key}", text, str(shard), image.offset_data, image.size))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UnclipError(f"{shard} is not a readable tar file ({err}): rewrite or remove the shard") from None
    if no_image:
        logger.warning(f"{shard}: {no_image} keys have no .jpg/.jpeg/.png/.webp member and are ignored")
    return samples


def _tar_caption(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], where: str) -> tuple[str, ...]:
    fix = "add a .txt member, or a .json member with a text or caption field"
    if "txt" in members:
        text = tar.extractfile(members["txt"]).read().decode("utf-8", errors="replace")
        if not text.strip():
            raise UnclipError(f"missing caption for {where}: its .txt member is empty; {fix}")
        return (text.strip(),)
    if "json" in members:
        try:
            row = json.loads(tar.extractfile(members["json"]).read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UnclipError(f"missing caption for {where}: its .json member is not valid JSON; {fix}") from None
        fields = [_captions(row.get(f)) for f in CAPTION_FIELDS] if isinstance(row, dict) else []
        captions = next((c for c in fields if c is not None), None)
        if captions is None:
            raise UnclipError(f"missing caption for {where}: its .json member has no text or caption; {fix}")
        return captions
    raise UnclipError(f"missing caption for {where}: {fix}")


# format name → reads the index: samples, and (name, size, mtime_ns) of every file they come from
FORMATS: dict[str, Callable[[Source], tuple[list[_Sample], list[tuple[str, int, int]]]]] = {
    "imagefolder": _index_imagefolder,
    "webdataset": _index_shards,
}


def load_image(data: bytes, resolution: int) -> torch.Tensor:
    """Image bytes → float32 (3, R, R) in [-1, 1]: RGB, shorter side resized to R (bicubic), center crop."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BICUBIC)  # PIL filters over the whole footprint: antialiased
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


class CaptionedImages(torch.utils.data.Dataset):
    """Map-style dataset of ``{"pixel_values", "text", "captions", "key", "index"}`` (and ``low_res_values`` with
    ``low_res``), or ``None`` for an unreadable image (``text``: the first of ``captions``)."""

    def __init__(self, path: str | Path, resolution: int, low_res: str | Path | None = None):
        if not isinstance(resolution, int) or resolution < 1:
            raise UnclipError(f"resolution must be a positive number of pixels, got {resolution!r}")
        self.path = str(path)
        self.resolution = resolution
        self.source = locate(path)
        self._samples, self._stats = FORMATS[self.source.format](self.source)
        if not self._samples:
            raise UnclipError(f"{path} holds no captioned images: add images (and captions) or fix the path")
        self.keys: list[str] = [s.key for s in self._samples]
        self.texts: list[str] = [s.text for s in self._samples]
        self.paired = any(s.clip_file for s in self._samples)  # some z_i come from another image (clip_file_name)
        self.low_res = _low_res_files(self.source, self._samples, Path(low_res)) if low_res else None
        self.clip_view = False  # True: each item is the image CLIP embeds for its z_i (what `unclip embed` reads)
        self._fingerprint: str | None = None
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self._samples)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        i = operator.index(i)  # ints, numpy ints and 0-d tensors from samplers alike
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        i %= len(self)
        sample = self._samples[i]
        try:
            pixels = load_image(self.read_bytes(i), self.resolution)
            low = load_image(self.low_res[i].read_bytes(), self.resolution // LOW_RES_FACTOR) if self.low_res else None
        except Exception as err:  # a bad image must not stop a run: the batch goes on without it
            if i not in self._warned:  # once per image and process, not every epoch
                self._warned.add(i)
                logger.warning(f"skipping unreadable image {sample.key} ({type(err).__name__}: {err})")
            return None
        item = {"pixel_values": pixels, "text": sample.text, "captions": sample.captions, "key": sample.key, "index": i}
        return item if low is None else item | {"low_res_values": low}

    def read_bytes(self, i: int) -> bytes:
        """The encoded image of sample ``i``, as stored (with ``clip_view``: its ``clip_file_name`` if it has one)."""
        sample = self._samples[i]
        if self.clip_view and sample.clip_file:
            return Path(sample.clip_file).read_bytes()
        with open(sample.file, "rb") as f:
            if sample.offset >= 0:
                f.seek(sample.offset)
            return f.read(sample.size)

    def fingerprint(self) -> str:
        """Changes when the samples, their order, or any file they come from (size, mtime) changes."""
        if self._fingerprint is None:
            digest = hashlib.sha256(json.dumps([self.keys, self._stats]).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def low_res_name(source: Source, key: str) -> str:
    """The file name of the low-res twin of the image with ``key``, within a ``low_res`` folder."""
    return key if source.format == "imagefolder" else f"{key}.png"


def _low_res_files(source: Source, samples: list[_Sample], folder: Path) -> list[Path]:
    """Each sample's low-res twin in ``folder``; an ``UnclipError`` naming the first missing one."""
    if not folder.is_dir():
        raise UnclipError(f"data.low_res {folder} is not a folder: make it (scripts/make_low_res.py) or leave it out")
    files = [folder / low_res_name(source, s.key) for s in samples]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise UnclipError(
            f"data.low_res {folder} lacks {len(missing)} of the {len(files)} low-res twins, the first "
            f"{missing[0].name}: make them with scripts/make_low_res.py (it resumes), or leave data.low_res out"
        )
    return files


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Stacks the readable samples; ``skipped`` counts the ``None`` ones (all of them: empty tensors)."""
    kept = [s for s in samples if s is not None]
    if kept:
        pixel_values = torch.stack([s["pixel_values"] for s in kept])
    else:
        pixel_values = torch.empty(0, 3, 0, 0)
    paired = kept and "low_res_values" in kept[0]
    low_res = {"low_res_values": torch.stack([s["low_res_values"] for s in kept])} if paired else {}
    return low_res | {
        "pixel_values": pixel_values,
        "text": [s["text"] for s in kept],
        "captions": [s["captions"] for s in kept],
        "key": [s["key"] for s in kept],
        "index": torch.tensor([s["index"] for s in kept], dtype=torch.long),
        "skipped": len(samples) - len(kept),
    }


def pick_captions(batch: dict[str, Any], generator: torch.Generator) -> list[str]:
    """One caption per image of a collated batch: its ``text``, or one of its ``captions`` drawn uniformly with
    ``generator`` (which is left untouched when every image has one caption)."""
    captions = batch.get("captions")
    if not captions or all(len(c) == 1 for c in captions):
        return list(batch["text"])
    draws = torch.rand(len(captions), generator=generator).tolist()
    return [c[min(int(u * len(c)), len(c) - 1)] for c, u in zip(captions, draws, strict=True)]
