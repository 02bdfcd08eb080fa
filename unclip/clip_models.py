"""CLIP image encoders by name: the z_i that the prior predicts and the decoder is conditioned on.

    from unclip.clip_models import load_clip_image_encoder

    clip = load_clip_image_encoder("hf:openai/clip-vit-large-patch14", device="cuda", dtype=torch.float16)
    z_i = clip(pixels)  # pixels (B, 3, H, W) in [-1, 1] → (B, 768) float32, projected and not normalised

Names (a registry, ``ENCODERS``):

* ``openclip:MODEL/PRETRAINED``: open_clip, e.g. ``openclip:ViT-H-14/laion2b_s32b_b79k``; PRETRAINED is a tag
  or a local checkpoint file (``openclip:ViT-L-14/ckpt/open_clip_model.safetensors``); also
  ``openclip:hf-hub:ORG/REPO`` and ``openclip:local-dir:FOLDER``.
* ``hf:HUB_ID_OR_FOLDER``: transformers' CLIPVisionModelWithProjection, e.g. ``hf:openai/clip-vit-large-patch14``
  (the CLIP Karlo was trained with), from a full CLIP or a vision-only checkpoint.
* ``tiny:DIM``: a tiny random CLIP vision tower (always the same weights) for tests and tiny presets.

The encoder resizes (shorter side, bicubic, antialiased, center crop) and normalises with the model's own
mean and std in torch, so it takes GPU batches at any resolution.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from unclip.errors import UnclipError

logger = logging.getLogger(__name__)

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_SEED = 0


@dataclass
class ClipImageEncoder:
    """A frozen CLIP image tower: ``__call__`` maps [-1, 1] pixels to projected, unnormalised embeddings."""

    name: str
    dim: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    model: torch.nn.Module
    encode: Callable[[torch.Tensor], torch.Tensor]  # normalised (B, 3, S, S) → (B, dim)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ClipImageEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, dim) float32, on the encoder's device."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise UnclipError(f"CLIP takes (B, 3, H, W) images in [-1, 1], got shape {tuple(pixels.shape)}")
        x = (pixels.to(self.device, torch.float32) + 1) / 2
        x = resize_center_crop(x, self.image_size).clamp(0, 1)
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return self.encode(((x - mean) / std).to(self.dtype)).float()


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (bicubic, antialiased), then the center ``size`` × ``size``."""
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    x = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top : top + size, left : left + size]


def _offline() -> bool:
    from unclip.loading import offline

    return offline()


def _load_tiny(spec: str, name: str) -> ClipImageEncoder:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if not spec.isdigit() or int(spec) < 1:
        raise UnclipError(f"{name}: tiny:DIM needs a positive embedding width, e.g. tiny:32")
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=int(spec),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = CLIPVisionModelWithProjection(config)
    return _transformers_encoder(name, model, OPENAI_MEAN, OPENAI_STD, config.image_size)


def _transformers_encoder(name: str, model, mean, std, size: int) -> ClipImageEncoder:
    def encode(x: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=x).image_embeds

    return ClipImageEncoder(name, model.config.projection_dim, int(size), tuple(mean), tuple(std), model, encode)


def _is_hub_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "/", "~"))


