"""Typed training configs: a YAML file plus ``key=value`` overrides (dotted for nested keys).

    accelerate launch scripts/train.py --config configs/train/tiny-decoder.yaml max_steps=200 data.path=my/images

Every key is a dataclass field below; an unknown key is a one-line error listing the valid ones. Values in
overrides are parsed as YAML (``lr=3e-5``, ``resume=latest``, ``validation.prompts=[a cat, a dog]``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unclip.errors import UnclipError
from unclip.stages import STAGES, first_of

MIXED_PRECISION = ("no", "fp16", "bf16")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


@dataclass
class DataConfig:
    path: str = ""  # an imagefolder with metadata.jsonl, or webdataset tar shards
    clip: str = ""  # CLIP image encoder for z_i (prior, decoder): openclip:MODEL/PRETRAINED, hf:ID_OR_FOLDER, tiny:DIM
    resolution: int = 0  # images are resized to this; 0 = the stage's own size (64, 256 or 1024)
    num_workers: int = 0
    use_cache: bool = True  # CLIP embeddings from `unclip embed DATA --clip NAME` when present
    # upsamplers: a folder of each image's low-res twin (scripts/make_low_res.py), the input the stage meets in the
    # cascade, to train from instead of (sr.paired of the time) the image's own downsampled, blurred copy
    low_res: str = ""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0  # linear warm-up, then constant
    max_grad_norm: float = 1.0  # 0 = no clipping
    kind: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA only: the moments in 8 bits)


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.9999
    warmup: bool = True  # diffusers' EMA warm-up: decay grows with the step count


@dataclass
class PriorOptions:
    text_drop: float = 0.1  # the caption is replaced by "" this often, for classifier-free guidance


@dataclass
class DecoderOptions:
    image_embed_drop: float = 0.1  # z_i replaced by text_proj's learned null embedding (DALL·E 2 §2.1)
    caption_drop: float = 0.5  # caption replaced by "" (DALL·E 2 §2.1)
    learned_variance: bool | None = None  # None: when the decoder has 6 output channels (Karlo's has)
    vlb_weight: float = 0.001  # λ of the hybrid loss L_simple + λ L_vlb (Nichol & Dhariwal 2021, eq. 16)
    pyramid_noise: float = 0.0  # > 0: multi-resolution training noise with this discount (0.8 for flat images)
    edge_weight: float = 0.0  # > 0: each pixel's ε error weighed 1 + this × x_0's local contrast (as sr.edge_weight)
    # > 0: each image's error weighed (this / c)² when its colour range c (the shape's distance from the background,
    # as contrast measures it) is below this: a near-colour pair's wrong pixel (orange on red) weighed up
    contrast_ref: float = 0.0


@dataclass
class SuperResOptions:
    crop_fraction: float = 0.25  # random crops of this fraction of the target size (DALL·E 2, Appendix C)
    # > 1: draw this many crops of each image and train on the one with the most detail (the largest mean absolute
    # difference between neighbouring pixels): on flat pictures most random crops hold no edge to learn from
    crop_tries: int = 1
    noise_level: int = -1  # augmentation of the low-res input; -1 = the model config's inference level
    blur_sigma: tuple[float, float] = (0.4, 0.6)  # Gaussian blur of the low-res input, σ drawn uniformly
    # Gaussian noise (σ, of [-1, 1] images) and JPEG quality of the low-res input, drawn uniformly; an empty list:
    # the stage's own (DALL·E 2 Appendix C: none for 64→256, σ ≤ 0.04 and quality 30-95 for 256→1024), [0, 0]: none
    noise_sigma: tuple[float, ...] = ()
    jpeg_quality: tuple[int, ...] = ()
    # the per-pixel error: "l2" (squared: the prediction is the posterior mean) or "l1" (absolute: its median, which
    # on a two-colour edge is one colour or the other, not the blend; L1 is the usual loss of regression upsamplers)
    loss: str = "l2"
    # [low, high): the training timesteps, drawn uniformly; empty: all of them (sr.train=last: the final step's).
    # A stage sampled in one step from pure noise (start 1000, 1 step) only ever meets the top ones.
    timesteps: tuple[int, ...] = ()
    # > 0: each pixel's error weighed 1 + edge_weight × the target's local contrast there (the largest neighbouring-
    # pixel difference within a pixel, 0 on a flat colour, about 1 across an edge between far colours), the loss
    # then normalised by the weights: a small upsampler's capacity spent on the edges its metric reads; 0: uniform
    edge_weight: float = 0.0
    paired: float = 1.0  # with data.low_res: the fraction of crops whose input is their twin (the rest degrade)
    train: str = "both"  # sr256 only: "first", "last" (Karlo's final-step model) or "both" (one model for both)
    text_drop: float = 0.1  # the x4 latent upscaler's caption dropout (its guidance's empty prompt)


@dataclass
class LoraOptions:
    rank: int = 0  # > 0: train a LoRA adapter of this rank on the stage, its base frozen; 0: full fine-tuning
    alpha: float = 0.0  # LoRA's α (the update is scaled by α / rank); 0: α = rank
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)  # layer names; empty: unclip.lora.default_targets of the stage


@dataclass
class ValidationConfig:
    every: int = 0  # steps; 0 = never
    prompts: list[str] = field(default_factory=lambda: ["a red circle on a blue background"])
    steps: int = 10  # sampling steps per stage for the validation images
    seed: int = 0


@dataclass
class TrainConfig:
    stage: str = "decoder"  # prior | decoder | sr256 | sr1024
    output_dir: str = "runs/unclip"
    init_from: str | None = None  # a model config, preset or folder to fine-tune; None = from scratch
    architecture: str = "tiny"  # from scratch: the sizes to build (see unclip.train.architectures)
    text_encoder: str | None = None  # from scratch: a folder with text_encoder/ and tokenizer/ to build around
    data: DataConfig = field(default_factory=DataConfig)
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False  # recompute the stage's activations in the backward pass: less memory
    # the convolutional models in NHWC (channels-last) for the whole run; on CPU oneDNN trains the upsamplers
    # faster in it (the demo's 256→1024 stage 24 % a step), not the 64 px decoder. Off: NCHW, as the reference.
    channels_last: bool = False
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    min_snr_gamma: float = 0.0  # Min-SNR-γ loss weighting (Hang et al. 2023); 0 = off
    # what the trained stage's model predicts: epsilon, sample (x_0) or v_prediction; None: its scheduler's own.
    # Written into the exported scheduler config, so sampling follows; for a model trained from scratch.
    prediction_type: str | None = None
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 3
    resume: str | None = None  # a checkpoint folder, or "latest" in output_dir/checkpoints
    log_every: int = 10
    tensorboard: bool = True
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    prior: PriorOptions = field(default_factory=PriorOptions)
    decoder: DecoderOptions = field(default_factory=DecoderOptions)
    sr: SuperResOptions = field(default_factory=SuperResOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)

    def validate(self) -> None:
        checks = [
            (self.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}"),
            (bool(self.data.path), "data.path is required: an imagefolder with metadata.jsonl, or tar shards"),
            (self.max_steps >= 1, f"max_steps must be ≥ 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be ≥ 1"),
            (self.mixed_precision in MIXED_PRECISION, f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be ≥ 1, got {self.checkpoint_every}"),
            (self.optim.lr > 0, f"optim.lr must be > 0, got {self.optim.lr}"),
            (self.optim.kind in ("adamw", "adamw8bit"), f"optim.kind: adamw or adamw8bit, not {self.optim.kind!r}"),
            (self.lora.rank >= 0, f"lora.rank must be ≥ 0 (0: full fine-tuning), got {self.lora.rank}"),
            (0 <= self.lora.dropout < 1, f"lora.dropout must be in [0, 1), got {self.lora.dropout}"),
            (
                0 <= self.decoder.pyramid_noise < 1,
                f"decoder.pyramid_noise must be in [0, 1), got {self.decoder.pyramid_noise}",
            ),
            (
                self.prediction_type in (None, *PREDICTION_TYPES),
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}",
            ),
            (0 < self.sr.crop_fraction <= 1, f"sr.crop_fraction must be in (0, 1], got {self.sr.crop_fraction}"),
            (
                self.sr.timesteps == ()
                or (len(self.sr.timesteps) == 2 and 0 <= self.sr.timesteps[0] < self.sr.timesteps[1]),
                f"sr.timesteps must be [low, high) with 0 ≤ low < high, got {list(self.sr.timesteps)}",
            ),
            (self.sr.crop_tries >= 1, f"sr.crop_tries must be ≥ 1, got {self.sr.crop_tries}"),
            (0 <= self.sr.paired <= 1, f"sr.paired must be in [0, 1], got {self.sr.paired}"),
            (
                not self.data.low_res or not first_of(self.stage).trains_on_clip,
                f"data.low_res is the upsamplers' low-res input; stage {self.stage} takes none: leave it out",
            ),
            (self.sr.loss in ("l2", "l1"), f"sr.loss must be l2 or l1, got {self.sr.loss!r}"),
            (self.sr.edge_weight >= 0, f"sr.edge_weight must be ≥ 0 (0: uniform), got {self.sr.edge_weight}"),
            (
                self.decoder.edge_weight >= 0,
                f"decoder.edge_weight must be ≥ 0 (0: uniform), got {self.decoder.edge_weight}",
            ),
            (
                self.decoder.contrast_ref >= 0,
                f"decoder.contrast_ref must be ≥ 0 (0: every image alike), got {self.decoder.contrast_ref}",
            ),
            (0 <= self.sr.text_drop <= 1, f"sr.text_drop must be in [0, 1], got {self.sr.text_drop}"),
            (
                len(self.sr.blur_sigma) == 2 and 0 < self.sr.blur_sigma[0] <= self.sr.blur_sigma[1],
                f"sr.blur_sigma must be [low, high] with 0 < low ≤ high, got {list(self.sr.blur_sigma)}",
            ),
            (
                self.sr.noise_sigma == ()
                or (len(self.sr.noise_sigma) == 2 and 0 <= self.sr.noise_sigma[0] <= self.sr.noise_sigma[1]),
                f"sr.noise_sigma must be [low, high] with 0 ≤ low ≤ high, got {list(self.sr.noise_sigma)}",
            ),
            (
                self.sr.jpeg_quality == ()
                or (len(self.sr.jpeg_quality) == 2 and 0 <= self.sr.jpeg_quality[0] <= self.sr.jpeg_quality[1] <= 100),
                f"sr.jpeg_quality must be [low, high] in 0-100 (0, 0: no JPEG), got {list(self.sr.jpeg_quality)}",
            ),
            (
                self.sr.train in ("first", "last", "both"),
                f"sr.train must be first, last or both, got {self.sr.train!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise UnclipError(message)
        text_stage = first_of(self.stage).trains_on_clip
        if text_stage and self.architecture == "demo" and not (self.init_from or self.text_encoder):
            raise UnclipError(
                f"stage {self.stage} from scratch on architecture demo needs text_encoder=FOLDER, a trained "
                "CLIP text tower with text_encoder/ and tokenizer/ (scripts/train_demo_clip.py writes one)"
            )
        if text_stage and not self.data.clip:
            raise UnclipError(
                f"stage {self.stage} needs data.clip, the CLIP image encoder of z_i "
                "(e.g. hf:openai/clip-vit-large-patch14)"
            )


def valid_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        kind = _field_type(cls, f.name)
        if dataclasses.is_dataclass(kind):
            keys += valid_keys(kind, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check ``value`` against a field type; ints become floats where a float is asked."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except UnclipError:
                continue
        raise UnclipError(f"{key}: expected {kind}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            if origin is not list:
                raise UnclipError(f"{key}: expected a list, got {value!r}")
            value = [value]
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                raise UnclipError(f"{key}: expected {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
        items = [_coerce(v, args[0] if args else Any, key) for v in value]
        return tuple(items) if origin is tuple else items
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise UnclipError(f"{key}: expected {kind.__name__}, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UnclipError(f"unknown config key '{prefix}{unknown[0]}'; valid keys: {', '.join(valid_keys())}")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        kind, value = _field_type(cls, f.name), raw[f.name]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise UnclipError(f"{prefix}{f.name} must be a mapping, got {value!r}")
            values[f.name] = _build(kind, value, f"{prefix}{f.name}.")
        else:
            values[f.name] = _coerce(value, kind, prefix + f.name)
    return cls(**values)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}``; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UnclipError(f"override '{item}' is not key=value (e.g. max_steps=100 or optim.lr=1e-5)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UnclipError(f"override '{item}': {part} is not a section")
        node[leaf] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_train_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a training YAML (or none: all defaults) and apply ``key=value`` overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            presets = ", ".join(sorted(p.stem for p in train_presets_dir().glob("*.yaml")))
            raise UnclipError(f"training config {path} does not exist; presets in configs/train/: {presets}")
        try:
            raw = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as err:
            raise UnclipError(f"{file}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise UnclipError(f"{file}: a training config must be a YAML mapping")
    config = _build(TrainConfig, _merge(raw, parse_overrides(list(overrides))))
    config.validate()
    return config


def train_presets_dir() -> Path:
    from unclip.config import presets_dir

    return presets_dir() / "train"


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
