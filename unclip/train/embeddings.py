"""CLIP image embeddings computed once per dataset and CLIP, cached beside the data.

    unclip embed my/images --clip hf:openai/clip-vit-large-patch14           # the command
    embed_dataset("my/images", "hf:openai/clip-vit-large-patch14")           # the same, from Python
    cache = load_cached_embeddings("my/images", "hf:openai/clip-vit-large-patch14")  # None until then
    z_i = cache.image_embeds[batch["index"]]                                  # dataset index order

The cache is ``<data folder>/.unclip-cache/<clip slug>.safetensors`` (for tar shards, in the shards' folder,
the file name prefixed by the shard pattern unless the path was a folder). It holds ``image_embeds`` (N, dim)
float32 and ``valid`` (N,) bool (False: the image could not be read; its row is zeros), and in its metadata
the CLIP name and the dataset's fingerprint. A dataset changed since is refused: rerun ``unclip embed``.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from unclip.clip_models import load_clip_image_encoder, parse_clip_name
from unclip.errors import UnclipError
from unclip.train.data import CaptionedImages, collate, locate

CACHE_DIR = ".unclip-cache"
FORMAT = "unclip-clip-image-embeds-v1"


@dataclass
class CachedEmbeddings:
    image_embeds: torch.Tensor  # (N, dim) float32, in dataset index order
    valid: torch.Tensor  # (N,) bool: False where the image was unreadable (the row is zeros)
    clip: str
    fingerprint: str
    path: Path

    def __len__(self) -> int:
        return len(self.image_embeds)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-.")[:120]


def cache_path(path: str | Path, clip_name: str) -> Path:
    """Where ``unclip embed`` writes (and training reads) the embeddings of ``path`` by ``clip_name``."""
    source = locate(path)
    name = f"{_slug(source.label)}--{_slug(clip_name)}" if source.label else _slug(clip_name)
    return source.root / CACHE_DIR / f"{name}.safetensors"


def read_cache(file: Path) -> CachedEmbeddings:
    """A cache file as it is, unchecked against any dataset."""
    fix = f"delete {file} and rerun `unclip embed`"
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UnclipError(f"{file} is not an unclip embedding cache: {fix}")
            embeds, valid = f.get_tensor("image_embeds"), f.get_tensor("valid")
    except (SafetensorError, OSError, KeyError) as err:
        raise UnclipError(f"{file} is unreadable ({err}): {fix}") from None
    return CachedEmbeddings(embeds, valid.bool(), meta.get("clip", ""), meta.get("fingerprint", ""), file)


def load_cached_embeddings(
    path: str | Path, clip_name: str, dataset: CaptionedImages | None = None
) -> CachedEmbeddings | None:
    """The cached embeddings of ``path`` by ``clip_name``; None if there are none, an UnclipError if stale."""
    file = cache_path(path, clip_name)
    if not file.is_file():
        return None
    cache = read_cache(file)
    rerun = f"rerun `unclip embed {path} --clip {clip_name}`"
    if cache.clip != clip_name:
        raise UnclipError(f"{file} holds embeddings by {cache.clip}, not {clip_name}: {rerun}")
    dataset = dataset if dataset is not None else CaptionedImages(path, resolution=224)
    if cache.fingerprint != dataset.fingerprint() or len(cache) != len(dataset):
        raise UnclipError(f"{file} is stale: the dataset changed since it was embedded; {rerun}")
    return cache


def embed_dataset(
    path: str | Path,
    clip_name: str,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    *,
    dtype: torch.dtype = torch.float32,
    num_workers: int = 0,
) -> Path:
    """Embed every image of ``path`` with ``clip_name`` and write the cache; returns its path."""
    parse_clip_name(clip_name)  # a bad name fails before any work
    dataset = CaptionedImages(path, resolution=224)  # a bad dataset fails before loading CLIP
    target = cache_path(path, clip_name)
    _check_writable(target.parent)  # an unwritable folder fails before the work, not after
    encoder = load_clip_image_encoder(clip_name, device=device, dtype=dtype)
    dataset.resolution = encoder.image_size  # images read once at CLIP's size, as CLIP's own preprocessing
    dataset.clip_view = True  # a row's clip_file_name, where it has one
    embeds = torch.zeros(len(dataset), encoder.dim, dtype=torch.float32)
    valid = torch.zeros(len(dataset), dtype=torch.bool)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    with tqdm(total=len(dataset), desc=f"embed {clip_name}", unit="img", disable=not progress) as bar:
        for batch in loader:
            if len(batch["index"]):
                embeds[batch["index"]] = encoder(batch["pixel_values"]).cpu()
                valid[batch["index"]] = True
            bar.update(len(batch["index"]) + batch["skipped"])
    metadata = {
        "format": FORMAT,
        "clip": clip_name,
        "fingerprint": dataset.fingerprint(),
        "count": str(len(dataset)),
        "valid": str(int(valid.sum())),
        "dim": str(encoder.dim),
        "dtype": str(dtype).removeprefix("torch."),
    }
    _save_atomic(target, {"image_embeds": embeds, "valid": valid}, metadata)
    return target


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".unclip-write-test-"):
            pass
    except OSError as err:
        raise UnclipError(
            f"cannot write the cache in {folder} ({err.strerror or err}): make the data folder writable"
        ) from None


def _save_atomic(target: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Written beside the target, then renamed over it: a reader sees the old file or the new, never half."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors writes 0600: others sharing the data read the cache too
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
