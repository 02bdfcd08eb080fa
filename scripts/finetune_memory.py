"""What fine-tuning each stage of the real cascade holds in memory, computed from the real configs on CPU (issue 20).

    python scripts/finetune_memory.py                          # ../shared/reference/pretrained-configs, rank 16
    python scripts/finetune_memory.py --rank 8 --json out.json

Builds Karlo and the SD x4 upscaler at their real sizes on PyTorch's meta device (shapes only, no memory), then
for each stage's trained modules: parameters; bytes of weights + gradients + optimizer state + EMA for full
fine-tuning with fp32 AdamW and with bf16 mixed precision + 8-bit AdamW; the LoRA adapter on the stage's default
targets (``unclip.lora.default_targets``) at ``--rank`` and its run's bytes (base frozen in bf16, adapter trained
with fp32 AdamW and EMA); and the frozen models the stage's training runs beside it (bf16). Activations are not
included (they depend on batch and resolution: measured on a GPU). Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GB = 1024**3

# stage → (the modules full fine-tuning trains, the module LoRA adapts, the frozen models its training runs)
STAGES = {
    "prior": (("prior",), "prior", ("text_encoder", "CLIP ViT-L/14 image tower")),
    "decoder": (("decoder", "text_proj"), "decoder", ("text_encoder", "CLIP ViT-L/14 image tower")),
    "sr256": (("super_res_first",), "super_res_first", ()),
    "sr1024": (("upscaler_unet",), "upscaler_unet", ("upscaler_vae", "upscaler_text_encoder")),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def image_tower(configs: Path) -> int:
    """CLIP ViT-L/14's vision tower with projection (the z_i of the prior's and decoder's training data)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    config = json.loads((configs / "clip-vit-large-patch14" / "config.json").read_text())
    vision = CLIPVisionConfig(**{"projection_dim": config["projection_dim"], **config["vision_config"]})
    with torch.device("meta"):
        return count(CLIPVisionModelWithProjection(vision))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=Path, default=ROOT.parent / "shared" / "reference" / "pretrained-configs")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from unclip.benchmarking import full_size_cascade
    from unclip.lora import default_targets, lora_parameters, training_bytes

    pipe = full_size_cascade(args.configs, torch.float32, "meta")
    tower = image_tower(args.configs)
    rows = []
    for stage, (trained, adapted, frozen_models) in STAGES.items():
        params = sum(count(getattr(pipe, name)) for name in trained)
        targets = default_targets(getattr(pipe, adapted))
        adapter = lora_parameters(getattr(pipe, adapted), targets, args.rank)
        frozen = sum(tower if name.startswith("CLIP") else count(getattr(pipe, name)) for name in frozen_models)
        base = count(getattr(pipe, adapted))
        rows.append({
            "stage": stage, "trained": "+".join(trained), "parameters": params,
            "full_fp32_adamw": training_bytes(params, "fp32 AdamW")["total"],
            "full_bf16_8bit_adamw": training_bytes(params, "bf16 + 8-bit AdamW")["total"],
            "lora_targets": list(targets), "lora_rank": args.rank, "lora_parameters": adapter,
            "lora": training_bytes(adapter, "fp32 AdamW", frozen=base, frozen_bytes=2)["total"],
            "frozen_models": list(frozen_models), "frozen_bf16": 2 * frozen,
        })  # fmt: skip
    print(
        f"| stage | trained | parameters | full, fp32 AdamW + EMA | full, bf16 + 8-bit AdamW + EMA | "
        f"LoRA r={args.rank}: targets | adapter | LoRA run (bf16 base) | frozen beside it (bf16) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sizes = ("full_fp32_adamw", "full_bf16_8bit_adamw", "lora", "frozen_bf16")
        gib = {key: f"{r[key] / GB:.2f} GiB" for key in sizes}
        print(
            f"| {r['stage']} | {r['trained']} | {r['parameters'] / 1e6:.1f} M | {gib['full_fp32_adamw']} | "
            f"{gib['full_bf16_8bit_adamw']} | {', '.join(r['lora_targets'])} | {r['lora_parameters'] / 1e6:.2f} M | "
            f"{gib['lora']} | {gib['frozen_bf16']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
