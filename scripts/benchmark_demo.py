"""How long the README's main command takes with the offline demo on this machine's CPU.

    python scripts/benchmark_demo.py                       # 3 runs of the whole command, and per stage
    python scripts/benchmark_demo.py --runs 5 --json out.json

Times (1) the whole `unclip generate PROMPT --model demo --size 1024` command as a user runs it (a new process:
import, loading, the four stages, the PNG), median of --runs, and (2) in one process, each stage of the cascade
(prior, decoder, sr256, sr1024) after a warm-up, median of --runs. Prints a markdown row for docs/benchmarks.md
with the machine (CPU model, cores, torch threads) and versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a large red circle in the top left on a blue background"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_command(model: str, size: int, runs: int) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(runs):
            # the `unclip` console script of this environment, whether or not it is on PATH
            argv = [sys.executable, "-m", "unclip.cli", "generate", PROMPT, "--model", model, "--size", str(size)]
            argv += ["--seed", str(k)]
            start = time.perf_counter()
            subprocess.run([*argv, "--out", tmp, "--quiet"], check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
    return times


def time_stages(model: str, size: int, runs: int) -> dict[str, float]:
    """Median seconds per stage (and the text encoder) and of the whole call, over ``runs`` after a warm-up."""
    import torch

    from unclip.benchmarking import StageClock
    from unclip.pipeline import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    per_run, total = [], []
    with StageClock(pipe) as clock:
        for k in range(runs + 1):  # the first is a warm-up
            clock.reset()
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(PROMPT, seed=k, size=size, output_type="np")
            total.append(time.perf_counter() - start)
            per_run.append(clock.seconds())
    result = {name: statistics.median(run[name] for run in per_run[1:]) for name in per_run[0]}
    result["cascade"] = statistics.median(total[1:])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--size", type=int, default=1024, choices=(64, 256, 1024))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    command = time_command(args.model, args.size, args.runs)
    stages = time_stages(args.model, args.size, args.runs)
    import diffusers

    result = {
        "model": args.model,
        "size": args.size,
        "command_s": statistics.median(command),
        "command_runs_s": command,
        "stages_s": stages,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    per_stage = ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items())
    print(
        f"| {result['date']} | {result['machine']['cpu']}, {result['machine']['cores']} cores | {args.model} "
        f"{args.size} px | command {result['command_s']:.1f} s (median of {args.runs}) | {per_stage} s |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
