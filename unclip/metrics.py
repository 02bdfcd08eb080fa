"""CLIP score and Fréchet distance, offline, with torchmetrics on local feature extractors (nothing downloads).

    from unclip.metrics import clip_towers, clip_score, frechet_distance, read_folder
    towers = clip_towers("demo")                         # a model's own CLIP (text encoder + image tower), or
    towers = clip_towers("openclip:ViT-B-32/weights.safetensors")  # a CLIP by name (hf:ID_OR_FOLDER too)
    images = read_folder("outputs/", need_prompts=True)  # the files and their prompts (metadata.jsonl)
    clip_score(towers, images.pairs())                   # {"clip_score": 0.31, "clip_score_x100": 31.0, "n": 8}
    frechet_distance("demo", real.pictures(), fake.pictures())  # {"fd": 12.3, "n_real": .., "n_fake": .., ...}

CLIP score (Hessel et al. 2021, as torchmetrics' ``CLIPScore`` computes it): max(100 · the mean over images of
cos(image, its prompt), 0), ``clip_score_x100``; ``clip_score`` is it / 100, the mean cosine similarity. Fréchet
distance (Heusel et al. 2017, torchmetrics' ``FrechetInceptionDistance`` on a custom feature extractor): ‖μ_r − μ_f‖² +
Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½) of the two sets' features; the standard FID on Inception-v3's pool features with
``inception:PATH`` (the weights file torch-fidelity uses, ``pt_inception-2015-12-05``; needs the ``eval`` extra).
Both are computed by the calling process alone (``sync_on_compute=False``): under accelerate the main process scores
while the others wait, as training validation and ``unclip eval coco`` do.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from unclip.errors import UnclipError

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
STABLE = 2048  # fewer images than this (or than the feature width): warn that the estimate is not stable


@dataclass
class ClipTowers:
    """A CLIP's two towers as functions: images (B, 3, H, W) in [0, 1] → (B, D); texts → (B, D)."""

    name: str
    image: Callable[[torch.Tensor], torch.Tensor]
    text: Callable[[list[str]], torch.Tensor]
    dim: int


def clip_towers(name: str, device: str | torch.device = "cpu") -> ClipTowers:
    """``openclip:MODEL/PRETRAINED`` (open_clip, as ``--rerank``), ``hf:ID_OR_FOLDER`` (a transformers CLIPModel), or
    a model (a preset name, a model YAML, a folder) whose own text encoder and CLIP image tower are used."""
    if name.startswith("openclip:"):
        from unclip.rerank import ClipReranker

        ranker = ClipReranker.from_name(name, device)

        def image(x: torch.Tensor) -> torch.Tensor:
            from unclip.clip_models import resize_center_crop

            x = resize_center_crop(x.to(device, torch.float32), ranker.image_size).clamp(0, 1)
            mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in (ranker.mean, ranker.std))
            return ranker.model.encode_image((x - mean) / std).float()

        def text(texts: list[str]) -> torch.Tensor:
            return ranker.model.encode_text(ranker.tokenizer(texts).to(device)).float()

        return ClipTowers(name, image, text, int(image(torch.zeros(1, 3, 8, 8)).shape[-1]))
    if name.startswith("hf:"):
        return _transformers_towers(name, device)
    from unclip.pipeline import UnCLIPCascade

    return cascade_towers(UnCLIPCascade.from_pretrained(name).to(device), f"model {name}")


def cascade_towers(pipe, name: str) -> ClipTowers:
    """A loaded cascade's own CLIP: its text encoder's z_t and its CLIP image tower's z_i (the space the prior maps
    between); ``UnclipError`` when the model has no image tower."""
    encoder = pipe.clip_image_encoder()
    return ClipTowers(
        name,
        lambda x: encoder(x * 2 - 1),
        lambda texts: pipe.encode_text(texts).prompt_embeds().float(),
        encoder.dim,
    )


