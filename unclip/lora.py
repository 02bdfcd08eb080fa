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

import torch

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
RESNET = ("conv1", "conv2")
DEFAULT_RANK = 16


def _matches(name: str, target: str) -> bool:
    """peft's rule for a target given as a name: the module's full name is it, or ends with ``.`` + it."""
    return name == target or name.endswith("." + target)


def target_modules(model: torch.nn.Module, targets: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    """The Linear and Conv2d layers of ``model`` that ``targets`` names, by full name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and any(_matches(name, t) for t in targets)
    }


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
