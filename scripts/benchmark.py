"""How fast unclip makes a 1024 px image, stage by stage, against the diffusers chain on the same modules.

    python scripts/benchmark.py                                   # full-size random-weight replicas, GPU, fp16
    python scripts/benchmark.py --preset fast --batch 1 4 8       # x4 stage at 20 DPM-Solver++ steps
    python scripts/benchmark.py --model karlo-x4 --dtype bf16     # the real weights
    python scripts/benchmark.py --speedups off default vae_bf16 graphs fast   # each speed-up on and off
    python scripts/benchmark.py --tiny --preset smoke --runs 1    # CPU smoke test on tiny replicas (CI)

Per batch size, first the diffusers chain (unless --no-diffusers): the same settings through UnCLIPPipeline and
StableDiffusionUpscalePipeline built on the same modules, seeded like unclip (a CPU generator). Then per
--speedups preset (unclip.speedups.PRESETS): each stage's time (CUDA events) and the whole image
(median of --runs after --warmup, which also absorbs torch.compile), peak GPU memory, the speed-up over the
chain and, at batch 1, how far the image is from the chain's; FLOPs per stage (torch.utils.flop_counter, one
extra run per batch size) and the fraction of the GPU's dense fp16/bf16 peak reached. Prints a markdown row
for docs/benchmarks.md as each is measured and rewrites --json after each (a run cut short keeps its rows).
Full-size replicas are built from --configs (the real repos' configs) with random weights: speed does not
depend on weight values, but their pictures mean nothing.
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
    p.add_argument("--speedups", nargs="+", default=["default"], metavar="NAME",
                   help="speed-up presets to measure, one row each (unclip.speedups.PRESETS)")  # fmt: skip
    p.add_argument("--compile-backend", help="torch.compile backend for the compiling configurations "
                   "(default inductor; aot_eager traces without code generation)")  # fmt: skip
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

        with tempfile.TemporaryDirectory(prefix="unclip-bench-") as tmp:  # loaded into memory, then removed
            root = Path(tmp)
            config = ModelConfig(str(tiny_karlo(root / "karlo")), str(tiny_x4_upscaler(root / "x4")), name="tiny")
            return UnCLIPCascade.from_pretrained(config, torch_dtype=dtype), "tiny replicas"
    if args.model:
        return UnCLIPCascade.from_pretrained(args.model, torch_dtype=dtype), args.model
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


def flops_per_stage(pipe, kwargs: dict, device) -> dict[str, float]:
    """TFLOP per stage of one call, counted by torch.utils.flop_counter (not timed: counting slows it)."""
    from unclip.benchmarking import StageClock, synchronize

    with StageClock(pipe, count_flops=True) as counter:
        pipe(PROMPT, **kwargs)
        synchronize(device)
    return {stage: value / 1e12 for stage, value in counter.flops.items()}


def bench_speedups(pipe, name: str, speedups, args, device, kwargs: dict) -> tuple[dict, torch.Tensor]:
    """One configuration at one batch size: the row's timings and peak memory, and its last images."""
    from unclip.benchmarking import StageClock, measure, median

    pipe.enable_speedups(speedups)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    per_run: list[dict[str, float]] = []
    last = {}
    with StageClock(pipe) as clock:

        def one() -> None:
            clock.reset()
            last["images"] = pipe(PROMPT, **kwargs).images
            per_run.append(clock.seconds())

        total = measure(one, device, args.runs, args.warmup)
    stages = {stage: median([r[stage] for r in per_run[args.warmup :]]) for stage in per_run[-1]}
    row = {
        "speedups": name,
        "switches": speedups.describe(),
        "batch": kwargs["num_images_per_prompt"],
        "total_s": median(total),
        "images_per_s": kwargs["num_images_per_prompt"] / median(total),
        "stages_s": stages,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return row, last["images"]


def bench_batch(pipe, chain, configurations: list, args, device, settings, batch: int, emit) -> None:
    """Every --speedups configuration at ``batch`` images a call, each row handed to ``emit`` when measured."""
    from unclip.benchmarking import call_kwargs, image_difference, measure, median
    from unclip.speedups import Speedups

    kwargs = dict(
        num_images_per_prompt=batch, seed=0, size=1024, output_type="pt", **call_kwargs(settings, pipe.stages)
    )
    pipe.enable_speedups(Speedups.none())  # the modules as the chain expects them (its VAE, its memory format)
    tflop = flops_per_stage(pipe, kwargs, device)
    reference = {}
    if chain is not None:

        def run_chain() -> None:
            reference["images"] = chain(PROMPT, 0, settings, batch)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        reference["s"] = median(measure(run_chain, device, args.runs, args.warmup))
        reference["gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    peak = peak_tflops(args, device)
    for name, speedups in configurations:
        row, images = bench_speedups(pipe, name, speedups, args, device, kwargs)
        row["tflop"] = tflop
        if peak:
            row["fraction_of_peak"] = sum(tflop.values()) / row["total_s"] / peak
        if reference:
            row["diffusers_s"] = reference["s"]
            row["diffusers_peak_memory_gib"] = reference["gib"]
            row["speedup"] = reference["s"] / row["total_s"]
            if batch == 1:  # the same seed draws the same noise only image by image
                row["vs_diffusers"] = image_difference(images, reference["images"])
        emit(row)


def markdown_row(result: dict, row: dict) -> str:
    stages = ", ".join(f"{s} {t:.3f}" for s, t in row["stages_s"].items())
    memory = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "–"
    reference = f"{row['diffusers_s']:.2f} s ({row['speedup']:.2f}×)" if "diffusers_s" in row else "–"
    fraction = f"{100 * row['fraction_of_peak']:.0f} %" if "fraction_of_peak" in row else "–"
    vs = row.get("vs_diffusers")
    match = "–" if vs is None else ("NaN" if vs["nan"] else f"{vs['max_abs_diff']:.3f} / {vs['mean_abs_diff']:.4f}")
    return (
        f"| {result['date']} | {result['device']} | {result['weights']} | {result['preset']} | {result['dtype']} | "
        f"{row['speedups']} ({row['switches']}) | {row['batch']} | {row['total_s']:.2f} s | {stages} | "
        f"{sum(row['tflop'].values()):.1f} | {fraction} | {memory} | {reference} | {match} | "
        f"torch {result['torch']}, diffusers {result['diffusers']}, {result['attention']} |"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        import diffusers

        from unclip.benchmarking import PRESETS, diffusers_chain
        from unclip.errors import quiet_libraries
        from unclip.speedups import named

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.tiny and args.model:
            raise UnclipError("--tiny builds its own tiny replicas: give --tiny or --model, not both")
        if device.type == "cpu" and not (args.tiny or args.model):
            raise UnclipError("full-size replicas need a CUDA GPU; on a CPU run the smoke test: --tiny")
        dtype = DTYPES[args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
        configurations = [(name, named(name, args.compile_backend)) for name in args.speedups]  # names checked
        if args.offload and any(speedups.compile for _, speedups in configurations):
            raise UnclipError("--offload and the compiling --speedups configurations don't mix: drop one")
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
            "rows": [],
        }

        def emit(row: dict) -> None:
            result["rows"].append(row)
            print(markdown_row(result, row), flush=True)
            if args.json:
                args.json.write_text(json.dumps(result, indent=2) + "\n")

        for batch in args.batch:
            bench_batch(pipe, chain, configurations, args, device, settings, batch, emit)
        if args.json:
            print(f"results: {args.json}")
        return 0

    return run_entry_point(run)


if __name__ == "__main__":
    sys.exit(main())
