"""What the ``unclip`` subcommands share: argparse types and formatting, the per-stage flags (made from the
settings table, ``unclip.plan.KEYWORDS``), and loading a cascade for a command (``cli.py``, ``cli_edits.py``)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unclip import runtime
from unclip.config import karlo_defaults
from unclip.errors import UnclipError
from unclip.plan import KEYWORDS, Name
from unclip.runtime import DTYPES, resolve_device_and_dtype
from unclip.schedulers import SCHEDULERS
from unclip.settings import SETTINGS
from unclip.speedups import PRESETS
from unclip.stages import SIZES, STAGES


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


def flag_type(name: Name) -> Callable[[str], Any]:
    """An argparse type for one per-stage setting: its kind, then its one check (``unclip.settings``)."""
    setting = SETTINGS[name.setting]

    def parse(text: str):
        value = setting.kind(text)
        problem = setting.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = setting.kind.__name__  # argparse's "invalid int value: 'x'"
    return parse


def add_sampling_args(p: argparse.ArgumentParser, inversion: bool = False) -> None:
    """A flag per (stage, setting) of the settings table (``unclip.plan.KEYWORDS``), ``--scheduler``, ``--dtype``
    and ``--device``. The decoder's start only with ``inversion`` (the edits that DDIM-invert an image): it is where
    the inversion stops."""
    defaults = karlo_defaults()
    for keyword, name in KEYWORDS.items():
        if name.stage == "decoder" and name.setting == "start" and not inversion:
            continue
        default = getattr(defaults[name.stage], name.setting)
        p.add_argument(
            *name.flags,
            dest=keyword,
            type=flag_type(name),
            metavar=name.setting.upper(),
            help=f"{name.help} (default: from the model config; Karlo's: {default})",
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
    return {"scheduler": args.scheduler, **stage_kwargs(args)}


def stage_kwargs(args) -> dict:
    """Only the per-stage keywords of ``sampling_kwargs``."""
    return {keyword: getattr(args, keyword) for keyword in KEYWORDS if hasattr(args, keyword)}


def device_and_dtype(args):
    return resolve_device_and_dtype(args.device, args.dtype)


def add_pipeline_args(
    p: argparse.ArgumentParser, seed_help: str = "image k of the run uses seed SEED + k", inversion: bool = False
) -> None:
    """--model, --out, --seed, --size, the sampling flags, --attention, --offload and --quiet."""
    p.add_argument(
        "--model",
        default="demo",
        help="preset name (a file of configs/: demo, karlo-x4, karlo), a model YAML file, or a folder written by "
        "save_pretrained or the trainer",
    )
    p.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (never overwritten)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument(
        "--size",
        type=int,
        choices=SIZES,
        help="stop early at this size (default: the largest the model makes)",
    )
    add_sampling_args(p, inversion)
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa", help="attention kernels")
    p.add_argument("--offload", action="store_true", help="model CPU offload: keep only the running model on the GPU")
    p.add_argument("--speedups", choices=tuple(PRESETS), default="default", metavar="PRESET",
                   help="GPU speed-ups (unclip.speedups.PRESETS): no_compile = channels-last + bf16 VAE "
                   "decode; graphs = + CUDA graphs (prior, decoder, 64→256); fast = + a compiled x4 UNet")  # fmt: skip
    add_lora_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_lora_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="a LoRA adapter (.safetensors or its folder) on the stage it was trained for, at SCALE "
                   "(default 1; 0: off); repeat to stack adapters")  # fmt: skip


def lora_entries(values: list[str]) -> list[dict]:
    """``--lora PATH[:SCALE]`` values as model-config entries, each file checked (before any model loads)."""
    from unclip.lora import parse_scale, read_adapter

    entries = []
    for text in values:
        path, colon, scale = text.rpartition(":")
        entry = {"path": path, "scale": parse_scale(scale, f"--lora {text}")} if colon and not Path(text).exists() \
            else {"path": text, "scale": 1.0}  # fmt: skip
        entry["path"] = str(read_adapter(entry["path"], weights=False).path.resolve())
        entries.append(entry)
    return entries


def load_pipeline(args, first_stage: str = "prior", inverted: bool = False):
    """The cascade of ``--model`` on ``--device`` and the writable ``--out`` folder, after every check of
    add_pipeline_args' flags that needs no model (nothing is loaded when one fails): the plan of the call
    (``unclip.plan.resolve``), device, dtype, attention, offload and speed-ups (``unclip.runtime.resolve``)."""
    if args.seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {args.seed}")
    from unclip.config import load_model_config
    from unclip.loading import stage_kinds
    from unclip.outputs import ensure_writable
    from unclip.plan import resolve

    config = load_model_config(args.model)
    config = dataclasses.replace(config, lora=[*config.lora, *lora_entries(getattr(args, "lora", []))])
    resolve(config, size=args.size, scheduler=args.scheduler, stage_args=stage_kwargs(args), first_stage=first_stage,
            inverted=inverted, kinds=stage_kinds(config))  # fmt: skip
    device, dtype, speedups = runtime.resolve(args.device, args.dtype, args.attention, args.offload, args.speedups)
    out = ensure_writable(args.out)

    from unclip.pipeline import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(config, torch_dtype=dtype)
    runtime.place(pipe, device, attention=args.attention, offload=args.offload, speedups=speedups,
                  progress=not args.quiet)  # fmt: skip
    return pipe, out


def save_result(out: Path, result) -> list[Path]:
    """Each image of a CascadeOutput as a PNG with its metadata line; prints the paths."""
    from unclip.outputs import save_images

    paths = save_images(out, result.images, result.metadata)
    for path in paths:
        print(path)
    return paths
