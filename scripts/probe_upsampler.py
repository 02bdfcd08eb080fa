"""How sharp and how flat a model's 256→1024 stage draws, on inputs whose truth is known (issue 16).

    python scripts/probe_upsampler.py --model demo                         # the shipped settings
    python scripts/probe_upsampler.py --model runs/demo/sr1024/model.yaml --upscaler runs/demo/sr1024/upscaler \
        --settings 1000:1 1000:3 200:6 --pad 32 --inputs clean decoded

Each of --n evaluation prompts (`unclip.demo.shapes.eval_prompts`) is placed and rendered, and the 256→1024 stage
runs on up to three inputs: "clean", the scene's own 256 px render (the best input the stage could get), "decoded",
its 64 px render through the model's 64→256 stage (the input it gets in the cascade, less the 64 px decoder's
errors), and "blurred", the 256 px render under a Gaussian blur of σ --blur px (0.75: edges as wide as the demo's
64→256 stage leaves them, 1.2-1.35 px; no 64→256 model needed). For every --settings START:STEPS (DDIM, the sampling
starting at timestep START, from the noised input; 1000 = pure noise), the script prints the mean edge width at 1024
px (`unclip.demo.checker`: pixels 20-80 % of the way from background to shape per pixel of outline; a clean render
0.5, bicubic from a clean 256 px render 2.5), the background's flatness (colour std in the four 40 px corners, grey
levels), how often every attribute reads back right, and the seconds. Bicubic is printed as the baseline, and the
256 px input itself as "at 256 px" (its edge width in 256 px units). --upscaler swaps in another run's upsampler
folder (a trainer's output_dir/upscaler) for the 256→1024 stage, --pad sets its pad; --json writes the rows."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unclip.config import load_model_config
from unclip.demo.checker import check, detect
from unclip.demo.shapes import eval_prompts, place, render
from unclip.pipeline import UnCLIPCascade
from unclip.stages.base import StageInputs


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).float()[None] / 127.5 - 1


def to_pixels(x: torch.Tensor) -> np.ndarray:
    return ((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()


def seeded(i: int) -> StageInputs:
    return StageInputs(generators=[torch.Generator().manual_seed(i)])


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of σ ``sigma`` px (3σ radius, edges mirrored)."""
    radius = max(1, round(3 * sigma))
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    taps = (taps / taps.sum()).expand(3, 1, -1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), taps[:, :, None, :], groups=3)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), taps[:, :, :, None], groups=3)


def corner_std(pixels: np.ndarray, side: int = 40) -> float:
    corners = [pixels[:side, :side], pixels[:side, -side:], pixels[-side:, :side], pixels[-side:, -side:]]
    return float(np.mean([c.reshape(-1, 3).std(axis=0).mean() for c in corners]))


def measure(images: list[np.ndarray], prompts) -> dict:
    return {
        "all": float(np.mean([check(z, p).all for z, p in zip(images, prompts, strict=True)])),
        "edge": float(np.mean([detect(z).edge_width for z in images])),
        "corner_std": float(np.mean([corner_std(z) for z in images])),
    }


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", help="preset name or model.yaml (its 64→256 stage and settings)")
    parser.add_argument("--upscaler", help="another upsampler folder for the 256→1024 stage")
    parser.add_argument("--settings", nargs="+", default=["default"], help="START:STEPS pairs, or 'default'")
    parser.add_argument("--inputs", nargs="+", default=["clean", "decoded"], choices=["clean", "decoded", "blurred"])
    parser.add_argument("--blur", type=float, default=0.75, help="σ in px of the blurred input (default 0.75)")
    parser.add_argument("--pad", type=int, help="the 256→1024 stage's pad (default: the model's)")
    parser.add_argument("--n", type=int, default=12, help="evaluation prompts (default 12)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = load_model_config(args.model)
    if args.upscaler:
        config = dataclasses.replace(config, upscaler=str(Path(args.upscaler).resolve()))
    pipe = UnCLIPCascade.from_pretrained(config, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = eval_prompts(args.n, forms=False)
    rng = np.random.default_rng(0)
    scenes = [place(a, rng) for a in prompts]
    inputs = {}
    if "clean" in args.inputs:
        inputs["clean"] = [to_tensor(render(s, 256)) for s in scenes]
    if "blurred" in args.inputs:
        inputs["blurred"] = [blur(to_tensor(render(s, 256)), args.blur) for s in scenes]
    if "decoded" in args.inputs:
        plan = pipe.plan(size=256, first_stage="sr256")
        renders = [to_tensor(render(s, 64)) for s in scenes]
        inputs["decoded"] = [pipe.run_stage("sr256", x, seeded(i), plan) for i, x in enumerate(renders)]
    rows = []

    def report(name: str, setting: str, images: list[np.ndarray], start: float) -> None:
        row = {"input": name, "setting": setting, **measure(images, prompts), "seconds": time.perf_counter() - start}
        rows.append(row)
        print(f"{row['input']:8} {row['setting']:10} all {row['all']:.2f}  edge {row['edge']:.2f} px  "
              f"corner std {row['corner_std']:.2f}  {row['seconds']:.1f} s", flush=True)  # fmt: skip

    for name, lows in inputs.items():
        start = time.perf_counter()
        report(name, "at 256 px", [to_pixels(x) for x in lows], start)  # the input itself: its edge in 256 px units
        start = time.perf_counter()
        bicubic = [to_pixels(F.interpolate(x, scale_factor=4, mode="bicubic")) for x in lows]
        report(name, "bicubic", bicubic, start)
        for setting in args.settings:
            stage_args, scheduler = {"upscale_pad": args.pad}, None
            if setting != "default":
                first, steps = (int(v) for v in setting.split(":"))
                stage_args |= {"upscale_start": first, "upscale_num_inference_steps": steps}
                scheduler = {"sr1024": "ddim"}
            plan = pipe.plan(size=1024, scheduler=scheduler, stage_args=stage_args, first_stage="sr1024")
            start = time.perf_counter()
            images = [to_pixels(pipe.run_stage("sr1024", x, seeded(i), plan)) for i, x in enumerate(lows)]
            report(name, setting, images, start)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