def _transformers_towers(name: str, device) -> ClipTowers:
    from transformers import CLIPModel, CLIPTokenizer

    from unclip.clip_models import _transformers_quiet, resize_center_crop

    where = name.removeprefix("hf:")
    try:
        with _transformers_quiet():
            model = CLIPModel.from_pretrained(where).to(device).eval()
            tokenizer = CLIPTokenizer.from_pretrained(where)
    except OSError as err:
        raise UnclipError(f"CLIP {name} cannot be loaded ({str(err).splitlines()[0][:160]}): give a local folder "
                          "with config.json and weights, or a hub id with the network on") from None  # fmt: skip
    size = model.config.vision_config.image_size
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=device).view(1, -1, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=device).view(1, -1, 1, 1)

    def image(x: torch.Tensor) -> torch.Tensor:
        x = resize_center_crop(x.to(device, torch.float32), size).clamp(0, 1)
        return model.get_image_features(pixel_values=(x - mean) / std).float()

    def text(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(device)
        return model.get_text_features(**tokens).float()

    return ClipTowers(name, image, text, model.config.projection_dim)


# --------------------------------------------------------------------------------------------- folders
@dataclass
class Folder:
    """Image files and their prompts, read one at a time (30,000 pictures never sit in memory together): each
    picture (3, H, W) in [0, 1], center-cropped and resized to ``size`` when given; a file that cannot be read is
    skipped and its name added to ``skipped``."""

    files: list[Path]
    prompts: list[str] = field(default_factory=list)  # one per file, or none
    size: int | None = None
    skipped: list[str] = field(default_factory=list)

    def _read(self, path: Path) -> torch.Tensor | None:
        from unclip.images import open_image, to_tensor

        try:
            picture = open_image(path).convert("RGB")
        except UnclipError:
            self.skipped.append(path.name)
            return None
        if self.size is not None and picture.size != (self.size, self.size):
            picture = ImageOps.fit(picture, (self.size, self.size), Image.Resampling.BICUBIC)
        return to_tensor(picture)

    def pictures(self) -> Iterator[torch.Tensor]:
        for path in self.files:
            if (picture := self._read(path)) is not None:
                yield picture

    def pairs(self) -> Iterator[tuple[torch.Tensor, str]]:
        """(picture, its prompt) of every readable file."""
        for path, prompt in zip(self.files, self.prompts, strict=True):
            if (picture := self._read(path)) is not None:
                yield picture, prompt


def read_folder(folder: Path, prompts: Path | None = None, need_prompts: bool = False) -> Folder:
    """The images directly in ``folder`` (sorted by name); their prompts from ``prompts`` (one a line, in the same
    order) or the folder's ``metadata.jsonl`` (``prompt`` or ``text`` by ``file_name``). With ``need_prompts`` an
    image without a prompt is an error naming the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnclipError(f"{folder} is not a folder of images: give a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise UnclipError(f"{folder} has no images ({', '.join(SUFFIXES)}): give a folder with some")
    texts = _prompts(folder, files, prompts) if need_prompts else {}
    return Folder(files, [texts[path.name] for path in files] if need_prompts else [])


def _prompts(folder: Path, files: list[Path], prompts: Path | None) -> dict[str, str]:
    if prompts is not None:
        lines = [line for line in Path(prompts).read_text().splitlines() if line.strip()]
        if len(lines) != len(files):
            raise UnclipError(f"{prompts} has {len(lines)} prompts for {len(files)} images: give one a line, in the "
                              "images' name order")  # fmt: skip
        return {path.name: line for path, line in zip(files, lines, strict=True)}
    metadata = folder / "metadata.jsonl"
    if not metadata.is_file():
        raise UnclipError(f"{folder} has no metadata.jsonl: give the prompts with --prompts FILE (one a line)")
    found = {}
    for line in metadata.read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        text = row.get("prompt", row.get("text"))
        found[row.get("file_name")] = text[0] if isinstance(text, list) else text
    missing = [path.name for path in files if not found.get(path.name)]
    if missing:
        raise UnclipError(f"{metadata} has no prompt for {missing[0]} ({len(missing)} images): give --prompts FILE")
    return found


# ---------------------------------------------------------------------------------------------- metrics
def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _stack(pictures: list[torch.Tensor]) -> torch.Tensor:
    """One batch, each picture resized to the first's size when sizes differ (the towers resize anyway)."""
    import torch.nn.functional as F

    side = pictures[0].shape[-2:]
    return torch.stack([p if p.shape[-2:] == side else F.interpolate(p[None], size=list(side), mode="bicubic",
                                                                     antialias=True)[0] for p in pictures])  # fmt: skip


class _Model(torch.nn.Module):
    """What torchmetrics' CLIPScore calls: ``get_image_features`` and ``get_text_features``."""

    def __init__(self, towers: ClipTowers):
        from types import SimpleNamespace

        super().__init__()
        self.towers = towers
        self.config = SimpleNamespace()  # no text_config: CLIPScore leaves the texts' length to the towers
        self._texts: list[str] = []

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.towers.image(pixel_values)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.towers.text([self._texts[int(i)] for i in input_ids[:, 0]])


class _Processor:
    """CLIPScore's processor: images (uint8 tensors) → [0, 1] batches; texts → their rows (the towers tokenize)."""

    def __init__(self, model: _Model):
        self.model = model

    def __call__(self, images=None, text=None, **_):
        if images is not None:
            return {"pixel_values": _stack([i.float() / 255 for i in images])}
        self.model._texts = list(text)
        rows = torch.arange(len(text))[:, None]
        return {"input_ids": rows, "attention_mask": torch.ones_like(rows)}


@torch.no_grad()
def clip_score(towers: ClipTowers, pairs: Iterable[tuple[torch.Tensor, str]], batch: int = 32) -> dict:
    """torchmetrics' CLIPScore of each (picture, prompt) pair, over all of them."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    model = _Model(towers)
    metric = CLIPScore(model_name_or_path=lambda: (model, _Processor(model)), sync_on_compute=False)
    n = 0
    for chunk in _chunks(pairs, batch):
        metric.update([(p * 255).round().to(torch.uint8) for p, _ in chunk], [text for _, text in chunk])
        n += len(chunk)
    if not n:
        raise UnclipError("no image could be read: give PNG or JPEG files")
    score = float(metric.compute())
    return {"clip_score": round(score / 100, 4), "clip_score_x100": round(score, 2), "n": n, "clip": towers.name}


class _Features(torch.nn.Module):
    """FrechetInceptionDistance's custom feature extractor: [0, 1] images → (B, D)."""

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], dim: int):
        super().__init__()
        self.encode, self.num_features = encode, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x).double()


