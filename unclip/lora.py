"""LoRA adapters for the cascade's stages (Hu et al. 2021): which layers each stage adapts by default, and what an
adapter and a fine-tuning run of each kind cost in memory.

    from unclip.lora import default_targets, lora_parameters, training_bytes
    targets = default_targets(pipe.decoder)            # ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", ...)
    lora_parameters(pipe.decoder, targets, rank=16)    # the adapter's parameter count at rank 16
    training_bytes(params, "lora", adapter=...)        # weights + gradients + optimizer state + EMA, in bytes

LoRA replaces a frozen layer's W x by W x + (α / r) B A x with A (r × in) and B (out × r) trained. For a Linear
layer that is r (in + out) parameters; for a k × k Conv2d (peft's form), A is a k × k conv to r channels and B a
1 × 1 conv back: r · in · k² / groups + out · r.

Default targets: a stage with attention adapts its attention projections (query, key, value, output, and the
decoder's added key/value projections of the text tokens), as diffusers' LoRA trainers do; a stage without any
(Karlo's 64→256 UNet and unclip's pixel 256→1024 UNet have no attention layers) adapts its ResNet blocks' 3 × 3
convolutions, the layers that hold most of its weights.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unclip.errors import UnclipError

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
RESNET = ("conv1", "conv2")
DEFAULT_RANK = 16


def _matches(name: str, target: str) -> bool:
    """peft's rule for a target given as a name: the module's full name is it, or ends with ``.`` + it."""
    return name == target or name.endswith("." + target)


def target_modules(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The Linear and Conv2d layers of ``model`` that ``targets`` names, by full name (a layer that already holds
    adapters counts as its base layer)."""
    found = {}
    for name, module in model.named_modules():
        layer = getattr(module, "base_layer", module)
        inner = name.endswith(".base_layer") or ".lora_" in name
        if inner or not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if any(_matches(name, t) for t in targets):
            found[name] = layer
    return found


def default_targets(model: torch.nn.Module) -> tuple[str, ...]:
    """The attention projections the model has; the ResNet convolutions when it has no attention."""
    found = tuple(t for t in ATTENTION if target_modules(model, (t,)))
    return found or RESNET


def lora_parameters(model: torch.nn.Module, targets: tuple[str, ...], rank: int = DEFAULT_RANK) -> int:
    """The parameter count of a rank-``rank`` LoRA adapter on ``targets`` (peft's A and B matrices)."""
    total = 0
    for module in target_modules(model, targets).values():
        if isinstance(module, torch.nn.Linear):
            total += rank * (module.in_features + module.out_features)
        else:
            kh, kw = module.kernel_size
            total += rank * module.in_channels * kh * kw // module.groups + module.out_channels * rank
    return total


# Bytes per trained parameter: weights, gradients, the optimizer's two moments, and unclip's EMA copy (fp32).
PER_PARAMETER = {
    "fp32 AdamW": {"weights": 4, "grads": 4, "optimizer": 8},
    # accelerate's bf16 mixed precision keeps fp32 master weights and gradients (autocast computes in bf16);
    # bitsandbytes' 8-bit AdamW keeps each moment in one byte (plus block statistics, under 1 %)
    "bf16 + 8-bit AdamW": {"weights": 4, "grads": 4, "optimizer": 2},
}
EMA_BYTES = 4


def training_bytes(
    trained: int, optimizer: str = "fp32 AdamW", frozen: int = 0, frozen_bytes: int = 4, ema: bool = True
) -> dict[str, int]:
    """Bytes of a run's weights, gradients, optimizer state and EMA for ``trained`` parameters under ``optimizer``
    (a key of ``PER_PARAMETER``) beside ``frozen`` parameters held at ``frozen_bytes`` each (a LoRA run's base
    weights: 2 in bf16 or fp16, 4 in fp32). Activations are not included: they depend on batch and resolution."""
    each = PER_PARAMETER[optimizer]
    out = {part: trained * size for part, size in each.items()}
    out["weights"] += frozen * frozen_bytes
    out["ema"] = trained * EMA_BYTES if ema else 0
    out["total"] = sum(out.values())
    return out


# --------------------------------------------------------------------------------------- adapter files
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' file name
INFO_KEY = "unclip_lora"  # safetensors metadata: {"component": .., "stage": .., "base": ..}
PEFT_KEY = "lora_adapter_metadata"  # diffusers' metadata key: the LoraConfig, its keys prefixed by the component
COMPONENTS = {"prior": "prior", "decoder": "decoder", "super_res_first": "sr256", "super_res_last": "sr256",
              "upscaler_unet": "sr1024"}  # fmt: skip
CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "target_modules")


@dataclass
class Adapter:
    """One LoRA adapter file: the component it adapts (and so its stage), its LoraConfig and its tensors (peft's
    keys, without the component prefix)."""

    path: Path
    component: str
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    base: str = ""

    @property
    def stage(self) -> str:
        return COMPONENTS[self.component]


def save_adapter(path: str | Path, module: torch.nn.Module, component: str, config: dict[str, Any],
                 adapter_name: str = "default", base: str = "") -> Path:  # fmt: skip
    """Write ``module``'s adapter as diffusers writes LoRA weights: safetensors, keys ``COMPONENT.<peft key>``,
    the LoraConfig in ``lora_adapter_metadata`` (keys prefixed the same way), plus unclip's component and base."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(module, adapter_name=adapter_name)
    tensors = {f"{component}.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    peft = {f"{component}.{k}": (sorted(v) if isinstance(v, (set, list, tuple)) else v) for k, v in config.items()}
    info = {"component": component, "stage": COMPONENTS[component], "base": base}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path, metadata={"format": "pt", PEFT_KEY: json.dumps(peft), INFO_KEY: json.dumps(info)})
    return path


def read_adapter(path: str | Path, weights: bool = True) -> Adapter:
    """An adapter file (or a folder holding ``pytorch_lora_weights.safetensors``), checked; ``weights=False`` reads
    its header alone (names, shapes, metadata: the check of ``--lora`` before a model loads), ``state`` empty."""
    from safetensors import safe_open

    path = Path(path).expanduser()
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise UnclipError(f"LoRA {path} does not exist: give an adapter file (.safetensors) or its folder")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if weights else {}
    except Exception as err:  # safetensors raises its own error types
        raise UnclipError(f"LoRA {path} is not a safetensors file ({type(err).__name__}): give an adapter file that "
                          "unclip's trainer wrote") from None  # fmt: skip
    prefixes = sorted({k.split(".", 1)[0] for k in shapes})
    info = json.loads(meta.get(INFO_KEY, "{}"))
    component = info.get("component") or (prefixes[0] if len(prefixes) == 1 else "")
    if component not in COMPONENTS or prefixes != [component]:
        raise UnclipError(f"LoRA {path} is not an adapter of an unclip stage (its weights are for "
                          f"{', '.join(prefixes)[:80] or 'nothing'}): give one trained for "
                          f"{', '.join(sorted(COMPONENTS))}")  # fmt: skip
    state = {k.split(".", 1)[1]: v for k, v in tensors.items()}
    peft = json.loads(meta.get(PEFT_KEY, "{}"))
    config = {k.split(".", 1)[1]: v for k, v in peft.items() if k.startswith(component + ".")}
    if "r" not in config:  # a file without its config: rank from the tensors, α = r, the adapted layers by name
        layers = {k.split(".", 1)[1].split(".lora_A")[0]: v[0] for k, v in shapes.items() if ".lora_A" in k}
        rank = max(layers.values(), default=1)
        config = {"r": rank, "lora_alpha": rank, "target_modules": sorted(layers)}
    return Adapter(path, component, {k: config[k] for k in CONFIG_KEYS if k in config}, state, info.get("base", ""))


def attach(module: torch.nn.Module, adapter: Adapter, name: str) -> None:
    """Add ``adapter`` to ``module`` under ``name`` (inactive until ``set_scales``); a mismatch of architecture is
    a one-line error and leaves the module as it was."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    missing = [t for t in adapter.config.get("target_modules", []) if not target_modules(module, (t,))]
    if missing:
        raise UnclipError(f"LoRA {adapter.path} adapts {', '.join(missing)}, which this model's {adapter.component} "
                          f"({type(module).__name__}) has not: it was made for another architecture")  # fmt: skip
    with warnings.catch_warnings():  # peft warns whenever a model gets a second adapter: that is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(LoraConfig(**adapter.config), module, adapter_name=name)
    try:
        loaded = set_peft_model_state_dict(module, adapter.state, adapter_name=name)
        unexpected = [k for k in getattr(loaded, "unexpected_keys", []) if "lora_" in k]
        if unexpected:
            raise RuntimeError(f"unexpected {unexpected[0]}")
    except RuntimeError as err:
        detach(module, name)
        first = str(err).strip().splitlines()[-1][:160]
        raise UnclipError(f"LoRA {adapter.path} does not fit this model's {adapter.component} ({first}): it was made "
                          "for another architecture or size") from None  # fmt: skip
    set_scales(module, {})


