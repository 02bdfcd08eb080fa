"""Speed switches for the cascade, each one measurable on and off with ``scripts/benchmark.py --speedups``.

    from unclip.speedups import Speedups, named
    pipe.enable_speedups(Speedups(compile=("prior", "decoder"), vae_dtype="bf16"))   # then call pipe as usual
    pipe.enable_speedups(named("graphs"))          # a preset (PRESETS); `unclip generate --speedups graphs`

* ``host_timesteps`` (on by default): the step loop keeps each scheduler's timesteps on the CPU, where its
  branches (``t > 0``, ``prev_timestep >= 0``) and table look-ups cost no device sync, and gives the model a
  device copy made once before the loop. Off: timesteps on the device, as the reference pipelines do, so
  ``UnCLIPScheduler.step`` waits for the GPU several times a step. (Drawing each step's noise from the
  images' CPU generators still copies it to the device once a step: the price of a seed that makes the same
  picture on every device.)
* ``channels_last``: the UNets and the VAE in NHWC memory format, the layout tensor-core convolutions read.
  Left at None (the default), NHWC where it is measured to pay: on CPU, where oneDNN's float32 convolutions run
  faster in it (the demo's 256→1024 UNet 3.08 → 1.71 s, the whole cascade 5.69 → 4.26 s on 2 EPYC cores), and
  NCHW on a GPU (on an H200, channels-last with the bf16 VAE ran eager in 5.94 s against the default's 5.42:
  docs/benchmarks.md). Each call's plan sets it for the device the call runs on (``fit_memory_format``), so a
  cascade moved between devices follows.
* ``compile``: the stages whose denoising model(s) go through ``torch.compile``; mode ``reduce-overhead``
  replays each forward as a CUDA graph, one launch a step instead of a thousand kernel launches (the prior
  and the 64 px decoder are launch-bound on an H100: about a TFLOP a step); the big UNets gain from fusion.
  ``fullgraph`` refuses graph breaks (each model traces as one graph: tests/test_speedups.py).
* ``vae_dtype``: the dtype the x4 upscaler's VAE decodes in. None: as the reference, float32 when the
  cascade runs in float16 (it overflows in float16: black images), else the cascade's dtype. ``bf16``:
  bfloat16 has float32's range, so it does not overflow, at half the memory traffic.
* ``vae_tiling``: decode the 1024 px image in overlapping tiles (diffusers' ``enable_tiling``): less memory;
  the VAE's mid-block attention then sees one tile, not the whole picture, so pixels change.
* ``split_guidance``: classifier-free guidance as two forwards (unconditional, conditional) instead of one
  batched forward: what batched guidance is measured against, and a little less activation memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from unclip.errors import UnclipError
from unclip.stages import STAGES
from unclip.stages.x4 import VAE_DTYPES

# What each switch touches comes from the stage registry (unclip.stages): ``compile`` compiles a stage's
# ``models``, ``channels_last`` converts its ``conv_models``.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class Speedups:
    host_timesteps: bool = True
    channels_last: bool | None = None  # None: NHWC on CPU only (``memory_format``)
    compile: tuple[str, ...] = ()
    compile_mode: str = "reduce-overhead"
    compile_backend: str = "inductor"  # "aot_eager" checks tracing without code generation (CPU tests)
    fullgraph: bool = True
    vae_dtype: str | None = None
    vae_tiling: bool = False
    split_guidance: bool = False

    def __post_init__(self):
        object.__setattr__(self, "compile", tuple(self.compile))
        unknown = [stage for stage in self.compile if stage not in STAGES]
        if unknown:
            raise UnclipError(f"compile: unknown stage '{unknown[0]}'; stages: {', '.join(STAGES)}")
        if self.compile_mode not in COMPILE_MODES:
            raise UnclipError(f"compile_mode '{self.compile_mode}' is not one of: {', '.join(COMPILE_MODES)}")
        if self.vae_dtype is not None and self.vae_dtype not in VAE_DTYPES:
            raise UnclipError(f"vae_dtype '{self.vae_dtype}' is not one of: {', '.join(VAE_DTYPES)} (or None)")

    @classmethod
    def none(cls) -> Speedups:
        """Every switch off: the reference pipelines' way (timesteps on the device, fp32 VAE under fp16)."""
        return cls(host_timesteps=False, channels_last=False)

    def describe(self) -> str:
        """The switches that differ from ``Speedups()``, e.g. ``compile=prior+decoder, vae_dtype=bf16``."""
        changed = []
        for field in dataclasses.fields(self):
            value, default = getattr(self, field.name), field.default
            if value != default and not (field.name.startswith("compile_") or field.name == "fullgraph"):
                changed.append(f"{field.name}={'+'.join(value) if field.name == 'compile' else value}")
        if self.compile:  # how it compiles, where that is not the default
            changed += [f"{name}={getattr(self, name)}" for name in ("compile_mode", "compile_backend", "fullgraph")
                        if getattr(self, name) != Speedups.__dataclass_fields__[name].default]  # fmt: skip
        return ", ".join(changed) or "defaults"


