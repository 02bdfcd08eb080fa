"""The ``unclip`` command.

    unclip generate "a corgi playing a trumpet" --model karlo-x4 --out outputs/ --seed 0 --num-images 2
    unclip generate --help
    unclip embed my/images --clip hf:openai/clip-vit-large-patch14   # CLIP image embeddings for training
    unclip data shapes data/shapes --n 20000 --workers 8             # the offline demo's dataset
    unclip eval shapes --model runs/demo/model.yaml --out eval/      # and its benchmark

Mistakes in the input end with one ``error: ...`` line on stderr and exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unclip.config import STAGES, karlo_defaults
from unclip.errors import UnclipError, run_entry_point
from unclip.schedulers import SCHEDULERS

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


class _Formatter(argparse.HelpFormatter):
    """Shows a default only where there is one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            action.default is not None
            and action.default is not False
            and action.default != argparse.SUPPRESS
            and "default" not in text
        ):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _at_least(minimum: float, kind: type = int, what: str = "", unit: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, refused below ``minimum`` as "[what] must be ≥ minimum[unit], got v"."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what + ' ' if what else ''}must be ≥ {minimum}{unit}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


_positive_int = _at_least(1)
_guidance = _at_least(0, float, "guidance")
_level = _at_least(0, int, "noise level")
_non_negative = _at_least(0)
_workers = _non_negative
_image_side = _at_least(32, int, unit=" pixels")


def _schedulers(text: str) -> dict[str, str]:
    """``dpmpp`` for every stage, or ``prior=ddim,sr1024=dpmpp`` per stage."""
    if "=" not in text:
        pairs = {stage: text for stage in STAGES}
    else:
        pairs = dict(item.split("=", 1) for item in text.split(",") if item)
    for stage, name in pairs.items():
        if stage not in STAGES:
            raise argparse.ArgumentTypeError(f"unknown stage '{stage}'; stages: {', '.join(STAGES)}")
        if name not in SCHEDULERS:
            raise argparse.ArgumentTypeError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}")
    return pairs


# flag, UnCLIPCascade.__call__ keyword, stage, StageSettings field, type, help
STAGE_FLAGS = [
    ("--prior-steps", "prior_num_inference_steps", "prior", "steps", _positive_int, "prior steps"),
    ("--decoder-steps", "decoder_num_inference_steps", "decoder", "steps", _positive_int, "64 px decoder steps"),
    ("--sr-steps", "super_res_num_inference_steps", "sr256", "steps", _positive_int, "64→256 steps"),
    ("--upscale-steps", "upscale_num_inference_steps", "sr1024", "steps", _positive_int, "256→1024 steps"),
    ("--prior-guidance", "prior_guidance_scale", "prior", "guidance", _guidance, "prior guidance scale, ≤ 1 is off"),
    ("--decoder-guidance", "decoder_guidance_scale", "decoder", "guidance", _guidance, "decoder guidance scale"),
    ("--upscale-guidance", "upscale_guidance_scale", "sr1024", "guidance", _guidance, "256→1024 guidance scale"),
    ("--noise-level", "upscale_noise_level", "sr1024", "noise_level", _level,
     "256→1024 low-res noise level: ≤ 350 (x4 upscaler), ≤ 999 (pixel upsampler)"),  # fmt: skip
    ("--sr-noise-level", "super_res_noise_level", "sr256", "noise_level", _level, "64→256 low-res noise level"),
    ("--sr-start", "super_res_start", "sr256", "start", _non_negative,
     "64→256: start at this timestep from the noised low-res image (SDEdit); 0: from pure noise"),  # fmt: skip
    ("--upscale-start", "upscale_start", "sr1024", "start", _non_negative,
     "256→1024 (pixel upsampler): start at this timestep from the noised low-res image; 0: from noise"),  # fmt: skip
]


