"""Peak GPU memory of unclip's own trainer on the real-size cascade: a few steps of each fine-tuning preset (issue 20).

    python scripts/train_memory.py                                   # GPU: full-size random-weight replicas
    python scripts/train_memory.py --presets karlo-decoder-lora --batch 1 8 --json out.json
    python scripts/train_memory.py --tiny --presets tiny-decoder --batch 1 --steps 1    # CPU smoke test (CI)

For each preset of configs/train/ (default: every Karlo one) and batch size, `unclip.train.trainer.train` runs
``--steps`` optimizer steps exactly as `accelerate launch scripts/train.py --config PRESET` would (the preset's
mixed precision, optimizer, EMA, LoRA), on a small shapes dataset written first, with its model replaced by the
real configs' modules with random weights (``unclip.benchmarking.full_size_cascade``, built on the GPU: speed and
memory do not depend on weight values) and, where it learns from CLIP image embeddings, a random CLIP ViT-L/14
image tower saved beside it (``data.clip``). Full fine-tuning presets are measured a second time with
``gradient_checkpointing=true``. The peak is torch.cuda.max_memory_allocated over the run, which the trainer also
writes to its train_log.jsonl; model loading, checkpoints and export are left out. Prints a markdown row per run
for docs/benchmarks.md and rewrites ``--json`` after each (a run cut short keeps its rows).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from unclip.errors import UnclipError, run_entry_point  # noqa: E402

KARLO = ("karlo-prior", "karlo-prior-lora", "karlo-decoder", "karlo-decoder-lora", "karlo-sr256", "karlo-x4-lora")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", type=Path, default=ROOT.parent / "shared" / "reference" / "pretrained-configs",
                   help="the real repos' configs (Karlo, the x4 upscaler, CLIP ViT-L/14)")  # fmt: skip
    p.add_argument("--presets", nargs="+", default=list(KARLO), help="training presets of configs/train/")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=3, help="optimizer steps a run (the peak comes in the first)")
    p.add_argument("--tiny", action="store_true", help="tiny replicas on this machine (a smoke test: no memory)")
    p.add_argument("--json", type=Path, help="write the rows here")
    return p.parse_args(argv)


def random_clip_vision(configs: Path, folder: Path) -> str:
    """CLIP ViT-L/14's image tower with projection, random weights, as an ``hf:`` folder for data.clip."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    source = configs / "clip-vit-large-patch14"
    full = json.loads((source / "config.json").read_text())
    vision = CLIPVisionConfig(**{**full["vision_config"], "projection_dim": full["projection_dim"]})
    CLIPVisionModelWithProjection(vision).save_pretrained(folder)
    CLIPImageProcessor.from_pretrained(source).save_pretrained(folder)
    return f"hf:{folder}"


def datasets(root: Path) -> dict[int, Path]:
    """Shapes pictures with captions at 256 and 1024 px (the crops and CLIP inputs every stage trains on)."""
    from unclip.demo.shapes import write_dataset

    out = {}
    for size in (256, 1024):
        write_dataset(root / f"shapes-{size}", 16, size=size, progress=False)
        out[size] = root / f"shapes-{size}"
    return out


def preset_path(name: str) -> Path:
    """configs/train/NAME.yaml, or a one-line error listing the presets."""
    from unclip.train.config import train_presets_dir

    path = train_presets_dir() / f"{name}.yaml"
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in train_presets_dir().glob("*.yaml")))
        raise UnclipError(f"unknown training preset '{name}'; presets in configs/train/: {presets}")
    return path


def measure(path: Path, stage: str, batch: int, checkpointing: bool, args, work: Path, data: dict, clip: str) -> dict:
    from accelerate.state import AcceleratorState

    from unclip.benchmarking import full_size_cascade
    from unclip.stages import first_of
    from unclip.train import trainer
    from unclip.train.config import load_train_config

    preset = path.stem
    output = work / f"{preset}-{batch}-{int(checkpointing)}"
    overrides = [
        f"data.path={data[1024 if stage == 'sr1024' else 256]}",
        f"output_dir={output}",
        f"max_steps={args.steps}",
        f"batch_size={batch}",
        f"gradient_checkpointing={str(checkpointing).lower()}",
        "tensorboard=false",
        "validation.every=0",
        f"checkpoint_every={args.steps + 1}",
    ]
    if args.tiny:
        overrides.append(f"init_from={args.tiny_model}")
    if first_of(stage).trains_on_clip:
        overrides.append(f"data.clip={clip}")
    config = load_train_config(path, overrides)

    def real_size(config, accelerator):  # the preset's model at its real size, random weights, fp32 as loaded
        return full_size_cascade(args.configs, torch.float32, accelerator.device)

    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(trainer, "export", lambda *a, **k: output / "model.yaml"))
        if not args.tiny:
            patches.enter_context(mock.patch.object(trainer, "load_cascade", real_size))
        AcceleratorState._reset_state(reset_partial_state=True)  # each run its own mixed precision, as a new process
        try:
            trainer.train(config)
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)  # and none left for what runs next
    log = [json.loads(line) for line in (output / "train_log.jsonl").read_text().splitlines()]
    return {
        "preset": preset,
        "stage": config.stage,
        "lora_rank": config.lora.rank,
        "mixed_precision": config.mixed_precision,
        "gradient_checkpointing": checkpointing,
        "batch": batch,
        "steps": len(log),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "seconds_per_step": (log[-1]["seconds"] - log[0]["seconds"]) / max(1, len(log) - 1),
        "loss": log[-1]["loss"],
    }


def markdown(row: dict, device: str) -> str:
    mode = f"LoRA r={row['lora_rank']}" if row["lora_rank"] else "full"
    memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "–"
    checkpointing = "yes" if row["gradient_checkpointing"] else "no"
    cells = [datetime.date.today(), device, row["preset"], row["stage"], mode, row["mixed_precision"], checkpointing,
             row["batch"], memory, f"{row['seconds_per_step']:.2f}"]  # fmt: skip
    return "| " + " | ".join(map(str, cells)) + " |"


def run(args: argparse.Namespace) -> int:
    paths = [preset_path(name) for name in args.presets]  # every name checked before any work
    if not args.tiny and not torch.cuda.is_available():
        raise UnclipError("the real-size trainer needs a CUDA GPU; on a CPU run the smoke test: --tiny")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "CPU (tiny replicas)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="unclip-train-memory-") as tmp:
        work = Path(tmp)
        data = datasets(work)
        if args.tiny:
            from unclip.replicas import tiny_karlo, tiny_x4_upscaler

            karlo, x4 = tiny_karlo(work / "karlo"), tiny_x4_upscaler(work / "x4")
            args.tiny_model = work / "tiny.yaml"
            args.tiny_model.write_text(f"unclip: {karlo}\nupscaler: {x4}\n")
        clip = "tiny:32" if args.tiny else random_clip_vision(args.configs, work / "clip-vit-large-patch14")
        print("| date | device | preset | stage | trains | precision | grad. ckpt | batch | peak GiB | s/step |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for path in paths:
            preset = yaml.safe_load(path.read_text())
            full = not preset.get("lora", {}).get("rank", 0)
            for checkpointing in (False, True) if full and not args.tiny else (False,):
                for batch in args.batch:
                    row = measure(path, preset["stage"], batch, checkpointing, args, work, data, clip)
                    rows.append(row)
                    print(markdown(row, device), flush=True)
                    if args.json:
                        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows},
                                                        indent=1))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_entry_point(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
