"""The ``unclip`` command.

    unclip generate "a corgi playing a trumpet" --model karlo-x4 --out outputs/ --seed 0 --num-images 2
    unclip generate --help
    unclip vary photo.png --num-images 4                             # and interpolate, diff (cli_edits)
    unclip embed my/images --clip hf:openai/clip-vit-large-patch14   # CLIP image embeddings for training
    unclip data shapes data/shapes --n 20000 --workers 8             # the offline demo's dataset
    unclip eval shapes --model runs/demo/model.yaml --out eval/      # and its benchmark
    unclip serve --model demo --port 7860 --out served/              # OpenAI and A1111 APIs, a web page

Mistakes in the input end with one ``error: ...`` line on stderr and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from unclip import cli_edits, cli_metrics, cli_serve
from unclip.cli_args import (
    DTYPES,
    Formatter,
    Parser,
    add_lora_arg,
    add_pipeline_args,
    add_sampling_args,
    device_and_dtype,
    image_side,
    load_pipeline,
    lora_entries,
    positive_int,
    sampling_kwargs,
    save_result,
    stage_kwargs,
    workers,
)
from unclip.errors import UnclipError, quiet_libraries, run_entry_point
from unclip.speedups import PRESETS
from unclip.stages import SIZES


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="+", help="one or more prompts (quote each)")
    p.add_argument("--num-images", type=positive_int, default=1, help="images per prompt")
    p.add_argument("--negative-prompt", default=None, help='used in place of "" in the unguided branch')
    p.add_argument(
        "--rerank",
        metavar="MODEL/PRETRAINED",
        help="CLIP reranking: score the --num-images candidates of each prompt with this open_clip model "
        "(e.g. ViT-L-14/openai, a local checkpoint ViT-B-32/PATH, hf-hub:ORG/REPO, local-dir:FOLDER) and save the best",
    )
    p.add_argument(
        "--keep", type=positive_int, help="with --rerank: how many of each prompt's candidates to save (default: 1)"
    )
    add_pipeline_args(p)


def run_generate(args) -> int:
    from unclip.plan import check_keep, prompt_list

    prompt_list(args.prompt)
    check_keep(args.keep, args.rerank is not None, args.num_images)
    pipe, out = load_pipeline(args)
    rerank = None
    if args.rerank:
        from unclip.rerank import ClipReranker

        rerank = ClipReranker.from_name(args.rerank, device=pipe.execution_device)
    for i, prompt in enumerate(args.prompt):
        result = pipe(
            prompt,
            negative_prompt=args.negative_prompt,
            num_images_per_prompt=args.num_images,
            seed=args.seed + i * args.num_images,
            size=args.size,
            rerank=rerank,
            keep=args.keep,
            **sampling_kwargs(args),
        )
        save_result(out, result)
    return 0


def add_embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "data", help="an imagefolder with metadata.jsonl, a .tar shard, a folder of shards or shards-{000..009}.tar"
    )
    p.add_argument(
        "--clip",
        required=True,
        help="openclip:MODEL/PRETRAINED, hf:HUB_ID_OR_FOLDER or tiny:DIM (e.g. hf:openai/clip-vit-large-patch14)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per CLIP forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--num-workers", type=workers, default=0, help="DataLoader worker processes decoding images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_embed(args) -> int:
    device, dtype = device_and_dtype(args)
    from unclip.train.embeddings import embed_dataset, read_cache

    path = embed_dataset(
        args.data,
        args.clip,
        batch_size=args.batch_size,
        device=device,
        progress=not args.quiet,
        dtype=dtype,
        num_workers=args.num_workers,
    )
    cache = read_cache(path)
    print(path)
    skipped = int((~cache.valid).sum())
    print(f"embedded {len(cache) - skipped} images, skipped {skipped} unreadable", file=sys.stderr)
    return 0


def add_data_shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, help="a new or empty folder: the PNGs and metadata.jsonl (an imagefolder)")
    p.add_argument("--n", type=positive_int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="image i is a function of (SEED, i) alone")
    p.add_argument("--size", type=image_side, default=1024, help="image side in pixels")
    p.add_argument("--workers", type=workers, default=0, help="processes drawing and writing (0: this one)")
    p.add_argument("--outline", type=float, default=0.0, metavar="FRACTION", help="a dark band this wide (a "
                   "fraction of the side, e.g. 0.03) inside each shape's edge: a style for a LoRA adapter; each "
                   "image's plain twin goes into plain/ for its CLIP embedding (clip_file_name)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_data_shapes(args) -> int:
    if args.seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {args.seed}")
    if not 0 <= args.outline < 0.2:
        raise UnclipError(f"--outline must be a fraction of the side in [0, 0.2), e.g. 0.03, got {args.outline}")
    from unclip.demo.shapes import write_dataset

    print(write_dataset(args.out, args.n, args.seed, args.size, workers=args.workers, progress=not args.quiet,
                        outline=args.outline))  # fmt: skip
    return 0


def add_eval_shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="preset name (a file of configs/) or a model YAML file")
    p.add_argument("--n", type=positive_int, default=96, help="prompts, in rounds of 24: the held-out pairs first")
    p.add_argument("--plain", action="store_true", help="say every part of each prompt, plainly typed (the list "
                   "it first used); default: every form of the grammar and the ways people type it")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="image k uses seed SEED + k")
    p.add_argument(
        "--size", type=int, choices=SIZES, default=64, help="64: prior and decoder; 256, 1024: upsamplers too"
    )
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per cascade call")
    p.add_argument("--out", type=Path, help="also save the images here, with metadata.jsonl (never overwritten)")
    p.add_argument(
        "--report",
        type=Path,
        help="the JSON report, must not exist (default: OUT/report.json or ./eval-shapes.json, else -2, -3 ...)",
    )
    add_sampling_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_eval_shapes(args) -> int:
    if args.seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {args.seed}")
    from unclip.config import load_model_config
    from unclip.demo import eval as shapes_eval
    from unclip.loading import stage_kinds
    from unclip.outputs import ensure_writable, save_images
    from unclip.plan import resolve

    config = load_model_config(args.model)
    resolve(config, size=args.size, scheduler=args.scheduler, stage_args=stage_kwargs(args),
            kinds=stage_kinds(config))  # fmt: skip
    device, dtype = device_and_dtype(args)
    if args.report is not None:
        shapes_eval.check_report_path(args.report)
    out = ensure_writable(args.out) if args.out else None

    from unclip import __version__
    from unclip.demo.shapes import eval_prompts
    from unclip.pipeline import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(config, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    evaluation = shapes_eval.evaluate(
        pipe,
        eval_prompts(args.n, forms=not args.plain),
        seed=args.seed,
        size=args.size,
        batch_size=args.batch_size,
        save=(lambda images, metadata: save_images(out, images, metadata)) if out else None,
        progress=not args.quiet,
        **sampling_kwargs(args),
    )
    print(shapes_eval.format_table(evaluation.summary()))
    report = {"version": __version__, "prompts": "plain" if args.plain else "every form", **evaluation.report()}
    default = out / "report.json" if out else Path("eval-shapes.json")
    print(f"report: {shapes_eval.write_report(report, args.report, default)}")
    return 0


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", type=Path, help="a .txt (a prompt a line, # comments), .jsonl or .csv prompt file")
    p.add_argument("--model", default="demo", help="preset name (a file of configs/) or a model YAML file")
    p.add_argument("--out", type=Path, required=True, help="the run's folder: rerun the same command to resume")
    p.add_argument("--num-images", type=positive_int, default=1, help="images per prompt (a row may override)")
    p.add_argument("--batch-size", type=positive_int, default=4, help="images per cascade call, across prompts")
    p.add_argument("--seed", type=int, default=0, help="image i of row r: SEED + 10000 r + i (a row may set its own)")
    p.add_argument("--size", type=int, choices=SIZES, help="stop early at this size (default: the largest)")
    p.add_argument("--negative-prompt", default=None, help="for the rows that set none")
    add_sampling_args(p)
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa", help="attention kernels")
    p.add_argument("--speedups", choices=tuple(PRESETS), default="default", metavar="PRESET",
                   help="GPU speed-ups (unclip.speedups.PRESETS), as for generate")  # fmt: skip
    add_lora_arg(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_const", const="append", dest="mode", help="add to a folder of "
                      "another command whose images this one keeps (rows added to the prompt file)")  # fmt: skip
    mode.add_argument("--force", action="store_const", const="force", dest="mode", help="run in a folder of another "
                      "command; its images this command would make differently move to superseded/")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_batch(args) -> int:
    from unclip.batch.command import Request, run

    request = Request(
        prompts=args.prompts,
        model=args.model,
        out=args.out,
        num_images=args.num_images,
        seed=args.seed,
        size=args.size,
        negative_prompt=args.negative_prompt,
        sampling=sampling_kwargs(args),
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
        attention=args.attention,
        speedups=args.speedups,
        mode=args.mode,
        progress=not args.quiet,
        lora=lora_entries(args.lora),
    )
    summary = run(request)
    if summary is not None:  # the main process's
        print(summary)
    return 0


# subcommand → (help, add_args, run), for the commands that have them: `unclip data shapes`, `unclip eval shapes`
DATA_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "shapes": ("the offline demo's procedural shapes (an imagefolder)", add_data_shapes_args, run_data_shapes),
}
EVAL_COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "shapes": ("generate the shapes prompts and score them from pixels", add_eval_shapes_args, run_eval_shapes),
    **cli_metrics.COMMANDS,
}


def _group(commands: dict[str, tuple[str, Callable, Callable]], dest: str) -> tuple[Callable, Callable]:
    """add_args and run of a command made of subcommands."""

    def add_args(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest=dest, required=True, parser_class=Parser)
        for name, (help_text, add, _) in commands.items():
            add(sub.add_parser(name, help=help_text, formatter_class=Formatter))

    def run(args) -> int:
        return commands[getattr(args, dest)][2](args)

    return add_args, run


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "generate": ("text → image through the cascade", add_generate_args, run_generate),
    "batch": ("a prompt file → a folder of images: resumable, over many processes", add_batch_args, run_batch),
    **cli_edits.COMMANDS,
    "embed": ("precompute the CLIP image embeddings of a training dataset", add_embed_args, run_embed),
    "data": ("write a training dataset: shapes", *_group(DATA_COMMANDS, "dataset")),
    "eval": ("score a model or folders: shapes, clip-score, fd, coco", *_group(EVAL_COMMANDS, "benchmark")),
    **cli_serve.COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="unclip", description="DALL·E 2-style text-to-image: CLIP → prior → decoder → 256 → 1024 px")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, formatter_class=Formatter))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        quiet_libraries()
        return COMMANDS[args.command][2](args)

    return run_entry_point(run, "interrupted; files written so far are kept")


if __name__ == "__main__":
    sys.exit(main())
