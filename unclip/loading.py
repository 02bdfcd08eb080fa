"""Loading the pretrained repos in their hub layouts, from a local folder or the Hugging Face Hub.

Three layouts are known, the first two as the hub has them and as diffusers' ``save_pretrained`` writes them:

* ``karlo``: kakaobrain/karlo-v1-alpha (UnCLIPPipeline). Its model_index.json says
  ``"text_proj": ["unclip", "UnCLIPTextProjModel"]``, which current diffusers refuses to load; diffusers'
  ``save_pretrained`` writes ``["diffusers", ...]``. Both load here, into unclip's own text projection.
  Without ``prior`` and with ``image_encoder`` (CLIPVisionModelWithProjection) and ``feature_extractor``
  (CLIPImageProcessor) it is the karlo-v1-alpha-image-variations layout (UnCLIPImageVariationPipeline).
* ``x4``: stabilityai/stable-diffusion-x4-upscaler (StableDiffusionUpscalePipeline).
* ``pixel``: a pixel-space 256→1024 upsampler (DALL·E 2's: a UNet without attention), the layout unclip's
  trainer writes for stage sr1024 and ``UnCLIPCascade.save_pretrained`` writes back: ``unet`` (a UNet2DModel
  taking the noisy image and the upsampled low-res image as channels) and ``scheduler``; its model_index.json
  is ``{"_class_name": "PixelUpscalerPipeline", "_unclip_layout": "pixel", "unet": ["diffusers",
  "UNet2DModel"], "scheduler": ["diffusers", "<a scheduler class>"]}``.

A model config's ``upscaler`` may be ``x4`` or ``pixel``: ``detect_upscaler_layout`` tells them apart.

Components are loaded by their role in the layout (a registry of classes), never by importing a class
name read from a file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers

from unclip.errors import UnclipError
from unclip.text_proj import UnCLIPTextProjModel

logger = logging.getLogger(__name__)

# Schedulers a layout may name for a scheduler role.
SCHEDULER_CLASSES = {
    name: getattr(diffusers, name)
    for name in (
        "UnCLIPScheduler",
        "DDPMScheduler",
        "DDIMScheduler",
        "DPMSolverMultistepScheduler",
        "EulerDiscreteScheduler",
        "PNDMScheduler",
    )
}


@dataclass(frozen=True)
class Role:
    """One component of a layout: the classes it may be, and whether the layout may lack it."""

    classes: tuple[type, ...]
    optional: bool = False


LAYOUTS: dict[str, dict[str, Role]] = {
    "karlo": {
        "text_encoder": Role((transformers.CLIPTextModelWithProjection,)),
        "tokenizer": Role((transformers.CLIPTokenizer, transformers.CLIPTokenizerFast)),
        "prior": Role((diffusers.PriorTransformer,), optional=True),
        "prior_scheduler": Role(tuple(SCHEDULER_CLASSES.values()), optional=True),
        "text_proj": Role((UnCLIPTextProjModel,)),
        "decoder": Role((diffusers.UNet2DConditionModel,)),
        "decoder_scheduler": Role(tuple(SCHEDULER_CLASSES.values())),
        "super_res_first": Role((diffusers.UNet2DModel,)),
        "super_res_last": Role((diffusers.UNet2DModel,)),
        "super_res_scheduler": Role(tuple(SCHEDULER_CLASSES.values())),
        "image_encoder": Role((transformers.CLIPVisionModelWithProjection,), optional=True),
        "feature_extractor": Role((transformers.CLIPImageProcessor,), optional=True),
    },
    "x4": {
        "unet": Role((diffusers.UNet2DConditionModel,)),
        "vae": Role((diffusers.AutoencoderKL,)),
        "text_encoder": Role((transformers.CLIPTextModel,)),
        "tokenizer": Role((transformers.CLIPTokenizer, transformers.CLIPTokenizerFast)),
        "scheduler": Role(tuple(SCHEDULER_CLASSES.values())),
        "low_res_scheduler": Role(tuple(SCHEDULER_CLASSES.values())),
    },
    "pixel": {
        "unet": Role((diffusers.UNet2DModel,)),
        "scheduler": Role(tuple(SCHEDULER_CLASSES.values())),
    },
}


def _is_hub_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "/", "~"))


def _weight_files(files: list[str]) -> list[str]:
    """Per component folder: its safetensors if the repo has them, else its .bin (never fp16 variants)."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for f in files:
        if "/" in f and f.endswith((".safetensors", ".bin")) and ".fp16." not in f:
            by_folder[f.rsplit("/", 1)[0]].append(f)
    chosen = []
    for weights in by_folder.values():
        chosen += [w for w in weights if w.endswith(".safetensors")] or weights
    return chosen


def offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


