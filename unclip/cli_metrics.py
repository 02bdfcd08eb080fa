"""`unclip eval clip-score` and `unclip eval fd`: CLIP score and Fréchet distance of folders, offline
(``unclip.metrics``). Each prints a summary, then its result as JSON on the last line:

    unclip eval clip-score outputs/ --model demo          # prompts from outputs/metadata.jsonl
    unclip eval clip-score pictures/ --prompts prompts.txt --clip openclip:ViT-B-32/open_clip_model.safetensors
    unclip eval fd real/ fake/ --features demo            # CLIP image features of a model's own CLIP
    unclip eval fd real/ fake/ --features inception:pt_inception-2015-12-05-6726825d.pth   # the standard FID
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path


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
    result = {**clip_score(towers, folder.pictures, folder.prompts), "skipped": len(folder.skipped)}
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
        result = frechet_distance(args.features, real.pictures, fake.pictures, args.device)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    result["skipped"] = len(real.skipped) + len(fake.skipped)
    summary = f"Fréchet distance of {args.fake} ({result['n_fake']}) from {args.real} ({result['n_real']})"
    summary += f" on {result['features']}: {result['fd']:.4f}; {result['skipped']} unreadable skipped"
    print(summary, file=sys.stderr)
    print(json.dumps(result))
    return 0


# subcommand → (help, add_args, run), registered in unclip.cli.EVAL_COMMANDS
COMMANDS = {
    "clip-score": ("CLIP score of a folder's images with their prompts", add_clip_score_args, run_clip_score),
    "fd": ("Fréchet distance between two folders of images (CLIP features, or FID)", add_fd_args, run_fd),
}
