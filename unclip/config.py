"""Typed model configs, loaded from YAML.

A model config names where the weights are and the default settings of each of the four stages::

    unclip: kakaobrain/karlo-v1-alpha                      # hub id, or a local folder in that repo's layout
    upscaler: stabilityai/stable-diffusion-x4-upscaler     # optional: without it the cascade ends at 256 px
    image_encoder: hf:openai/clip-vit-large-patch14         # optional: the CLIP image tower of z_i (variations)
    prior:   {steps: 25, guidance: 4.0, scheduler: default}
    decoder: {steps: 25, guidance: 8.0, scheduler: default}
    sr256:   {steps: 7, scheduler: default, noise_level: 0}
    sr1024:  {steps: 75, guidance: 9.0, scheduler: default, noise_level: 20}

`load_model_config` takes a preset name (a file of configs/ without ``.yaml``) or a path to a YAML file.
Relative folders in a YAML file are read relative to that file (also after ``hf:`` in ``image_encoder``).
``image_encoder`` is a name of ``unclip.clip_models`` (``hf:ID_OR_FOLDER``, ``openclip:MODEL/PRETRAINED``); an
image-variations repo (karlo-v1-alpha-image-variations) as ``unclip:`` brings its own and needs none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unclip.errors import UnclipError
from unclip.settings import StageSettings, replace
from unclip.stages import STAGES, defaults, settings_of


def karlo_defaults() -> dict[str, StageSettings]:
    """The reference pipelines' defaults: UnCLIPPipeline (Karlo) and StableDiffusionUpscalePipeline."""
    return defaults()


@dataclass
class ModelConfig:
    """Where a cascade's weights are, and its default per-stage settings."""

    unclip: str
    upscaler: str | None = None
    stages: dict[str, StageSettings] = field(default_factory=karlo_defaults)
    name: str = ""
    image_encoder: str | None = None  # a CLIP image encoder name (unclip.clip_models): images → z_i
    lora: list[dict[str, Any]] = field(default_factory=list)  # LoRA adapters: [{path, scale}] (unclip.lora)

    @property
    def max_size(self) -> int:
        return 1024 if self.upscaler else 256

    def to_yaml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unclip": self.unclip}
        if self.upscaler:
            out["upscaler"] = self.upscaler
        if self.image_encoder:
            out["image_encoder"] = self.image_encoder
        if self.lora:
            out["lora"] = [dict(entry) for entry in self.lora]
        for stage, settings in self.stages.items():
            out[stage] = {name: getattr(settings, name) for name in settings_of(stage)}
        return out