def fetch(location: str) -> Path:
    """A local folder as is; a hub id from the local cache, else downloaded (configs and weights only)."""
    path = Path(location).expanduser()
    if path.is_dir():
        return path
    if not _is_hub_id(location):
        raise UnclipError(f"folder {location} does not exist; give a local folder in the hub layout or a hub id")
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:  # already cached: no network needed
        return Path(huggingface_hub.snapshot_download(location, local_files_only=True))
    except LocalEntryNotFoundError:
        pass  # not cached: download below, unless offline
    offline_fix = (
        f"download it where there is network (huggingface-cli download {location}) or point the model config "
        "at a local folder in the same layout"
    )
    if offline():
        raise UnclipError(f"{location} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: {offline_fix}")
    try:
        files = huggingface_hub.list_repo_files(location)
        wanted = [f for f in files if f.endswith((".json", ".txt"))] + _weight_files(files)
        return Path(huggingface_hub.snapshot_download(location, allow_patterns=wanted))
    except RepositoryNotFoundError:
        raise UnclipError(
            f"{location}: no such repository on the hub (if it is gated or private, log in first)"
        ) from None
    except Exception as err:
        raise UnclipError(
            f"cannot download {location} ({type(err).__name__}): no network? Set HF_HUB_OFFLINE=1 and {offline_fix}"
        ) from None


def detect_upscaler_layout(location: str) -> str:
    """``x4`` (a latent upscaler: model_index.json lists a ``vae``) or ``pixel`` (a ``unet`` and no ``vae``)."""
    folder = fetch(location)
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    if "vae" in index:
        return "x4"
    if "unet" in index:
        return "pixel"
    raise UnclipError(
        f"upscaler {folder} is no known layout: expected a model_index.json listing stable-diffusion-x4-upscaler's "
        "components (unet, vae, text_encoder, ...) or a pixel upsampler's (unet, scheduler)"
    )


def read_model_index(folder: Path, layout: str) -> dict[str, Any]:
    index_file = folder / "model_index.json"
    roles = LAYOUTS[layout]
    if not index_file.is_file():
        required = ", ".join(name for name, role in roles.items() if not role.optional)
        raise UnclipError(f"{folder} is not a {layout} layout: no model_index.json (expected subfolders {required})")
    index = json.loads(index_file.read_text())
    for name, role in roles.items():
        if name not in index:
            if role.optional:
                continue
            raise UnclipError(f"{folder}/model_index.json lists no '{name}': not a {layout} layout")
        if not (folder / name).is_dir():
            raise UnclipError(
                f"{folder} has no '{name}/' subfolder, which model_index.json lists; the download is incomplete"
            )
    return index


def _read_config(folder: Path, name: str) -> dict[str, Any]:
    for file in ("config.json", "scheduler_config.json"):
        if (folder / name / file).is_file():
            return json.loads((folder / name / file).read_text())
    raise UnclipError(f"{folder}/{name}/ has no config.json: the download is incomplete")


def check_karlo_sizes(folder: Path, index: dict[str, Any]) -> None:
    """Refuse parts that do not fit together before loading any weights."""
    text = _read_config(folder, "text_encoder").get("projection_dim")
    proj = _read_config(folder, "text_proj")
    decoder = _read_config(folder, "decoder")
    if "prior" in index:
        prior = _read_config(folder, "prior").get("embedding_dim", 768)
        if prior != proj.get("clip_embeddings_dim", 768):
            raise UnclipError(
                f"{folder}: the prior makes {prior}-d CLIP embeddings but text_proj takes "
                f"{proj.get('clip_embeddings_dim', 768)}-d: prior and decoder come from different models"
            )
    if "image_encoder" in index:
        image = _read_config(folder, "image_encoder").get("projection_dim")
        if image != proj.get("clip_embeddings_dim", 768):
            raise UnclipError(
                f"{folder}: image_encoder projects to {image} dims but text_proj takes "
                f"{proj.get('clip_embeddings_dim', 768)}: the image encoder is not the decoder's CLIP"
            )
    if text != proj.get("clip_embeddings_dim", 768):
        raise UnclipError(
            f"{folder}: text_encoder projects to {text} dims but text_proj takes {proj.get('clip_embeddings_dim', 768)}"
        )
    if decoder.get("cross_attention_dim") != proj.get("cross_attention_dim"):
        raise UnclipError(
            f"{folder}: decoder cross_attention_dim {decoder.get('cross_attention_dim')} does not match "
            f"text_proj's {proj.get('cross_attention_dim')}"
        )


def _load_one(folder: Path, name: str, entry: Any, role: Role, dtype: torch.dtype) -> Any:
    class_name = entry[1] if isinstance(entry, list) and len(entry) == 2 else None
    matches = [c for c in role.classes if c.__name__ == class_name]
    if not matches:
        expected = " or ".join(c.__name__ for c in role.classes)
        raise UnclipError(f"{folder}/model_index.json: '{name}' is {class_name!r}, expected {expected}")
    cls = matches[0]
    path = folder / name
    if issubclass(cls, diffusers.SchedulerMixin):
        return cls.from_pretrained(path)
    if issubclass(cls, (transformers.PreTrainedTokenizerBase, transformers.ImageProcessingMixin)):
        return cls.from_pretrained(path)
    if issubclass(cls, transformers.PreTrainedModel):
        return cls.from_pretrained(path, dtype=dtype)
    return cls.from_pretrained(path, torch_dtype=dtype)


