"""What every stage is: ``Stage``, the inputs a call gives its stages (``StageInputs``), and the checks they share.

A stage kind is a subclass of ``Stage`` in its own file of ``unclip/stages/``, with its denoiser beside its
``run``; ``unclip/stages/__init__.py`` registers one instance of each. The class attributes say everything the
rest of unclip needs to know about it: the stage it fills, the names of its settings, the components it runs,
its reference scheduler, the sizes it maps between. ``run`` maps the previous stage's output to its own::

    prior: None → z_i (B, D)    decoder: z_i → 64 px    sr256: 64 → 256 px    sr1024: 256 → 1024 px
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from diffusers import SchedulerMixin, UnCLIPScheduler

from unclip.errors import UnclipError
from unclip.guidance import Denoiser, guided
from unclip.repaint import Inpainting, KnownRegion
from unclip.sampling import first_step, sample
from unclip.schedulers import learned_range, make_scheduler
from unclip.settings import StageSettings

if TYPE_CHECKING:
    from unclip.pipeline import UnCLIPCascade
    from unclip.text import TextConditioning


@dataclass
class StageInputs:
    """What one call gives its stages besides the previous stage's output."""

    generators: list[torch.Generator]  # one per image: all of its noise, in every stage
    text: TextConditioning | None = None  # the prompts' CLIP text conditioning (the prior's; the decoder's too)
    captions: TextConditioning | None = None  # the decoder's caption rows when they are not ``text`` (the edits)
    prompts: list[str] = field(default_factory=list)  # the x4 upscaler's text, one per image
    negatives: list[str] = field(default_factory=list)
    decoder_noise: torch.Tensor | None = None  # the decoder's x_T (default: drawn from the generators)
    inverted: bool = False  # decoder_noise is a DDIM inversion, at the first timestep ≤ the decoder's start
    edit: Inpainting | None = None  # an inpainting or outpainting: every stage after the prior keeps its known region