def presets_dir() -> Path:
    """configs/ of a source checkout, or the copy packed into the wheel."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def _resolve_location(value: Any, key: str, base: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UnclipError(f"'{key}' must be a hub id or a folder, got {value!r}")
    value = value.strip()
    expanded = Path(value).expanduser()
    if expanded.is_absolute() or value.startswith((".", "~")) or (base / expanded).exists():
        return str(expanded if expanded.is_absolute() else (base / expanded).resolve())
    return value  # a hub id such as kakaobrain/karlo-v1-alpha


def _stage_from_dict(stage: str, raw: Any, default: StageSettings, source: str) -> StageSettings:
    if raw is None:
        return default
    if not isinstance(raw, dict):
        raise UnclipError(f"{source}: '{stage}' must be a mapping such as {{steps: 25}}, got {raw!r}")
    valid = settings_of(stage)
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise UnclipError(f"{source}: unknown key {stage}.{unknown[0]}; valid keys: {', '.join(valid)}")
    return replace(default, raw, f"{source}: {stage}")


def model_config_from_dict(raw: Any, *, source: str = "<dict>", base: Path | None = None) -> ModelConfig:
    """Build a ModelConfig from a parsed YAML mapping, with one-line errors for every mistake."""
    if not isinstance(raw, dict):
        raise UnclipError(f"{source}: a model config must be a YAML mapping with at least 'unclip:'")
    valid = ["unclip", "upscaler", "image_encoder", "lora", *STAGES]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise UnclipError(f"{source}: unknown key '{unknown[0]}'; valid keys: {', '.join(valid)}")
    if "unclip" not in raw:
        raise UnclipError(f"{source}: missing 'unclip:' (a hub id such as kakaobrain/karlo-v1-alpha, or a folder)")
    base = base or Path.cwd()
    defaults = karlo_defaults()
    upscaler = raw.get("upscaler")
    image_encoder = raw.get("image_encoder")
    return ModelConfig(
        unclip=_resolve_location(raw["unclip"], "unclip", base),
        upscaler=_resolve_location(upscaler, "upscaler", base) if upscaler else None,
        stages={s: _stage_from_dict(s, raw.get(s), defaults[s], source) for s in STAGES},
        name=source,
        image_encoder=_resolve_image_encoder(image_encoder, base, source) if image_encoder else None,
        lora=_loras(raw.get("lora"), base, source),
    )


def _loras(raw: Any, base: Path, source: str) -> list[dict[str, Any]]:
    """``lora: [{path: adapter.safetensors, scale: 0.8}, ...]`` (or plain paths), paths relative to the YAML."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UnclipError(f"{source}: 'lora' must be a list such as [{{path: style.safetensors, scale: 0.8}}]")
    out = []
    for entry in raw:
        entry = {"path": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or set(entry) - {"path", "scale"}:
            raise UnclipError(f"{source}: each lora entry is {{path: FILE, scale: NUMBER}}, got {entry!r}")
        scale = entry.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise UnclipError(f"{source}: lora {entry['path']}: the scale must be a number, got {scale!r}")
        path = Path(entry["path"]).expanduser()
        out.append({"path": str(path if path.is_absolute() else (base / path).resolve()), "scale": float(scale)})
    return out


def _resolve_image_encoder(value: Any, base: Path, source: str) -> str:
    """``hf:FOLDER`` relative to the YAML file; other names (hub ids, open_clip names) as they are."""
    from unclip.clip_models import parse_clip_name

    if not isinstance(value, str):
        raise UnclipError(f"{source}: 'image_encoder' must be a CLIP name such as hf:openai/clip-vit-large-patch14")
    try:
        prefix, rest = parse_clip_name(value.strip())
    except UnclipError as error:
        raise UnclipError(f"{source}: image_encoder: {error}") from None
    if prefix == "hf":
        rest = _resolve_location(rest, "image_encoder", base)
    return f"{prefix}:{rest}"


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A preset by name (``karlo-x4``), a YAML file, a folder holding ``model.yaml`` (what ``save_pretrained`` and
    the trainer write), or a folder or hub id in Karlo's layout (``kakaobrain/karlo-v1-alpha``: Karlo's defaults)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir() and (path / "model.yaml").is_file():
        path = path / "model.yaml"
    elif path.is_dir() and (path / "model_index.json").is_file() or _looks_like_hub_id(text):
        return ModelConfig(unclip=str(path.resolve()) if path.is_dir() else text, name=text)
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise UnclipError(
                f"model config {text} does not exist; give a YAML file or one of: {', '.join(preset_names())}"
            )
    else:
        path = presets_dir() / f"{text}.yaml"
        if not path.is_file():
            raise UnclipError(
                f"unknown model '{text}'; presets: {', '.join(preset_names())} (or a model YAML file, a folder "
                "written by save_pretrained, or a hub id in Karlo's layout)"
            )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UnclipError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    config = model_config_from_dict(raw, source=str(path), base=path.parent)
    config.name = path.stem if path.parent == presets_dir() else str(path)
    return config


def _looks_like_hub_id(text: str) -> bool:
    """``owner/name`` that is not a local path: a Hugging Face Hub repository."""
    parts = text.split("/")
    local = text.startswith((".", "~")) or text.endswith((".yaml", ".yml")) or Path(text).exists()
    return len(parts) == 2 and all(parts) and not local


def save_model_config(config: ModelConfig, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    return path
