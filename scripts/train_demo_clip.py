"""Train the demo's tiny CLIP on a captioned-shapes imagefolder, score it zero-shot, and export it.

    python scripts/train_demo_clip.py --data data/shapes --out runs/clip
    python scripts/train_demo_clip.py --data data/shapes --out runs/clip --steps 5000 --seed 1
    python scripts/train_demo_clip.py --data data/shapes --out runs/clip --checkpoint runs/clip.pt  # resumable
    python scripts/train_demo_clip.py --data data/shapes --out runs/clip --colour-jitter 0.3

DATA: the imagefolder ``unclip data shapes`` writes (any imagefolder or tar shards with captions train; the
zero-shot score assumes the shapes grammar). Images are read once at 64 px and kept in memory. Where its
metadata.jsonl has the shapes' attributes (colour, shape, position, background, size), three quarters of each
batch are minimal pairs steered to what the model still confuses (``unclip.demo.clip_batches``; the log lines
show those error rates); elsewhere batches are random.

Captions (``--captions``): ``first``, each image's first (its full caption); ``all``, one of an image's captions
drawn each step (pairs the drawn caption is true of both are no negatives) — not for the shapes: a caption that
leaves the position out pulls the images of every position to one text embedding, and z_i loses where the shape is
(tried on 2026-12-01: zero-shot position 33 %, shape 60 %, against 97 % and 90 % on full captions); ``placed``,
drawn among the captions that say the place as the first does ("in the ..."; the size word and the full stop said
or not), so the text tower meets the size-less forms (on first captions only, a caption without the size word
shifted every later token: the demo lost the place of 23 % of such prompts, 2026-12-03) while z_i keeps the place.
The prior and the decoder learn the grammar's other forms (configs/train/demo-prior.yaml).

``--colour-jitter X``: each training image's channels scaled by a gain from [1 - X, 1 + X] and shifted by an
offset from [-X, X] (``unclip.demo.clip.jitter_colours``), so the image tower reads a shape apart from the colours
it was seen in: a colour-and-shape pair held out of the data (the green circle) is then embedded as the shape it is.

FOLDER (new or empty) receives the export (``unclip.demo.clip_export``: ``text_encoder/``, ``tokenizer/``,
``image_encoder/``, ``feature_extractor/``, ``open_clip/``), ``train_log.jsonl`` (the loss of every step) and
``zero_shot.json``: per-attribute zero-shot accuracy (``unclip.demo.clip_zero_shot``) on ``--eval-n`` images
rendered from the shapes' evaluation prompts, all and the held-out colour-and-shape pairs alone, printed too.

Then: ``data.clip=hf:FOLDER/image_encoder`` in a training config, and FOLDER's text_encoder/ and tokenizer/
as the cascade's.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from unclip.errors import UnclipError, run_entry_point

DEFAULTS = {"steps": 2000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 50, "seed": 0, "eval_n": 960}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train_demo_clip.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="captioned images: imagefolder with metadata.jsonl, or shards")
    parser.add_argument("--out", required=True, help="new or empty output folder")
    parser.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="optimizer steps (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="(%(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak AdamW LR (%(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"], help="linear (%(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="init and batch order (%(default)s)")
    parser.add_argument("--eval-n", type=int, default=DEFAULTS["eval_n"], help="zero-shot images (%(default)s)")
    parser.add_argument(
        "--colour-jitter",
        type=float,
        default=0.0,
        help="random per-channel gain and offset of at most this on [0, 1] pixels while training (%(default)s: none)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes reading the images (%(default)s)")
    parser.add_argument(
        "--captions",
        choices=CAPTION_CHOICES,
        default="first",
        help="which of each image's captions train: first, all, or placed (those saying the place; %(default)s)",
    )
    parser.add_argument(
        "--checkpoint", help="file the training state is saved to every 500 steps and resumed from if it exists"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


CAPTION_CHOICES = ("first", "all", "placed")


def choose_captions(texts: list[str], captions: list[tuple[str, ...]], choice: str) -> list[tuple[str, ...]] | None:
    """Each image's captions to draw from (``--captions``); None: its first only. ``placed`` keeps those that say
    the place as its first caption does (all of them where the first says none)."""
    if choice == "first":
        return None
    if choice == "all":
        return captions
    placed = []
    for first, options in zip(texts, captions, strict=True):
        where = first.rpartition(" in the ")[2].partition(" on ")[0] if " in the " in first else None
        placed.append(tuple(c for c in options if where is None or f" in the {where} on " in c) or (first,))
    return placed


def _native_size(data) -> int:
    """The side of the dataset's first image, to render the evaluation images alike (64 if not square)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data.read_bytes(0))) as image:
        width, height = image.size
    return width if width == height else 64


