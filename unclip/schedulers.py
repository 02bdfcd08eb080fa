"""Per-stage scheduler choice: a registry of builders, each deriving a sampler from the stage's own
(reference) scheduler so the noise schedule, prediction type and clipping stay those the model was
trained with.

* ``default``: the checkpoint's own scheduler (UnCLIPScheduler for Karlo's stages, DDIM for the x4 upscaler).
* ``unclip``: UnCLIPScheduler (Karlo's stages only: it knows only the squaredcos_cap_v2 schedule).
* ``ddpm``: ancestral DDPM (Ho et al. 2020, eq. 6-7); uses the decoder's learned variance as UnCLIP does, over
  UnCLIP's own timesteps for Karlo's stages (``KarloDDPMScheduler``).
* ``ddim``: DDIM (Song et al. 2021, eq. 12), eta = 0 unless a caller passes one.
* ``dpmpp``: DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2).

Schedulers that do not use a learned variance get only the model's mean channels (see ``sampling``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin, UnCLIPScheduler

from unclip.errors import UnclipError


def _derived(cls: type, reference: SchedulerMixin, **overrides) -> SchedulerMixin:
    """A ``cls`` scheduler over the reference's diffusion process (betas, prediction type, clipping)."""
    config = dict(reference.config)
    if isinstance(reference, UnCLIPScheduler):  # its schedule is fixed in code, not in its config
        config.update(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    config.update(overrides)
    accepted = inspect.signature(cls.__init__).parameters
    return cls.from_config({k: v for k, v in config.items() if k in accepted})


def _default(reference: SchedulerMixin) -> SchedulerMixin:
    return type(reference).from_config(reference.config)


def _unclip(reference: SchedulerMixin) -> SchedulerMixin:
    if not isinstance(reference, UnCLIPScheduler):
        raise UnclipError(
            f"scheduler 'unclip' needs the squaredcos_cap_v2 schedule, but this stage was trained with "
            f"{reference.config.get('beta_schedule')}: use default, ddpm, ddim or dpmpp"
        )
    return _default(reference)


class KarloDDPMScheduler(DDPMScheduler):
    """DDPM over UnCLIPScheduler's timesteps (T − 1 … 0, evenly spaced, rounded), each step to the next of them.

    diffusers' own spacings stop short of t = 0 (25 of 1,000 steps "trailing": …, 79, 39), and DDPM's last step,
    39 → x_0, then adds noise at the model's learned variance (σ ≈ 0.07 there): speckle on every picture. Ending
    at t = 0, as Karlo's sampler does, the last step adds none (eq. 6-7 with t = 1 → x_0 the mean alone)."""

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None):
        if timesteps is None and num_inference_steps is not None and num_inference_steps > 1:
            ratio = (self.config.num_train_timesteps - 1) / (num_inference_steps - 1)  # UnCLIPScheduler's
            timesteps = (np.arange(num_inference_steps) * ratio).round()[::-1].astype(np.int64).tolist()
            return super().set_timesteps(device=device, timesteps=timesteps)
        return super().set_timesteps(num_inference_steps, device, timesteps)


def _ddpm(reference: SchedulerMixin) -> SchedulerMixin:
    return _derived(KarloDDPMScheduler if isinstance(reference, UnCLIPScheduler) else DDPMScheduler, reference)


def _ddim(reference: SchedulerMixin) -> SchedulerMixin:
    return _derived(DDIMScheduler, reference)


def _dpmpp(reference: SchedulerMixin) -> SchedulerMixin:
    return _derived(
        DPMSolverMultistepScheduler, reference, algorithm_type="dpmsolver++", solver_order=2, variance_type=None
    )


SCHEDULERS: dict[str, Callable[[SchedulerMixin], SchedulerMixin]] = {
    "default": _default,
    "unclip": _unclip,
    "ddpm": _ddpm,
    "ddim": _ddim,
    "dpmpp": _dpmpp,
}


def make_scheduler(name: str, reference: SchedulerMixin) -> SchedulerMixin:
    """A fresh scheduler named ``name`` for a stage whose checkpoint ships ``reference``."""
    if name not in SCHEDULERS:
        raise UnclipError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](reference)


def learned_range(scheduler: SchedulerMixin) -> bool:
    """Whether its variance is interpolated by the model between β̃ and β (Improved DDPM eq. 15): v = −1 gives β̃."""
    return getattr(scheduler.config, "variance_type", None) == "learned_range"


def uses_learned_variance(scheduler: SchedulerMixin) -> bool:
    """Whether ``scheduler.step`` takes the model's extra variance channels (UnCLIP, DDPM learned_range)."""
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