class Stage:
    """One kind of stage. Subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]  # the stage it fills: prior, decoder, sr256 or sr1024
    kind: ClassVar[str]  # its key in the registry (two kinds fill sr1024: x4 and pixel)
    keyword: ClassVar[str]  # Python keyword prefix: prior_num_inference_steps
    flag: ClassVar[str]  # CLI flag prefix: --prior-steps
    label: ClassVar[str]  # PNG text prefix: "Prior CFG scale" ("" for the decoder: A1111's own keys)
    title: ClassVar[str]  # what help texts call it: "prior", "64→256"
    input_size: ClassVar[int]  # it runs when the output is larger than this
    size: ClassVar[int]  # the side of what it makes (0: an embedding)
    layout: ClassVar[str]  # the hub layout its components come from (unclip.loading.LAYOUTS)
    components: ClassVar[tuple[str, ...]]  # the cascade components it runs, in running (offload) order
    models: ClassVar[tuple[str, ...]]  # its denoising models: what speedups.compile compiles
    conv_models: ClassVar[tuple[str, ...]] = ()  # its convolutional models: what channels_last converts
    scheduler: ClassVar[str]  # the cascade component that holds its reference scheduler
    settings: ClassVar[tuple[str, ...]]  # the SETTINGS it takes
    defaults: ClassVar[StageSettings]  # the reference pipelines' defaults
    flag_aliases: ClassVar[dict[str, tuple[str, ...]]] = {}  # setting → older flags that still work
    setting_help: ClassVar[dict[str, str]] = {}  # setting → what it means here, where the table's help won't do
    trains_on_clip: ClassVar[bool] = False  # its training needs the CLIP image embeddings z_i of its images
    missing: ClassVar[str] = "this model has no {title} stage: it cannot make that size"  # asked for, but absent

    # ------------------------------------------------------------------------------------- the cascade
    def present(self, cascade: UnCLIPCascade) -> bool:
        """Whether ``cascade`` has this stage: all its components are loaded."""
        return all(getattr(cascade, name, None) is not None for name in self.components)

    def reference_scheduler(self, cascade: UnCLIPCascade) -> SchedulerMixin:
        return getattr(cascade, self.scheduler)

    def make_scheduler(self, cascade: UnCLIPCascade, s: StageSettings) -> SchedulerMixin:
        """A fresh ``s.scheduler`` over this stage's noise schedule; a bad name is an error naming the stage."""
        try:
            return make_scheduler(s.scheduler, self.reference_scheduler(cascade))
        except UnclipError as error:
            raise UnclipError(f"{self.name}: {error}") from None

    def max_noise_level(self, cascade: UnCLIPCascade) -> int | None:
        """The largest ``noise_level`` it takes (None: it takes none)."""
        return None

    def used(self, s: StageSettings, scheduler: SchedulerMixin, inverted: bool) -> tuple[str, ...]:
        """The settings that decide what it makes with ``scheduler``: what the metadata records."""
        return tuple(
            name for name in self.settings
            if (name != "eta" or takes_eta(scheduler)) and (name != "quiet_steps" or learned_range(scheduler))
        )  # fmt: skip

    def check(self, cascade: UnCLIPCascade, s: StageSettings, inverted: bool = False) -> tuple[str, ...]:
        """Every check of ``s`` that needs this cascade's schedulers, before any stage runs; returns ``used``."""
        scheduler = self.make_scheduler(cascade, s)
        if isinstance(scheduler, UnCLIPScheduler) and s.steps < 2:  # it divides by steps − 1
            raise UnclipError(
                f"{self.name}: the UnCLIP scheduler needs steps ≥ 2, got {s.steps}; for one step choose ddim"
            )
        if s.eta and not takes_eta(scheduler):
            raise UnclipError(
                f"{self.name}: eta {s.eta} needs the ddim scheduler ({type(scheduler).__name__} has no η): "
                f"choose scheduler {self.name}=ddim, or leave eta at 0"
            )
        used = self.used(s, scheduler, inverted)
        for name in ("start", "pad", "quiet_steps"):
            if getattr(s, name) > 0 and name not in self.settings:
                raise UnclipError(f"{self.name}: this {self.title} stage ({self.kind}) takes no {name}: remove it")
        if s.start > 0 and "start" in used:
            scheduler.set_timesteps(s.steps)
            first_step(scheduler.timesteps, s.start, s.steps, self.name)
        limit = self.max_noise_level(cascade)
        if limit is not None and s.noise_level > limit:
            raise UnclipError(f"{self.name} noise_level must be ≤ {limit}, got {s.noise_level}")
        return used

    # ----------------------------------------------------------------------------------------- running
    def run(self, cascade: UnCLIPCascade, x: Any, inputs: StageInputs, s: StageSettings) -> torch.Tensor:
        """The stage's output from the previous stage's (None for the first)."""
        raise NotImplementedError

    def known(self, inputs: StageInputs, size: int, like: torch.Tensor) -> KnownRegion | None:
        """An edit's known region at ``size`` px (``unclip.repaint``) on ``like``'s device and dtype; else None."""
        if inputs.edit is None:
            return None
        return inputs.edit.region(size, inputs.generators, self.name, like)

    def guided(self, cascade: UnCLIPCascade, denoiser: Denoiser, s: StageSettings, channels: int | None = None):
        """``denoiser`` under classifier-free guidance at ``s.guidance`` (itself when that is ≤ 1)."""
        return guided(denoiser, s.guidance, channels, split=cascade.speedups.split_guidance)

    def sample(
        self, cascade: UnCLIPCascade, denoiser: Denoiser, x_T: torch.Tensor, s: StageSettings, generators, **kwargs
    ) -> torch.Tensor:
        """The one loop (``unclip.sampling.sample``) with this stage's scheduler, η, the cascade's progress bar
        and speed-ups."""
        scheduler = self.make_scheduler(cascade, s)
        step_kwargs = {"eta": s.eta} if takes_eta(scheduler) else None
        return sample(
            denoiser, scheduler, x_T, s.steps, generators, desc=self.name,
            progress=lambda steps, desc: cascade.progress_bar(steps, desc=desc),
            host_timesteps=cascade.speedups.host_timesteps, step_kwargs=step_kwargs, quiet_steps=s.quiet_steps,
            **kwargs,
        )  # fmt: skip


def takes_eta(scheduler: SchedulerMixin) -> bool:
    """Whether the scheduler's step has DDIM's η."""
    return "eta" in inspect.signature(scheduler.step).parameters


def check_finite(stage: str, x: torch.Tensor) -> torch.Tensor:
    """``x``, or a one-line error naming the stage whose output has NaN or inf, with the fix for its dtype."""
    if torch.isfinite(x).all():
        return x
    dtype = str(x.dtype).removeprefix("torch.")
    fixes = {
        "float16": "run it in bfloat16 or float32 (--dtype bf16 / fp32)",
        "bfloat16": "run it in float32 (--dtype fp32)",
    }
    fix = fixes.get(dtype, "its weights or its input are not finite (check the model files and the input images)")
    raise UnclipError(f"stage {stage} produced NaN/inf values in {dtype}: {fix}")