def load_layout(location: str, layout: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Load every component of a layout from a folder or hub id. Returns ``{role: component}``."""
    folder = fetch(location)
    index = read_model_index(folder, layout)
    if layout == "karlo":
        check_karlo_sizes(folder, index)
    components = {}
    for name, role in LAYOUTS[layout].items():
        if name in index:
            components[name] = _load_one(folder, name, index[name], role, dtype)
    for key, value in index.items():  # non-component entries, e.g. the x4 upscaler's max_noise_level
        if not key.startswith("_") and key not in LAYOUTS[layout] and not isinstance(value, list):
            components[key] = value
    return components


# ------------------------------------------------------------------------------- a cascade's components
UPSCALER_PREFIX = "upscaler_"  # the cascade's names of the upscaler's components: upscaler_unet, upscaler_vae, ...
PIPELINE_CLASSES = {"x4": "StableDiffusionUpscalePipeline", "pixel": "PixelUpscalerPipeline"}


def load_components(config, dtype: torch.dtype) -> dict[str, Any]:
    """``UnCLIPCascade``'s constructor keywords for a ``unclip.config.ModelConfig``: Karlo's components, then the
    upscaler's (``upscaler_`` + their role) and its ``max_noise_level``. In float16 the x4 upscaler's VAE stays
    in float32: it overflows in float16 (black images), as in the reference pipeline."""
    components = load_layout(config.unclip, "karlo", dtype)
    if config.upscaler:
        layout = detect_upscaler_layout(config.upscaler)
        upscaler = load_layout(config.upscaler, layout, dtype)
        components["max_noise_level"] = upscaler.pop("max_noise_level", 350)
        if layout == "x4" and dtype == torch.float16:
            upscaler["vae"].to(torch.float32)
        components.update({UPSCALER_PREFIX + name: module for name, module in upscaler.items()})
    return components


def component_entry(component: Any) -> list[str]:
    """A component's model_index.json entry: ``[library, class name]``."""
    return [type(component).__module__.split(".")[0], type(component).__name__]


def write_model_index(folder: str | Path, class_name: str, entries: dict[str, Any]) -> Path:
    """``folder/model_index.json`` as diffusers writes it (sorted keys, indent 2, its version): the one writer of
    it, for ``save_pretrained``, the test replicas and the from-scratch architectures. ``entries``: component →
    ``[library, class]``, and other keys (``max_noise_level``, ``_unclip_layout``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": class_name, **entries, "_diffusers_version": diffusers.__version__}
    path = folder / "model_index.json"
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def write_scheduler(folder: str | Path, class_name: str, config: dict[str, Any]) -> list[str]:
    """A scheduler's ``scheduler_config.json``; returns its model_index.json entry."""
    write_json(Path(folder) / "scheduler_config.json", {"_class_name": class_name, **config})
    return ["diffusers", class_name]


def write_json(path: Path, content: dict[str, Any]) -> None:
    """A config file as diffusers writes it (sorted keys, indent 2), stamped with the installed version."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {**content, "_diffusers_version": diffusers.__version__}
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def save_layout(cascade, folder: Path, layout: str, prefix: str = "") -> None:
    """Write the cascade's components of ``layout`` (with ``prefix`` in the cascade) in that hub layout."""
    entries: dict[str, Any] = {}
    for name in LAYOUTS[layout]:
        component = getattr(cascade, prefix + name)
        if component is not None:
            component.save_pretrained(folder / name)
            entries[name] = component_entry(component)
    if layout == "karlo":
        variations = cascade.image_encoder is not None and cascade.prior is None
        class_name = "UnCLIPImageVariationPipeline" if variations else "UnCLIPPipeline"
    else:
        class_name = PIPELINE_CLASSES[layout]
    if layout == "x4":
        entries["max_noise_level"] = cascade.max_noise_level
    if layout == "pixel":
        entries["_unclip_layout"] = "pixel"
    write_model_index(folder, class_name, entries)


def stage_kinds(config) -> dict[str, Any]:
    """The kind of each stage the cascade of ``config`` will have, from its folders' model_index.json alone (no
    weights read): what ``unclip.plan.resolve`` checks a request against before anything is loaded."""
    from unclip.stages import KINDS

    index = read_model_index(fetch(config.unclip), "karlo")
    kinds = {kind.name: kind for kind in KINDS.values() if kind.layout == "karlo" and kind.name != "prior"}
    if "prior" in index:
        kinds = {"prior": KINDS["prior"], **kinds}
    if config.upscaler:
        kinds["sr1024"] = KINDS[detect_upscaler_layout(config.upscaler)]
    return kinds