def read_attributes(data: str | Path, keys: list[str]) -> list[dict[str, str]] | None:
    """The shapes' attributes of each key from an imagefolder's metadata.jsonl; None where any is missing."""
    from unclip.demo.shapes import ATTRIBUTES
    from unclip.train.data import METADATA, locate

    source = locate(data)
    if source.format != "imagefolder":
        return None
    rows = {}
    for line in (source.root / METADATA).read_text(encoding="utf-8").split("\n"):
        row = json.loads(line) if line.strip() else {}
        if "file_name" in row:
            rows[row["file_name"]] = row
    if not all(all(isinstance(rows[k].get(a), str) for a in ATTRIBUTES) for k in keys):
        return None
    return [{a: rows[k][a] for a in ATTRIBUTES} for k in keys]


def run(args: argparse.Namespace) -> dict:
    import torch
    from tqdm.contrib.logging import logging_redirect_tqdm

    from unclip.demo import clip
    from unclip.demo.clip_export import export_clip
    from unclip.demo.clip_zero_shot import eval_images, zero_shot
    from unclip.train.data import CaptionedImages

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UnclipError(f"{out} is not a new or empty folder: give another --out (nothing is ever overwritten)")
    if args.eval_n < 1:
        raise UnclipError(f"--eval-n must be at least 1, got {args.eval_n}")
    if not 0 <= args.colour_jitter < 1:
        raise UnclipError(f"--colour-jitter must be at least 0 and below 1, got {args.colour_jitter}")
    config = clip.ClipTrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        colour_jitter=args.colour_jitter,
    )
    log = logging.getLogger("unclip.demo.clip")
    progress = not args.no_progress
    torch.manual_seed(args.seed)
    with logging_redirect_tqdm([log]):
        data = clip.load_images(args.data, workers=args.workers, progress=progress)
        render_size = _native_size(CaptionedImages(args.data, clip.IMAGE_SIZE))
        attributes = read_attributes(args.data, data.keys)
        if attributes is None:
            log.info("no shapes attributes in the metadata: random batches, no minimal pairs")
        model = clip.create_clip(args.seed)
        result = clip.train_clip(
            model,
            data.images,
            data.texts,
            config,
            attributes,
            progress,
            choose_captions(data.texts, data.captions, args.captions),
            args.checkpoint,
        )
    eval_pixels, eval_attributes = eval_images(args.eval_n, render_size=render_size)
    report = zero_shot(model, eval_pixels, eval_attributes)
    export_clip(model, out)
    with open(out / "train_log.jsonl", "x") as lines:
        for step, loss in enumerate(result.losses, 1):
            lines.write(json.dumps({"step": step, "loss": round(loss, 6)}) + "\n")
    summary = {
        "zero_shot": {k: round(v, 4) for k, v in report.accuracy.items()},
        "zero_shot_held_out": {k: round(v, 4) for k, v in report.held_out.items()},
        "zero_shot_sizeless": {k: round(v, 4) for k, v in report.sizeless.items()},
        "eval_images": report.n,
        "eval_images_held_out": report.n_held_out,
        "train_images": len(data.texts),
        "captions": args.captions,
        "minimal_pairs": attributes is not None,
        "train_seconds": round(result.seconds, 1),
        "loss_first": result.losses[0],
        "loss_last": result.losses[-1],
        "parameters": sum(p.numel() for p in model.parameters()),
        "train": asdict(config),
        "model": clip.MODEL_CONFIG,
    }
    (out / "zero_shot.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict, out: str) -> None:
    print(
        f"trained {summary['train']['steps']} steps in {summary['train_seconds']} s; loss "
        f"{summary['loss_first']:.3f} → {summary['loss_last']:.3f}"
    )
    for name, title in (
        ("zero_shot", "all"),
        ("zero_shot_held_out", "held-out pairs"),
        ("zero_shot_sizeless", "captions without the size word"),
    ):
        if not summary[name]:
            continue
        line = ", ".join(f"{k} {v:.1%}" for k, v in summary[name].items())
        print(f"zero-shot accuracy ({title}): {line}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def train_and_report() -> int:
        from unclip.errors import quiet_libraries

        quiet_libraries()
        log = logging.getLogger("unclip.demo.clip")  # its loss lines, plain, through the progress bar
        if not log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
        print_summary(run(args), args.out)
        return 0

    return run_entry_point(train_and_report)


if __name__ == "__main__":
    sys.exit(main())