def add_generate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="+", help="one or more prompts (quote each)")
    p.add_argument(
        "--model", default="demo", help="preset name (a file of configs/: demo, karlo-x4, karlo) or a model YAML file"
    )
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (never overwritten)")
    p.add_argument("--seed", type=int, default=0, help="image k of the run uses seed SEED + k")
    p.add_argument("--num-images", type=_positive_int, default=1, help="images per prompt")
    p.add_argument(
        "--size",
        type=int,
        choices=(64, 256, 1024),
        help="stop early at this size (default: the largest the model makes)",
    )
    p.add_argument("--negative-prompt", default=None, help='used in place of "" in the unguided branch')
    add_sampling_args(p)
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa", help="attention kernels")
    p.add_argument("--offload", action="store_true", help="model CPU offload: keep only the running model on the GPU")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """Per-stage steps, guidance and noise levels, ``--scheduler``, ``--dtype`` and ``--device``."""
    defaults = karlo_defaults()
    for flag, kwarg, stage, field, kind, what in STAGE_FLAGS:
        default = getattr(defaults[stage], field)
        p.add_argument(
            flag,
            dest=kwarg,
            type=kind,
            metavar=field.upper(),
            help=f"{what} (default: from the model config; Karlo's: {default})",
        )
    p.add_argument(
        "--prior-samples",
        type=_positive_int,
        default=1,
        help="best-of-n prior (DALL·E 2 §2.2): draw N image embeddings, keep the one closest to the text's",
    )
    p.add_argument(
        "--scheduler",
        type=_schedulers,
        default=None,
        help=f"one of {', '.join(SCHEDULERS)} for all stages, or per stage: prior=ddim,sr1024=dpmpp (default: default)",
    )
    p.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="auto: fp16 on CUDA, fp32 on CPU (fp16 on CPU is refused)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def sampling_kwargs(args) -> dict:
    """The UnCLIPCascade.__call__ keywords of add_sampling_args' flags (None: the model config's)."""
    return {
        "scheduler": args.scheduler,
        "prior_samples": args.prior_samples,
        **{kwarg: getattr(args, kwarg) for _, kwarg, *_ in STAGE_FLAGS},
    }


def _device_and_dtype(args):
    return resolve_device_and_dtype(args.device, args.dtype)


def resolve_device_and_dtype(name: str, dtype_name: str):
    """``--device`` and ``--dtype`` resolved: auto is CUDA in fp16 when there is a GPU, else CPU in fp32."""
    import torch

    device = name
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UnclipError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnclipError("--device cuda but no CUDA GPU is visible: use --device cpu")
    dtype = dtype_name if dtype_name != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    if dtype == "fp16" and device.type == "cpu":
        raise UnclipError("--dtype fp16 needs a CUDA GPU: use --dtype fp32 (or bf16) on CPU")
    return device, getattr(torch, DTYPES[dtype])


def _generate_device_and_dtype(args):
    device, dtype = _device_and_dtype(args)
    if args.offload and device.type != "cuda":
        raise UnclipError("--offload moves models between CPU and GPU: it needs --device cuda")
    from unclip.pipeline import check_attention

    check_attention(args.attention, device)
    return device, dtype