# Named configurations (``--speedups NAME`` of the CLI and of scripts/benchmark.py): "off" is the reference
# pipelines' way, "default" what UnCLIPCascade does unless told; each eager switch alone; and a cumulative ladder
# (no_compile → graphs → fast) that compiles each model once however many of its rungs a benchmark measures.
PRESETS: dict[str, Callable[[], Speedups]] = {
    "off": Speedups.none,
    "default": Speedups,
    "split_guidance": lambda: Speedups(split_guidance=True),
    "channels_last": lambda: Speedups(channels_last=True),
    "vae_bf16": lambda: Speedups(vae_dtype="bf16"),
    "vae_tiled": lambda: Speedups(vae_tiling=True),
    "no_compile": lambda: Speedups(channels_last=True, vae_dtype="bf16"),
    "graphs": lambda: Speedups(channels_last=True, vae_dtype="bf16", compile=("prior", "decoder", "sr256")),
    "fast": lambda: Speedups(channels_last=True, vae_dtype="bf16", compile=STAGES),
}


def named(name: str, compile_backend: str | None = None) -> Speedups:
    """The preset ``name``; ``compile_backend`` replaces torch.compile's backend (e.g. aot_eager for tests)."""
    if name not in PRESETS:
        raise UnclipError(f"unknown speed-up preset '{name}'; choose from: {', '.join(PRESETS)}")
    speedups = PRESETS[name]()
    return dataclasses.replace(speedups, compile_backend=compile_backend) if compile_backend else speedups


def compiled(module: torch.nn.Module, speedups: Speedups):
    """``module`` through torch.compile (sharing its weights). In ``reduce-overhead`` mode each call marks a new
    CUDA-graph step first, so an output replayed over by the next step is never one still in use."""
    inductor = speedups.compile_backend == "inductor"
    mode = {"mode": speedups.compile_mode} if inductor else {}  # the other backends take no mode
    fast = torch.compile(module, backend=speedups.compile_backend, fullgraph=speedups.fullgraph, dynamic=False, **mode)
    if not inductor or speedups.compile_mode not in ("reduce-overhead", "max-autotune"):
        return fast  # no CUDA graphs

    def run(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        return fast(*args, **kwargs)

    return run


def memory_format(speedups: Speedups, device: torch.device) -> torch.memory_format:
    """The layout of the convolutions' weights: as ``channels_last`` says, or left at None, NHWC on CPU only."""
    nhwc = device.type == "cpu" if speedups.channels_last is None else speedups.channels_last
    return torch.channels_last if nhwc else torch.contiguous_format


def fit_memory_format(pipe, speedups: Speedups) -> None:
    """Put the stages' convolutional models in ``memory_format`` for the device ``pipe`` runs on; touches nothing
    when they already are (so a server's concurrent calls never swap weights under a running one)."""
    wanted = memory_format(speedups, pipe.execution_device)
    for name in dict.fromkeys(name for stage in pipe.stages.values() for name in stage.conv_models):
        module = getattr(pipe, name)
        if any(p.dim() == 4 and not p.is_contiguous(memory_format=wanted) for p in module.parameters()):
            module.to(memory_format=wanted)


def apply(pipe, speedups: Speedups) -> dict[str, object]:
    """Set ``pipe``'s modules as ``speedups`` says (undoing what it turns off); returns the compiled callables by
    component name, which the stages run instead of the modules (``pipe._compile_cache`` keeps them all)."""
    if speedups.compile and getattr(pipe, "_offload_gpu_id", None) is not None:
        raise UnclipError("compile and model CPU offload don't mix (offload moves weights each call): choose one")
    stages = pipe.stages
    fit_memory_format(pipe, speedups)
    vae = getattr(pipe, "upscaler_vae", None)
    if vae is not None and speedups.vae_tiling:
        vae.enable_tiling()
    elif vae is not None:
        vae.disable_tiling()
    cache = pipe._compile_cache  # compiled once per module and compiler, kept when a switch goes off and on
    fast = {}
    for stage in speedups.compile:
        for name in stages[stage].models if stage in stages else ():
            module = getattr(pipe, name)
            key = (name, speedups.compile_mode, speedups.compile_backend, speedups.fullgraph)
            if key not in cache:
                cache[key] = compiled(module, speedups)
            fast[name] = cache[key]
    return fast
