"""`unclip eval clip-score` and `unclip eval fd`: CLIP score and Fréchet distance of folders, offline
(``unclip.metrics``). Each prints a summary, then its result as JSON on the last line:

    unclip eval clip-score outputs/ --model demo          # prompts from outputs/metadata.jsonl
    unclip eval clip-score pictures/ --prompts prompts.txt --clip openclip:ViT-B-32/open_clip_model.safetensors
    unclip eval fd real/ fake/ --features demo            # CLIP image features of a model's own CLIP
    unclip eval fd real/ fake/ --features inception:pt_inception-2015-12-05-6726825d.pth   # the standard FID
    unclip eval coco --captions annotations/captions_val2014.json --images val2014/ --model demo --n 30000 \
        --out coco/ --features inception:pt_inception-2015-12-05-6726825d.pth   # the paper's protocol (unclip.coco)
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from unclip.stages import SIZES


def add_clip_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, help="images, with their prompts in its metadata.jsonl (as unclip writes it)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", default="demo", help="a model whose own CLIP (text encoder, image tower) scores")
    which.add_argument("--clip", help="a CLIP by name instead: openclip:MODEL/PRETRAINED or hf:ID_OR_FOLDER")
    p.add_argument("--prompts", type=Path, help="a prompt a line, in the images' file-name order (else metadata)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def run_clip_score(args) -> int:
    from unclip.metrics import clip_score, clip_towers, read_folder

    folder = read_folder(args.folder, args.prompts, need_prompts=True)
    towers = clip_towers(args.clip or args.model, args.device)
    result = {**clip_score(towers, folder.pairs()), "skipped": len(folder.skipped)}
    print(f"CLIP score of {result['n']} images of {args.folder} with their prompts, by {towers.name}: "
          f"{result['clip_score']:.4f} (×100: {result['clip_score_x100']:.2f}); {len(folder.skipped)} unreadable "
          "skipped", file=sys.stderr)  # fmt: skip
    print(json.dumps(result))
    return 0


def add_fd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("real", type=Path, help="a folder of reference images")
    p.add_argument("fake", type=Path, help="a folder of generated images")
    p.add_argument("--features", default="demo", help="a model (its CLIP image tower), openclip:MODEL/PRETRAINED, "
                   "hf:ID_OR_FOLDER, or inception:PATH (Inception-v3 weights: the standard FID)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def run_fd(args) -> int:
    from unclip.metrics import frechet_distance, read_folder

    real, fake = read_folder(args.real), read_folder(args.fake)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = frechet_distance(args.features, real.pictures(), fake.pictures(), args.device)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    result["skipped"] = len(real.skipped) + len(fake.skipped)
    summary = f"Fréchet distance of {args.fake} ({result['n_fake']}) from {args.real} ({result['n_real']})"
    summary += f" on {result['features']}: {result['fd']:.4f}; {result['skipped']} unreadable skipped"
    print(summary, file=sys.stderr)
    print(json.dumps(result))
    return 0


def add_coco_args(p: argparse.ArgumentParser) -> None:
    from unclip.cli_args import add_sampling_args, positive_int

    p.add_argument("--captions", type=Path, required=True, help="MS-COCO's annotations/captions_val2014.json")
    p.add_argument("--images", type=Path, required=True, help="the folder of its images (val2014/)")
    p.add_argument("--model", default="demo", help="preset name (a file of configs/) or a model YAML file")
    p.add_argument("--out", type=Path, required=True, help="the run's folder: rerun the same command to resume")
    p.add_argument("--n", type=positive_int, default=30000, help="captions drawn (the paper: 30000)")
    p.add_argument("--seed", type=int, default=0, help="draws the captions and seeds the images (as unclip batch)")
    p.add_argument("--size", type=int, choices=SIZES, help="generated and compared size (default: 256, or the "
                   "model's largest if smaller)")  # fmt: skip
    p.add_argument("--features", help="FD features: inception:PATH for the paper's FID (torch-fidelity's Inception "
                   "weights), or a model / openclip:.. / hf:.. CLIP (default: the model's own CLIP)")  # fmt: skip
    p.add_argument("--clip", help="the CLIP of the CLIP score: openclip:MODEL/PRETRAINED or hf:ID_OR_FOLDER "
                   "(default: the model's own)")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per cascade call")
    add_sampling_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_coco(args) -> int:
    from unclip.cli_args import sampling_kwargs
    from unclip.coco import Protocol, evaluate

    protocol = Protocol(
        captions=args.captions,
        images=args.images,
        model=args.model,
        out=args.out,
        n=args.n,
        seed=args.seed,
        size=args.size,
        features=args.features,
        clip=args.clip,
        sampling=sampling_kwargs(args),
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        progress=not args.quiet,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(protocol)
    if result is None:  # another process of accelerate launch
        return 0
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"{result['generation']}\nMS-COCO, {result['n']} captions at {result['size']} px: Fréchet distance "
          f"{result['fd']:.4f} on {result['features']} ({result['real_missing']} real images missing); CLIP score "
          f"{result['clip_score']:.4f} by {result['clip']}; in {args.out / 'coco.json'}", file=sys.stderr)  # fmt: skip
    print(json.dumps(result))
    return 0


# subcommand → (help, add_args, run), registered in unclip.cli.EVAL_COMMANDS
COMMANDS = {
    "clip-score": ("CLIP score of a folder's images with their prompts", add_clip_score_args, run_clip_score),
    "fd": ("Fréchet distance between two folders of images (CLIP features, or FID)", add_fd_args, run_fd),
    "coco": ("the paper's MS-COCO protocol: captions → images → FID and CLIP score", add_coco_args, run_coco),
}
