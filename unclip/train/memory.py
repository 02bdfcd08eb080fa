"""Memory-lean training: gradient checkpointing for every stage's model and the optimizer (AdamW, or bitsandbytes'
8-bit AdamW on CUDA). What each choice holds per stage: ``scripts/finetune_memory.py``.

    enable_gradient_checkpointing(objective)            # config.gradient_checkpointing
    optimizer = build_optimizer(params, config.optim, device)   # optim.kind: adamw | adamw8bit
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from unclip.errors import UnclipError
from unclip.train.config import OptimConfig

OPTIMIZERS = ("adamw", "adamw8bit")


def _checkpointed(block: torch.nn.Module) -> None:
    """Recompute ``block``'s activations in the backward pass instead of keeping them (its weights and state dict
    stay as they are: only its ``forward`` is wrapped)."""
    forward = block.forward

    def wrapped(*args, **kwargs):
        if not (torch.is_grad_enabled() and block.training):
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    block.forward = wrapped


def enable_gradient_checkpointing(objective: torch.nn.Module) -> None:
    """The stage's model recomputes activations block by block: diffusers' own switch for the UNets; for the
    prior, which diffusers gives none, each transformer block is checkpointed."""
    for name in ("prior", "decoder", "unet"):
        model = getattr(objective, name, None)
        if model is None:
            continue
        if getattr(model, "_supports_gradient_checkpointing", False):
            model.enable_gradient_checkpointing()
        elif hasattr(model, "transformer_blocks"):
            for block in model.transformer_blocks:
                _checkpointed(block)
        else:
            raise UnclipError(f"gradient_checkpointing: the {name} ({type(model).__name__}) has no blocks to "
                              "checkpoint; set gradient_checkpointing=false")  # fmt: skip


def build_optimizer(params: list[torch.nn.Parameter], optim: OptimConfig, device: torch.device):
    kwargs = dict(lr=optim.lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay)
    if optim.kind == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if device.type != "cuda":
        raise UnclipError("optim.kind=adamw8bit needs a CUDA GPU (bitsandbytes' 8-bit AdamW): use optim.kind=adamw on "
                          f"{device.type}")  # fmt: skip
    try:
        import bitsandbytes
    except ImportError:
        raise UnclipError("optim.kind=adamw8bit needs bitsandbytes: pip install bitsandbytes") from None
    return bitsandbytes.optim.AdamW8bit(params, **kwargs)
