"""Where and how a cascade runs: device, dtype and attention kernels, resolved and checked before anything loads.

device, dtype = resolve_device_and_dtype("auto", "auto")   # CUDA in fp16 when there is a GPU, else CPU in fp32
check_attention("xformers", device)                        # one-line error unless it can run there
"""

from __future__ import annotations

import importlib.util

import torch

from unclip.errors import UnclipError

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def resolve_device_and_dtype(name: str, dtype_name: str) -> tuple[torch.device, torch.dtype]:
    """``--device`` and ``--dtype`` resolved: auto is CUDA in fp16 when there is a GPU, else CPU in fp32."""
    device = name
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError:
        raise UnclipError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UnclipError("--device cuda but no CUDA GPU is visible: use --device cpu")
    if dtype_name not in ("auto", *DTYPES):
        raise UnclipError(f"unknown dtype '{dtype_name}': use auto, {', '.join(DTYPES)}")
    dtype = dtype_name if dtype_name != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    if dtype == "fp16" and device.type == "cpu":
        raise UnclipError("--dtype fp16 needs a CUDA GPU: use --dtype fp32 (or bf16) on CPU")
    return device, getattr(torch, DTYPES[dtype])


def check_attention(backend: str, device: torch.device | str) -> None:
    """Refuse an attention backend that cannot run here, before anything is loaded."""
    if backend == "sdpa":
        return
    if backend != "xformers":
        raise UnclipError(f"unknown attention backend '{backend}'; choose sdpa or xformers")
    if importlib.util.find_spec("xformers") is None:
        raise UnclipError("--attention xformers: xformers is not installed; pip install 'unclip[xformers]' or use sdpa")
    if torch.device(device).type != "cuda":
        raise UnclipError("--attention xformers needs a CUDA device; use sdpa on CPU")


def resolve(device: str, dtype: str, attention: str = "sdpa", offload: bool = False, speedups: str = "default"):
    """Every run-time choice of a command checked before loading: ``(device, dtype, Speedups)``."""
    from unclip.speedups import named

    chosen = named(speedups)
    if offload and chosen.compile:
        raise UnclipError(f"--offload and --speedups {speedups} (it compiles models) don't mix: drop one")
    device_, dtype_ = resolve_device_and_dtype(device, dtype)
    if offload and device_.type != "cuda":
        raise UnclipError("--offload moves models between CPU and GPU: it needs --device cuda")
    check_attention(attention, device_)
    return device_, dtype_, chosen


def place(pipe, device: torch.device, *, attention: str = "sdpa", offload: bool = False, speedups=None,
          progress: bool = True) -> None:  # fmt: skip
    """Put a loaded cascade where it runs and switch on what ``resolve`` checked (attention is not checked again)."""
    if offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if speedups is not None:
        pipe.enable_speedups(speedups)
    pipe.set_progress_bar_config(disable=not progress)