def _load_hf(spec: str, name: str) -> ClipImageEncoder:
    from transformers import AutoConfig, CLIPConfig, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(spec).expanduser()
    location = str(folder) if folder.is_dir() else spec
    if not folder.is_dir() and not _is_hub_id(spec):
        raise UnclipError(
            f"{name}: folder {spec} does not exist; give hf:HUB_ID (e.g. openai/clip-vit-large-patch14) or hf:FOLDER"
        )
    try:
        config = AutoConfig.from_pretrained(location)
    except OSError as err:
        if folder.is_dir():
            raise UnclipError(f"{name}: {folder} has no config.json: give a folder saved by save_pretrained") from None
        if _offline():
            raise UnclipError(
                f"{name}: {spec} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it where "
                f"there is network (huggingface-cli download {spec}) and use hf:LOCAL_FOLDER"
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnclipError(f"{name}: cannot load {spec} ({reason}): check the id, or use hf:LOCAL_FOLDER") from None
    if isinstance(config, CLIPConfig):  # a full CLIP checkpoint: its projection width is on the top-level config
        vision = config.vision_config
        vision.projection_dim = config.projection_dim
    elif isinstance(config, CLIPVisionConfig):
        vision = config
    else:
        raise UnclipError(
            f"{name}: {spec} is a {config.model_type} model, not CLIP: e.g. hf:openai/clip-vit-large-patch14"
        )
    try:
        with _transformers_quiet():  # its load report would list every text-tower weight of a full CLIP as unused
            model, info = CLIPVisionModelWithProjection.from_pretrained(
                location, config=vision, output_loading_info=True
            )
    except OSError as err:
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UnclipError(f"{name}: no CLIP weights loadable from {location} ({reason})") from None
    except RuntimeError:  # transformers' refusal of weights whose shapes differ from the config's
        raise UnclipError(f"{name}: the weights in {location} do not fit its config.json (another model?)") from None
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise UnclipError(
            f"{name}: {location} lacks {len(missing)} vision weights (e.g. {missing[0]}): not a CLIP vision tower"
        )
    sibling = folder.parent / "feature_extractor"  # the image-variations layout keeps it beside image_encoder/
    for place in [location] + ([str(sibling)] if folder.is_dir() and sibling.is_dir() else []):
        try:
            return from_transformers(model, CLIPImageProcessor.from_pretrained(place), name)
        except OSError:
            continue
    logger.warning(f"{name}: no preprocessor_config.json; using OpenAI CLIP's mean/std at {vision.image_size} px")
    return _transformers_encoder(name, model, OPENAI_MEAN, OPENAI_STD, vision.image_size)


def from_transformers(model, processor, name: str = "image_encoder") -> ClipImageEncoder:
    """A CLIPVisionModelWithProjection and its CLIPImageProcessor (as the image-variations layout has them)."""
    crop = processor.crop_size
    size = crop["height"] if crop else model.config.image_size
    return _transformers_encoder(name, model, processor.image_mean, processor.image_std, size)


@contextmanager
def _transformers_quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


@contextmanager
def _root_logging_off() -> Iterator[None]:
    """open_clip logs through the root logger (``logging.error``, which would also configure it): not here."""
    root, null, before = logging.getLogger(), logging.NullHandler(), logging.root.manager.disable
    root.addHandler(null)  # a handler present: logging.error() does not call basicConfig()
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(before)
        root.removeHandler(null)


def create_openclip_model(spec: str, name: str) -> tuple[torch.nn.Module, str]:
    """An open_clip CLIP model (both towers) from ``MODEL/PRETRAINED``, ``hf-hub:ORG/REPO`` or ``local-dir:FOLDER``,
    and the model name its tokenizer is found by; every failure is a one-line UnclipError naming ``name``."""
    try:
        import open_clip
    except ImportError:
        raise UnclipError(f"{name}: open_clip is not installed: pip install 'unclip[rerank]' (or [train])") from None
    if spec.startswith(("hf-hub:", "local-dir:")):
        model_name, pretrained = spec, None
    else:
        model_name, _, pretrained = spec.partition("/")
        if not model_name or not pretrained:
            raise UnclipError(f"{name}: give openclip:MODEL/PRETRAINED, e.g. openclip:ViT-H-14/laion2b_s32b_b79k")
        if model_name not in open_clip.list_models():
            raise UnclipError(
                f"{name}: open_clip has no model {model_name}, e.g. ViT-L-14, ViT-H-14 (open_clip.list_models())"
            )
        file = Path(pretrained).expanduser()
        if file.is_file():
            pretrained = str(file)
        elif not open_clip.get_pretrained_cfg(model_name, pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise UnclipError(
                f"{name}: {pretrained} is neither a checkpoint file nor a tag of {model_name} (tags: {tags})"
            )
    try:
        with _root_logging_off():
            model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as err:  # open_clip reports download and checkpoint problems as assorted errors
        if _offline() and not (pretrained and Path(pretrained).is_file()):
            raise UnclipError(
                f"{name}: the weights are not in the local cache and HF_HUB_OFFLINE is set: download them where "
                f"there is network, or give a local file: openclip:{model_name}/PATH/TO/CHECKPOINT"
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnclipError(f"{name}: open_clip cannot load it ({reason[:300]})") from None
    return model, model_name


def _load_openclip(spec: str, name: str) -> ClipImageEncoder:
    model, _ = create_openclip_model(spec, name)
    visual = model.visual
    size = visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    dim = getattr(visual, "output_dim", None)
    if dim is None:
        with torch.no_grad():
            dim = model.encode_image(torch.zeros(1, 3, size, size)).shape[-1]

    def encode(x: torch.Tensor) -> torch.Tensor:
        return model.encode_image(x, normalize=False)

    pp = visual.preprocess_cfg
    return ClipImageEncoder(name, int(dim), size, tuple(pp["mean"]), tuple(pp["std"]), model, encode)


# prefix → (loader of the rest of the name, the form shown in errors)
ENCODERS: dict[str, tuple[Callable[[str, str], ClipImageEncoder], str]] = {
    "openclip": (_load_openclip, "openclip:MODEL/PRETRAINED (e.g. openclip:ViT-H-14/laion2b_s32b_b79k)"),
    "hf": (_load_hf, "hf:HUB_ID_OR_FOLDER (e.g. hf:openai/clip-vit-large-patch14)"),
    "tiny": (_load_tiny, "tiny:DIM (e.g. tiny:32)"),
}


def parse_clip_name(name: str) -> tuple[str, str]:
    """``"hf:openai/clip-vit-large-patch14"`` → ``("hf", "openai/clip-vit-large-patch14")``, or an UnclipError."""
    prefix, sep, rest = name.partition(":")
    if not sep or prefix not in ENCODERS or not rest:
        forms = "; ".join(form for _, form in ENCODERS.values())
        raise UnclipError(f"unknown CLIP image encoder '{name}': use {forms}")
    return prefix, rest


def load_clip_image_encoder(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ClipImageEncoder:
    """A frozen, eval-mode CLIP image encoder by name (see the module docstring for the names)."""
    prefix, rest = parse_clip_name(name)
    encoder = ENCODERS[prefix][0](rest, name)
    encoder.model.eval().requires_grad_(False)
    return encoder.to(device, dtype)