def feature_extractor(features: str | ClipTowers, device="cpu") -> tuple[torch.nn.Module | int, str, dict]:
    """FrechetInceptionDistance's ``feature`` for ``--features NAME`` (or CLIP towers already loaded), its
    description and keyword arguments."""
    if isinstance(features, ClipTowers):
        return _Features(features.image, features.dim), f"CLIP image features of {features.name}", {}
    name = features
    if name.startswith("inception:"):
        path = Path(name.removeprefix("inception:")).expanduser()
        if not path.is_file():
            raise UnclipError(
                f"--features {name}: no such weights file: give the path of pt_inception-2015-12-05 (torch-fidelity's "
                "Inception-v3 weights), e.g. --features inception:~/pt_inception.pth"
            )
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise UnclipError("--features inception: needs torch-fidelity: pip install 'unclip[eval]'") from None
        return 2048, "inception-v3 pool (FID)", {"feature_extractor_weights_path": str(path)}
    return feature_extractor(clip_towers(name, device))


@torch.no_grad()
def frechet_distance(
    features: str | ClipTowers, real: Iterable[torch.Tensor], fake: Iterable[torch.Tensor], device="cpu"
) -> dict:
    """torchmetrics' FrechetInceptionDistance of two sets of pictures on ``features`` (``feature_extractor``);
    the pictures are read as they come, 32 at a time."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    feature, described, kwargs = feature_extractor(features, device)
    metric = FrechetInceptionDistance(feature=feature, normalize=True, sync_on_compute=False, **kwargs).to(device)
    width = feature if isinstance(feature, int) else feature.num_features
    counts = {True: 0, False: 0}
    for pictures, is_real in ((real, True), (fake, False)):
        for chunk in _chunks(pictures, 32):
            metric.update(_stack(chunk).to(device), real=is_real)
            counts[is_real] += len(chunk)
    n_real, n_fake = counts[True], counts[False]
    if min(n_real, n_fake) < 2:
        raise UnclipError(f"the Fréchet distance needs ≥ 2 images a side, got {n_real} and {n_fake}")
    smallest = min(n_real, n_fake)
    if smallest < max(STABLE, width):
        warnings.warn(
            f"{smallest} images on a side, fewer than {max(STABLE, width)} (the feature width is {width}): the "
            "estimate is biased and unstable; compare only runs of equal sizes",
            stacklevel=2,
        )
    return {"fd": round(float(metric.compute()), 4), "n_real": n_real, "n_fake": n_fake, "features": described}