def _layers(module: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer)]


def detach(module: torch.nn.Module, name: str) -> None:
    for layer in _layers(module):
        if name in layer.lora_A:
            layer.delete_adapter(name)


def set_scales(module: torch.nn.Module, scales: dict[str, float]) -> None:
    """Make exactly the adapters of ``scales`` with a non-zero scale active, each at its scale (W x + s·(α/r) B A x);
    a scale of 0 switches an adapter off, so the model computes exactly what it did without it."""
    active = [name for name, scale in scales.items() if scale != 0]
    for layer in _layers(module):
        names = [name for name in active if name in layer.lora_A]
        for name in names:
            layer.set_scale(name, scales[name])
        layer.set_adapter(names)
        layer.requires_grad_(False)  # inference: peft's set_adapter makes the active ones trainable


# ------------------------------------------------------------------------------------------- the pipeline
def parse_scale(value: Any, what: str) -> float:
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise UnclipError(f"{what}: the scale must be a number, got {value!r} (e.g. style.safetensors:0.8)") from None
    if scale != scale or abs(scale) == float("inf"):
        raise UnclipError(f"{what}: the scale must be a finite number, got {value!r}")
    return scale


class LoraMixin:
    """``pipe.load_lora(path, scale)``, ``set_lora_scale``, ``fuse_lora``/``unfuse_lora``: adapters on any stage,
    several at once, each with its scale; each image's metadata names them (``lora_metadata``)."""

    def load_lora(self, path: str | Path, scale: float = 1.0, name: str | None = None) -> str:
        """Add the adapter of ``path`` to the stage it was trained for, at ``scale``; returns its name."""
        scale = parse_scale(scale, f"LoRA {path}")
        if self._lora_fused:
            raise UnclipError("the adapters are fused: call unfuse_lora() before loading another")
        adapter = read_adapter(path)
        module = getattr(self, adapter.component, None)
        if module is None:
            model = self.model_config.name or "(unnamed)"
            raise UnclipError(f"LoRA {adapter.path} adapts the {adapter.stage} stage ({adapter.component}), which "
                              f"model {model} has not: use it with a model that has")  # fmt: skip
        base = name or (adapter.path.parent.name if adapter.path.name == WEIGHT_NAME else adapter.path.stem)
        name = base
        for k in range(2, 1000):
            if name not in self._loras:
                break
            name = f"{base}-{k}"
        attach(module, adapter, name)
        self._loras[name] = {"name": name, "stage": adapter.stage, "component": adapter.component,
                             "path": str(adapter.path), "scale": scale}  # fmt: skip
        self._apply_lora_scales(adapter.component)
        return name

    def set_lora_scale(self, name: str, scale: float) -> None:
        """The scale of a loaded adapter (by name, or the path it was loaded from); 0 switches it off exactly."""
        found = [n for n, lora in self._loras.items() if name in (n, lora["path"])]
        if not found:
            raise UnclipError(f"no LoRA adapter {name!r} is loaded; loaded: {', '.join(self._loras) or 'none'}")
        if self._lora_fused:
            raise UnclipError("the adapters are fused: call unfuse_lora() before changing a scale")
        self._loras[found[0]]["scale"] = parse_scale(scale, f"LoRA {name}")
        self._apply_lora_scales(self._loras[found[0]]["component"])

    def fuse_lora(self) -> None:
        """Fold the active adapters, at their scales, into the weights: no extra cost a step."""
        for component in {lora["component"] for lora in self._loras.values()}:
            for layer in _layers(getattr(self, component)):
                if layer.active_adapters:
                    layer.merge(adapter_names=list(layer.active_adapters))
        self._lora_fused = True

    def unfuse_lora(self) -> None:
        for component in {lora["component"] for lora in self._loras.values()}:
            for layer in _layers(getattr(self, component)):
                layer.unmerge()
        self._lora_fused = False

    def lora_metadata(self) -> list[dict[str, Any]]:
        """Each loaded adapter: name, stage, scale and file."""
        return [{k: lora[k] for k in ("name", "stage", "scale", "path")} for lora in self._loras.values()]

    def _apply_lora_scales(self, component: str) -> None:
        mine = {n: lora["scale"] for n, lora in self._loras.items() if lora["component"] == component}
        set_scales(getattr(self, component), mine)
