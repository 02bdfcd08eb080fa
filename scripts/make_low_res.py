"""Each training image's low-res twin as the cascade makes it, for training a 256→1024 stage on the input it meets.

    python scripts/make_low_res.py --data data/shapes-1024 --model configs/demo.yaml --out data/shapes-1024-sr256
    python -m unclip.train --config configs/train/demo-sr1024.yaml data.low_res=data/shapes-1024-sr256

Every image of --data (an imagefolder or tar shards, as the trainer reads them) is resized and cropped to
--size (1024) as the trainer does, shrunk to a sixteenth of that side (antialiased bicubic: the 64 px picture the
decoder would have drawn, without its mistakes) and put through the --model's 64→256 stage with its own settings
(one seed per image: --seed + the image's index). The result, a quarter of the image's side, is written to --out
under the image's name (an imagefolder's file_name, a shard's key + .png), which is where the trainer's
`data.low_res` looks for it. The 64→256 stage leaves its own blur and speckle, which a Gaussian stand-in
(`sr.blur_sigma`) only imitates; trained on these twins the 256→1024 stage learns to undo what it will be given.
Images already in --out are kept: run it again after an interruption to finish."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from unclip.errors import UnclipError
from unclip.outputs import postprocess
from unclip.stages.base import StageInputs
from unclip.train.data import LOW_RES_FACTOR, CaptionedImages, low_res_name


def save(image: Image.Image, path: Path) -> None:
    """Written whole or not at all: a half-written PNG would pass the trainer's check that the twin exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.png")
    image.save(partial)
    partial.replace(path)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the 256→1024 stage's training images")
    parser.add_argument("--model", required=True, help="the model config (or preset) whose 64→256 stage to run")
    parser.add_argument("--out", required=True, type=Path, help="the folder of twins (the trainer's data.low_res)")
    parser.add_argument("--size", type=int, default=1024, help="the side the trainer reads the images at")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UnclipError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from unclip.config import load_model_config
    from unclip.pipeline import UnCLIPCascade

    if args.size % LOW_RES_FACTOR**2:
        raise UnclipError(f"--size must be a multiple of {LOW_RES_FACTOR**2} (the twins' source is a sixteenth of it)")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = CaptionedImages(args.data, args.size)
    todo = [i for i in range(len(data)) if not (args.out / low_res_name(data.source, data.keys[i])).is_file()]
    print(f"{len(data) - len(todo)} of {len(data)} twins already in {args.out}; making {len(todo)}", flush=True)
    if not todo:
        return 0
    pipe = UnCLIPCascade.from_pretrained(load_model_config(args.model), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    plan = pipe.plan(size=args.size // LOW_RES_FACTOR, first_stage="sr256")
    small = args.size // LOW_RES_FACTOR**2
    start = time.perf_counter()
    for done in range(0, len(todo), args.batch_size):
        batch = [(i, data[i]) for i in todo[done : done + args.batch_size]]
        batch = [(i, item) for i, item in batch if item is not None]  # unreadable: the trainer skips it too
        if not batch:
            continue
        images = torch.stack([item["pixel_values"] for _, item in batch])
        low = F.interpolate(images, size=(small, small), mode="bicubic", antialias=True).clamp(-1, 1)
        generators = [torch.Generator().manual_seed(args.seed + i) for i, _ in batch]
        twins = pipe.run_stage("sr256", low, StageInputs(generators=generators), plan)
        for (i, _), twin in zip(batch, postprocess(twins, "pil"), strict=True):  # as the cascade's own outputs
            save(twin, args.out / low_res_name(data.source, data.keys[i]))
        made = done + len(batch)
        rate = (time.perf_counter() - start) / made
        print(f"{made}/{len(todo)}  {rate:.2f} s per image", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
