"""How fast unclip makes a 1024 px image, stage by stage, against the diffusers chain on the same modules.

    python scripts/benchmark.py                                   # full-size random-weight replicas, GPU, fp16
    python scripts/benchmark.py --preset fast --batch 1 4 8       # x4 stage at 20 DPM-Solver++ steps
    python scripts/benchmark.py --model karlo-x4 --dtype bf16     # the real weights
    python scripts/benchmark.py --tiny --preset smoke --runs 1    # CPU smoke test on tiny replicas (CI)

Per batch size: each stage's time (CUDA events) and the whole image (median of --runs after --warmup), peak
GPU memory, FLOPs per stage (torch.utils.flop_counter, one extra run) and the fraction of the GPU's dense
fp16/bf16 peak they reach; then, unless --no-diffusers, the same settings through UnCLIPPipeline and
StableDiffusionUpscalePipeline built on the same modules, for a ratio. Writes --json and prints one markdown
row per batch size for docs/benchmarks.md. Full-size replicas are built from --configs (the real repos'
configs) with random weights: speed does not depend on weight values, but their pictures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

from unclip.errors import UnclipError, run_entry_point

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a corgi playing a trumpet"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny random replicas on this machine (a smoke test)")
    p.add_argument("--model", help="a preset or model YAML with real weights (default: full-size replicas)")
    p.add_argument("--configs", type=Path, default=ROOT.parent / "shared" / "reference" / "pretrained-configs",
                   help="the real repos' configs, for full-size replicas")  # fmt: skip
    p.add_argument("--preset", choices=("reference", "fast", "smoke"), default="reference",
                   help="the diffusers chain's defaults; x4 at 20 DPM-Solver++ steps; 2 steps a stage")  # fmt: skip
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="images per call (one row each)")
    p.add_argument("--runs", type=int, default=3, help="timed runs (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa")
    p.add_argument("--offload", action="store_true", help="model CPU offload (peak memory with it)")
    p.add_argument("--no-diffusers", dest="diffusers", action="store_false", help="skip the reference chain")
    p.add_argument("--peak-tflops", type=float, help="the device's dense fp16 peak (default: from its name)")
    p.add_argument("--json", type=Path, help="write the results here")
    return p.parse_args(argv)


def load(args, device: torch.device, dtype: torch.dtype):
    from unclip.benchmarking import full_size_cascade
    from unclip.pipeline import UnCLIPCascade

    if args.tiny:
        from unclip.config import ModelConfig
        from unclip.replicas import tiny_karlo, tiny_x4_upscaler

        root = Path(tempfile.mkdtemp(prefix="unclip-bench-"))
        config = ModelConfig(str(tiny_karlo(root / "karlo")), str(tiny_x4_upscaler(root / "x4")), name="tiny")
        return UnCLIPCascade.from_config(config, torch_dtype=dtype), "tiny replicas"
    if args.model:
        return UnCLIPCascade.from_config(args.model, torch_dtype=dtype), args.model
    return full_size_cascade(args.configs, dtype, device), "full-size replicas (random weights)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def peak_tflops(args, device: torch.device) -> float | None:
    from unclip.benchmarking import PEAK_TFLOPS

    if args.peak_tflops:
        return args.peak_tflops
    name = device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def bench_batch(pipe, chain, args, device, settings, batch: int) -> dict:
    from unclip.benchmarking import StageClock, call_kwargs, measure, median, synchronize

    kwargs = dict(num_images_per_prompt=batch, seed=0, size=1024, output_type="pt", **call_kwargs(settings))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    per_run: list[dict[str, float]] = []
    with StageClock(pipe) as clock:

        def one() -> None:
            clock.reset()
            pipe(PROMPT, **kwargs)
            per_run.append(clock.seconds())

        total = measure(one, device, args.runs, args.warmup)
    stages = {stage: median([r[stage] for r in per_run[args.warmup :]]) for stage in per_run[-1]}
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    with StageClock(pipe, count_flops=True) as counter:  # one more run, counted (not timed)
        pipe(PROMPT, **kwargs)
        synchronize(device)
    flops = dict(counter.flops)
    row = {
        "batch": batch,
        "total_s": median(total),
        "images_per_s": batch / median(total),
        "stages_s": stages,
        "tflop": {stage: value / 1e12 for stage, value in flops.items()},
        "peak_memory_gib": peak_gb,
    }
    peak = peak_tflops(args, device)
    if peak:
        row["fraction_of_peak"] = sum(flops.values()) / 1e12 / row["total_s"] / peak
    if chain is not None:
        reference = measure(lambda: chain(PROMPT, 0, settings, batch), device, args.runs, args.warmup)
        row["diffusers_s"] = median(reference)
        row["speedup"] = row["diffusers_s"] / row["total_s"]
    return row


def markdown_row(result: dict, row: dict) -> str:
    stages = ", ".join(f"{s} {t:.3f}" for s, t in row["stages_s"].items())
    memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "–"
    reference = f"{row['diffusers_s']:.2f} s ({row['speedup']:.2f}×)" if "diffusers_s" in row else "–"
    fraction = f"{100 * row['fraction_of_peak']:.0f} %" if "fraction_of_peak" in row else "–"
    return (
        f"| {result['date']} | {result['device']} | {result['weights']} | {result['preset']} | {result['dtype']} | "
        f"{row['batch']} | {row['total_s']:.2f} s | {stages} | {sum(row['tflop'].values()):.1f} | {fraction} | "
        f"{memory} | {reference} | torch {result['torch']}, diffusers {result['diffusers']} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        import diffusers

        from unclip.benchmarking import PRESETS, diffusers_chain
        from unclip.cli import quiet_libraries

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.tiny and args.model:
            raise UnclipError("--tiny builds its own tiny replicas: give --tiny or --model, not both")
        if device.type == "cpu" and not (args.tiny or args.model):
            raise UnclipError("full-size replicas need a CUDA GPU; on a CPU run the smoke test: --tiny")
        dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
        if args.json and args.json.exists():
            raise UnclipError(f"{args.json} exists: give a new --json file (results are never overwritten)")
        if args.model and args.diffusers:  # before loading anything
            from unclip.config import load_model_config
            from unclip.loading import detect_upscaler_layout

            upscaler = load_model_config(args.model).upscaler
            if not upscaler or detect_upscaler_layout(upscaler) != "x4":
                raise UnclipError(
                    "the diffusers chain ends in the x4 upscaler, which this model lacks: add --no-diffusers"
                )
        quiet_libraries()
        pipe, weights = load(args, device, dtype)
        if args.offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        pipe.set_attention(args.attention)
        pipe.set_progress_bar_config(disable=True)
        settings = PRESETS[args.preset]()
        chain = diffusers_chain(pipe) if args.diffusers else None
        result = {
            "date": datetime.date.today().isoformat(),
            "device": device_name(device),
            "weights": weights,
            "preset": args.preset,
            "dtype": str(dtype).removeprefix("torch."),
            "attention": args.attention,
            "offload": args.offload,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "command": " ".join(["python scripts/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
            "rows": [bench_batch(pipe, chain, args, device, settings, batch) for batch in args.batch],
        }
        for row in result["rows"]:
            print(markdown_row(result, row))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
            print(f"results: {args.json}")
        return 0

    return run_entry_point(run)


if __name__ == "__main__":
    sys.exit(main())
