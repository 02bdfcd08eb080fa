"""LoRA training (``lora.rank > 0``): the stage's model gets a peft adapter, everything else is frozen, and the
run's result is the adapter file plus a model.yaml naming the base model and it.

    adapted = add_training_adapter(objective, cascade, config)   # before the optimizer sees the parameters
    export_adapter(adapted, cascade, config)                     # output_dir/pytorch_lora_weights.safetensors
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unclip.errors import UnclipError
from unclip.lora import COMPONENTS, WEIGHT_NAME, default_targets, save_adapter, target_modules
from unclip.train.config import TrainConfig

ADAPTER = "default"  # peft's adapter name during training


@dataclass
class Adapted:
    component: str  # the cascade attribute that holds the adapted model (decoder, prior, super_res_first, ...)
    module: torch.nn.Module
    config: dict[str, Any]  # peft's LoraConfig keywords


def _component(objective: torch.nn.Module, cascade) -> tuple[str, torch.nn.Module]:
    """The stage's model inside the objective, and its name in the cascade."""
    module = next((getattr(objective, a) for a in ("prior", "decoder", "unet") if hasattr(objective, a)), None)
    for name in COMPONENTS:
        if module is not None and getattr(cascade, name, None) is module:
            return name, module
    raise UnclipError(f"stage {objective.stage} has no model a LoRA adapter can train")


def add_training_adapter(objective: torch.nn.Module, cascade, config: TrainConfig) -> Adapted | None:
    """Freeze the objective and add a fresh adapter (seeded by ``config.seed``) to its stage's model; None for full
    fine-tuning."""
    options = config.lora
    if options.rank == 0:
        return None
    from peft import LoraConfig, inject_adapter_in_model

    component, module = _component(objective, cascade)
    targets = list(options.targets) or list(default_targets(module))
    missing = [t for t in targets if not target_modules(module, (t,))]
    if missing:
        defaults = ", ".join(default_targets(module))
        raise UnclipError(f"lora.targets: {', '.join(missing)} name no Linear or Conv2d layer of the {component} "
                          f"({type(module).__name__}): leave lora.targets out for {defaults}")  # fmt: skip
    lora = {"r": options.rank, "lora_alpha": options.alpha or options.rank, "lora_dropout": options.dropout,
            "target_modules": targets}  # fmt: skip
    objective.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # peft draws A with the global generator: the run's seed decides it
        torch.manual_seed(config.seed)
        inject_adapter_in_model(LoraConfig(**lora), module, adapter_name=ADAPTER)
    return Adapted(component, module, lora)


def export_adapter(adapted: Adapted, cascade, config: TrainConfig) -> Path:
    """``output_dir/pytorch_lora_weights.safetensors`` (the module holds the weights to save: the EMA's) and
    ``output_dir/model.yaml``, the base model's config with the adapter added to its ``lora`` list; returns the
    latter."""
    from unclip.config import save_model_config

    output = Path(config.output_dir)
    base = cascade.model_config
    path = save_adapter(output / WEIGHT_NAME, adapted.module, adapted.component, adapted.config, ADAPTER,
                        base=config.init_from or base.name)  # fmt: skip
    model = dataclasses.replace(base, lora=[*base.lora, {"path": path.name, "scale": 1.0}])
    return save_model_config(model, output / "model.yaml")