def run_generate(args) -> int:
    if any(not p.strip() for p in args.prompt):
        raise UnclipError('the prompt is empty: give a text such as "a corgi playing a trumpet"')
    if args.seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {args.seed}")
    from unclip.config import load_model_config
    from unclip.outputs import ensure_writable, save_images

    config = load_model_config(args.model)
    if args.size and args.size > config.max_size:
        raise UnclipError(f"--size {args.size} needs an upscaler: {args.model} has no 'upscaler:', so it ends at 256")
    device, dtype = _generate_device_and_dtype(args)
    out = ensure_writable(args.out)

    from unclip import __version__
    from unclip.pipeline import UnCLIPCascade

    pipe = UnCLIPCascade.from_config(config, torch_dtype=dtype)
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_attention(args.attention)
    pipe.set_progress_bar_config(disable=args.quiet)
    for i, prompt in enumerate(args.prompt):
        result = pipe(
            prompt,
            negative_prompt=args.negative_prompt,
            num_images_per_prompt=args.num_images,
            seed=args.seed + i * args.num_images,
            size=args.size,
            **sampling_kwargs(args),
        )
        for meta in result.metadata:
            meta["version"] = __version__
        for path in save_images(out, result.images, result.metadata):
            print(path)
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
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per CLIP forward pass")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--num-workers", type=_workers, default=0, help="DataLoader worker processes decoding images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_embed(args) -> int:
    device, dtype = _device_and_dtype(args)
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
    p.add_argument("--n", type=_positive_int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="image i is a function of (SEED, i) alone")
    p.add_argument("--size", type=_image_side, default=1024, help="image side in pixels")
    p.add_argument("--workers", type=_workers, default=0, help="processes drawing and writing (0: this one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_data_shapes(args) -> int:
    if args.seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {args.seed}")
    from unclip.demo.shapes import write_dataset

    print(write_dataset(args.out, args.n, args.seed, args.size, workers=args.workers, progress=not args.quiet))
    return 0


def add_eval_shapes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="preset name (a file of configs/) or a model YAML file")
    p.add_argument("--n", type=_positive_int, default=96, help="prompts, in rounds of 24: the held-out pairs first")
    p.add_argument("--seed", type=int, default=0, help="image k uses seed SEED + k")
    p.add_argument(
        "--size", type=int, choices=(64, 256, 1024), default=64, help="64: prior and decoder; 256, 1024: upsamplers too"
    )
    p.add_argument("--batch-size", type=_positive_int, default=16, help="prompts per cascade call")
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
    from unclip.outputs import ensure_writable, save_images

    config = load_model_config(args.model)
    if args.size > config.max_size:
        raise UnclipError(f"--size {args.size} needs an upscaler: {args.model} has no 'upscaler:', so it ends at 256")
    device, dtype = _device_and_dtype(args)
    if args.report is not None:
        shapes_eval.check_report_path(args.report)
    out = ensure_writable(args.out) if args.out else None

    from unclip import __version__
    from unclip.demo.shapes import eval_prompts
    from unclip.pipeline import UnCLIPCascade

    pipe = UnCLIPCascade.from_config(config, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def save(images, metadata):
        for meta in metadata:
            meta["version"] = __version__
        return save_images(out, images, metadata)

    evaluation = shapes_eval.evaluate(
        pipe,
        eval_prompts(args.n),
        seed=args.seed,
        size=args.size,
        batch_size=args.batch_size,
        save=save if out else None,
        progress=not args.quiet,
        **sampling_kwargs(args),
    )
    print(shapes_eval.format_table(evaluation.summary()))
    report = {"version": __version__, **evaluation.report()}
    default = out / "report.json" if out else Path("eval-shapes.json")
    print(f"report: {shapes_eval.write_report(report, args.report, default)}")
    return 0


def add_batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", type=Path, help="a .txt (a prompt a line, # comments), .jsonl or .csv prompt file")
    p.add_argument("--model", default="demo", help="preset name (a file of configs/) or a model YAML file")
    p.add_argument("--out", type=Path, required=True, help="the run's folder: rerun the same command to resume")
    p.add_argument("--num-images", type=_positive_int, default=1, help="images per prompt (a row may override)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="images per cascade call, across prompts")
    p.add_argument("--seed", type=int, default=0, help="image i of row r: SEED + 10000 r + i (a row may set its own)")
    p.add_argument("--size", type=int, choices=(64, 256, 1024), help="stop early at this size (default: the largest)")
    p.add_argument("--negative-prompt", default=None, help="for the rows that set none")
    add_sampling_args(p)
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa", help="attention kernels")
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
        mode=args.mode,
        progress=not args.quiet,
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
}


def _group(commands: dict[str, tuple[str, Callable, Callable]], dest: str) -> tuple[Callable, Callable]:
    """add_args and run of a command made of subcommands."""

    def add_args(p: argparse.ArgumentParser) -> None:
        sub = p.add_subparsers(dest=dest, required=True, parser_class=_Parser)
        for name, (help_text, add, _) in commands.items():
            add(sub.add_parser(name, help=help_text, formatter_class=_Formatter))

    def run(args) -> int:
        return commands[getattr(args, dest)][2](args)

    return add_args, run


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "generate": ("text → image through the cascade", add_generate_args, run_generate),
    "batch": ("a prompt file → a folder of images: resumable, over many processes", add_batch_args, run_batch),
    "embed": ("precompute the CLIP image embeddings of a training dataset", add_embed_args, run_embed),
    "data": ("write a training dataset: shapes", *_group(DATA_COMMANDS, "dataset")),
    "eval": ("score a model on a benchmark: shapes", *_group(EVAL_COMMANDS, "benchmark")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unclip", description="DALL·E 2-style text-to-image: CLIP → prior → decoder → 256 → 1024 px")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, formatter_class=_Formatter))
    return parser


class _WarningLine(logging.Handler):
    """unclip's warnings as ``warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {record.getMessage()}", file=sys.stderr)


def quiet_libraries() -> None:
    log = logging.getLogger("unclip")
    log.setLevel(logging.WARNING)
    if not any(isinstance(h, _WarningLine) for h in log.handlers):
        log.addHandler(_WarningLine())
    import diffusers
    import transformers

    for library in (diffusers, transformers):  # their "Loading weights" bars would bury ours
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        quiet_libraries()
        return COMMANDS[args.command][2](args)

    return run_entry_point(run, "interrupted; files written so far are kept")


if __name__ == "__main__":
    sys.exit(main())
