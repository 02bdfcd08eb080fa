"""The one denoising loop: every stage of the cascade (prior, decoder, both upsamplers) runs through it.

``sample`` is a function of a denoiser (k-diffusion style): the stage supplies ``denoiser(x_t, t, i)``
returning the model output the scheduler expects (ε, x_0 or v, with optional learned variance), already
guided if guidance is on. The scheduler supplies the reverse step x_t → x_{t-1}.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from diffusers import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from unclip.errors import UnclipError
from unclip.guidance import Denoiser
from unclip.schedulers import learned_range, uses_learned_variance

if TYPE_CHECKING:
    from unclip.repaint import KnownRegion

Progress = Callable[[Iterable, str], Iterable]


def initial_noise(
    shape: tuple[int, ...], generators: list[torch.Generator], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """x_T ~ N(0, I), one generator per image so an image is the same alone or in a batch."""
    return randn_tensor(shape, generator=generators, device=device, dtype=dtype)


def image_generators(seed: int | list[int] | None, generator, batch: int) -> tuple[Any, list[int | None]]:
    """One generator per image and their seeds: image k of a call uses ``Generator("cpu").manual_seed(seed + k)``,
    so it is the same alone or in a batch (a random seed when None); a list gives each image its own seed (a
    server batching several requests). ``generator`` (diffusers' form: one for the batch or one per image) is
    used as given, its seeds unknown."""
    if generator is not None:
        if isinstance(generator, list) and len(generator) != batch:
            raise UnclipError(f"got {len(generator)} generators for {batch} images: give one per image")
        return generator, [None] * batch
    if seed is None:
        seed = random.randrange(2**31)
    if isinstance(seed, list) and len(seed) != batch:
        raise UnclipError(f"got {len(seed)} seeds for {batch} images: give one per image, or one for the call")
    seeds = seed if isinstance(seed, list) else [seed + k for k in range(batch)] if whole_number(seed) else [seed]
    for value in seeds:
        if not whole_number(value):
            raise UnclipError(f"seed must be a whole number ≥ 0, got {value!r}")
    return [torch.Generator("cpu").manual_seed(s) for s in seeds], list(seeds)


def whole_number(value: Any) -> bool:
    """What a seed may be: an int ≥ 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def fork_generator(generator: torch.Generator, j: int) -> torch.Generator:
    """A generator for draw ``j`` of an image: seeded from the image generator's initial seed and j."""
    seed = (generator.initial_seed() * 0x9E3779B97F4A7C15 + j) % 2**63
    return torch.Generator(generator.device).manual_seed(seed)


def first_step(timesteps: torch.Tensor, start: int, num_steps: int, stage: str = "") -> int:
    """The index of the first of ``timesteps`` (descending) that is ≤ ``start``: where an SDEdit or an inverted
    sample begins. An error naming the timesteps when ``start`` is below all of them."""
    first = int((timesteps > start).sum())
    if first == len(timesteps):
        raise UnclipError(
            f"{stage + ': ' if stage else ''}start {start} is below every one of its {num_steps} timesteps "
            f"({', '.join(str(int(t)) for t in timesteps)}): raise start or steps"
        )
    return first


def sample(
    denoiser: Denoiser,
    scheduler: SchedulerMixin,
    x_T: torch.Tensor,
    num_steps: int,
    generators: list[torch.Generator],
    *,
    desc: str = "",
    progress: Progress | None = None,
    step_kwargs: dict | None = None,
    init: torch.Tensor | None = None,
    start: int = 0,
    host_timesteps: bool = True,
    known: KnownRegion | None = None,
    quiet_steps: int = 0,
) -> torch.Tensor:
    """Run the reverse process from x_T for ``num_steps`` steps of ``scheduler``; returns x_0.

    ``start`` > 0 with an ``init`` image (SDEdit, Meng et al. 2022): only the steps at timesteps ≤ ``start``
    run, from x_t = √ᾱ_t init + √(1 − ᾱ_t) x_T at the first of them (DDPM eq. 4) instead of pure noise.
    ``start`` > 0 without ``init``: ``x_T`` already is x_t at the first of them (e.g. a DDIM inversion).

    ``host_timesteps``: the scheduler keeps its timesteps on the CPU, so its per-step branches and look-ups
    never wait for the device; the denoiser gets them from one copy on ``x_T``'s device. False: the
    timesteps live on the device, as in the reference pipelines (a host sync at every ``t > 0``).

    ``known``: an edit's known region (``unclip.repaint``): put back after every step (RePaint eq. 8), each step
    taken ``known.resample`` times with a jump back between (eq. 9).

    ``quiet_steps`` > 0: the last that many steps at t > 0 (those that add noise) get v = −1 for the model's
    learned variance, which the scheduler's learned_range makes the posterior variance β̃ (Improved DDPM eq. 15);
    a scheduler without one (DDIM: the edits' inversions) has none to replace, and samples as it would."""
    scheduler.set_timesteps(num_steps, device="cpu" if host_timesteps else x_T.device)
    timesteps = scheduler.timesteps
    step_params = inspect.signature(scheduler.step).parameters
    x = x_T * scheduler.init_noise_sigma
    first = 0  # the index of the first step run, in the full list of timesteps
    if start > 0:
        first = first_step(timesteps, start, num_steps, desc)
        if hasattr(scheduler, "set_begin_index"):  # multistep solvers count their steps from here
            scheduler.set_begin_index(first)
        x = scheduler.add_noise(init, x_T, timesteps[first : first + 1]) if init is not None else x_T
        timesteps = timesteps[first:]
    model_timesteps = timesteps.to(x.device, non_blocking=True)  # one copy, before the loop; the scheduler keeps
    # the CPU tensor alive, so the asynchronous copy may read it (and no host sync for it, even from pageable memory)
    keep_variance = uses_learned_variance(scheduler)
    noisy = [i for i, t in enumerate(timesteps) if t > 0]
    quiet = set(noisy[len(noisy) - quiet_steps :]) if quiet_steps > 0 and learned_range(scheduler) else set()
    if known is not None:
        known.check(scheduler, desc)
    for i, t in enumerate(progress(timesteps, desc) if progress else timesteps):
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else None
        for r in range(known.resample if known is not None else 1):
            if r:  # RePaint's resampling: back to x_t, and the step again
                x = known.jump_back(x, known.alpha_bar(scheduler, t), known.alpha_bar(scheduler, t_next))
            model_output = denoiser(scheduler.scale_model_input(x, t), model_timesteps[i], first + i)
            if model_output.shape[1] != x.shape[1] and not keep_variance:
                model_output = model_output[:, : x.shape[1]]  # drop the learned variance the sampler doesn't use
            elif i in quiet:
                model_output = torch.cat(
                    [model_output[:, : x.shape[1]], -torch.ones_like(model_output[:, x.shape[1] :])], 1
                )
            kwargs = dict(step_kwargs or {})
            if "generator" in step_params:
                kwargs["generator"] = generators
            if "prev_timestep" in step_params:  # UnCLIPScheduler: spaced steps need the next timestep
                kwargs["prev_timestep"] = t_next
            x = scheduler.step(model_output, t, x, **kwargs).prev_sample
            if known is not None:
                x = known.replace(x, known.alpha_bar(scheduler, t_next))
    return x
