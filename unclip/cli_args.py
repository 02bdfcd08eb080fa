"""What the ``unclip`` subcommands share: argparse types and formatting, the per-stage sampling flags, device
and dtype resolution, and loading a cascade for a command (``unclip.cli``, ``unclip.cli_edits``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unclip.config import STAGES, karlo_defaults
from unclip.errors import UnclipError
from unclip.schedulers import SCHEDULERS
from unclip.speedups import PRESETS, named

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


class Formatter(argparse.HelpFormatter):
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


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def at_least(minimum: float, kind: type = int, what: str = "", unit: str = "") -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, refused below ``minimum`` as "[what] must be ≥ minimum[unit], got v"."""

    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{what + ' ' if what else ''}must be ≥ {minimum}{unit}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


positive_int = at_least(1)
guidance = at_least(0, float, "guidance")
level = at_least(0, int, "noise level")
non_negative = at_least(0)
workers = non_negative
image_side = at_least(32, int, unit=" pixels")


def schedulers(text: str) -> dict[str, str]:
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
    ("--prior-steps", "prior_num_inference_steps", "prior", "steps", positive_int, "prior steps"),
    ("--decoder-steps", "decoder_num_inference_steps", "decoder", "steps", positive_int, "64 px decoder steps"),
    ("--sr-steps", "super_res_num_inference_steps", "sr256", "steps", positive_int, "64→256 steps"),
    ("--upscale-steps", "upscale_num_inference_steps", "sr1024", "steps", positive_int, "256→1024 steps"),
    ("--prior-guidance", "prior_guidance_scale", "prior", "guidance", guidance, "prior guidance scale, ≤ 1 is off"),
    ("--decoder-guidance", "decoder_guidance_scale", "decoder", "guidance", guidance, "decoder guidance scale"),
    ("--upscale-guidance", "upscale_guidance_scale", "sr1024", "guidance", guidance, "256→1024 guidance scale"),
    (
        "--noise-level",
        "upscale_noise_level",
        "sr1024",
        "noise_level",
        level,
        "256→1024 low-res noise level: ≤ 350 (x4 upscaler), ≤ 999 (pixel upsampler)",
    ),  # fmt: skip
    ("--sr-noise-level", "super_res_noise_level", "sr256", "noise_level", level, "64→256 low-res noise level"),
    (
        "--sr-start",
        "super_res_start",
        "sr256",
        "start",
        non_negative,
        "64→256: start at this timestep from the noised low-res image (SDEdit); 0: from pure noise",
    ),  # fmt: skip
    (
        "--upscale-start",
        "upscale_start",
        "sr1024",
        "start",
        non_negative,
        "256→1024 (pixel upsampler): start at this timestep from the noised low-res image; 0: from noise",
    ),  # fmt: skip
]


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
        type=positive_int,
        default=1,
        help="best-of-n prior (DALL·E 2 §2.2): draw N image embeddings, keep the one closest to the text's",
    )
    p.add_argument(
        "--scheduler",
        type=schedulers,
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


def device_and_dtype(args):
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


def generate_device_and_dtype(args):
    device, dtype = device_and_dtype(args)
    if args.offload and device.type != "cuda":
        raise UnclipError("--offload moves models between CPU and GPU: it needs --device cuda")
    from unclip.pipeline import check_attention

    check_attention(args.attention, device)
    return device, dtype


def add_pipeline_args(p: argparse.ArgumentParser, seed_help: str = "image k of the run uses seed SEED + k") -> None:
    """--model, --out, --seed, --size, the sampling flags, --attention, --offload and --quiet."""
    p.add_argument(
        "--model", default="demo", help="preset name (a file of configs/: demo, karlo-x4, karlo) or a model YAML file"
    )
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (never overwritten)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument(
        "--size",
        type=int,
        choices=(64, 256, 1024),
        help="stop early at this size (default: the largest the model makes)",
    )
    add_sampling_args(p)
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa", help="attention kernels")
    p.add_argument("--offload", action="store_true", help="model CPU offload: keep only the running model on the GPU")
    p.add_argument("--speedups", choices=tuple(PRESETS), default="default", metavar="PRESET",
                   help="GPU speed-ups (unclip.speedups.PRESETS): no_compile = channels-last + bf16 VAE "
                   "decode; graphs = + CUDA graphs (prior, decoder, 64→256); fast = + a compiled x4 UNet")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_pipeline(args):
    """The cascade of ``--model`` on ``--device`` and the writable ``--out`` folder, after every check of
    add_pipeline_args' flags (nothing is loaded when one fails)."""
    if args.seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {args.seed}")
    from unclip.config import load_model_config
    from unclip.outputs import ensure_writable

    config = load_model_config(args.model)
    if args.size and args.size > config.max_size:
        raise UnclipError(f"--size {args.size} needs an upscaler: {args.model} has no 'upscaler:', so it ends at 256")
    speedups = named(args.speedups)
    if args.offload and speedups.compile:
        raise UnclipError(f"--offload and --speedups {args.speedups} (it compiles models) don't mix: drop one")
    device, dtype = generate_device_and_dtype(args)
    out = ensure_writable(args.out)

    from unclip.pipeline import UnCLIPCascade

    pipe = UnCLIPCascade.from_config(config, torch_dtype=dtype)
    if args.offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_attention(args.attention)
    pipe.enable_speedups(speedups)
    pipe.set_progress_bar_config(disable=args.quiet)
    return pipe, out


def save_result(out: Path, result) -> list[Path]:
    """Each image of a CascadeOutput as a PNG with its metadata line (and unclip's version); prints the paths."""
    from unclip import __version__
    from unclip.outputs import save_images

    for meta in result.metadata:
        meta["version"] = __version__
    paths = save_images(out, result.images, result.metadata)
    for path in paths:
        print(path)
    return paths
