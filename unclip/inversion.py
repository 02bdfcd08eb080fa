"""DDIM inversion: the decoder's noise x_T that its deterministic sampler maps back to a given image.

DALL·E 2 §3.1 ("we can also use DDIM inversion ... to obtain the decoder latent x_T of an image") and §3.3
(text diffs hold the inverted x_T fixed). DDIM with η = 0 (Song et al. 2021, eq. 12) is the Euler step of an
ODE; running its steps in the other direction, each with the ε predicted at the point it leaves, gives

    x̂_0 = (x_s − √(1 − ᾱ_s) ε_θ(x_s, s)) / √ᾱ_s,        x_t = √ᾱ_t x̂_0 + √(1 − ᾱ_t) ε_θ(x_s, s)      (s < t)

from the image (s at the sampler's final ᾱ) up to its first timestep. Sampling back from that x_T with
η = 0 and the same steps reproduces the image up to the error of the approximation ε_θ(x_s) ≈ ε_θ(x_t).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from diffusers import DDIMScheduler

from unclip.errors import UnclipError
from unclip.guidance import Denoiser


@torch.no_grad()
def ddim_invert(
    denoiser: Denoiser,
    scheduler: DDIMScheduler,
    x0: torch.Tensor,
    num_steps: int,
    *,
    start: int = 0,
    progress: Callable[[Iterable, str], Iterable] | None = None,
) -> torch.Tensor:
    """x_T for ``x0`` under ``denoiser`` (an ε-predicting, possibly guided, denoiser as ``sample`` takes it).

    ``scheduler`` supplies ᾱ and the timesteps of the ``num_steps``-step sampler that will be run back; the
    step index passed to the denoiser is that of the sampling step at the same timestep. ``start`` > 0 stops
    at the last timestep ≤ ``start``: ``sample(..., start=start)`` without ``init`` continues from there. Small
    ε-models are least accurate at the noisiest steps (x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t amplifies their error
    by 1/√ᾱ_t), so stopping short of T keeps the inversion faithful there."""
    if scheduler.config.prediction_type != "epsilon":
        raise UnclipError(
            f"DDIM inversion needs an ε-predicting decoder, this one predicts {scheduler.config.prediction_type}"
        )
    scheduler.set_timesteps(num_steps, device=x0.device)
    descending = scheduler.timesteps.tolist()
    alphas = scheduler.alphas_cumprod.to(x0.device, torch.float64)
    ascending = [t for t in descending[::-1] if start <= 0 or t <= start]
    if not ascending:
        raise UnclipError(
            f"decoder start {start} is below every one of its {num_steps} DDIM timesteps "
            f"({', '.join(str(t) for t in descending)}): raise start or steps"
        )
    x = x0.to(torch.float64)
    a_s = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64, device=x0.device)
    steps = range(len(ascending))
    for k in progress(steps, "invert") if progress else steps:
        t = ascending[k]
        s = t if k == 0 else ascending[k - 1]  # the clean image has no timestep: evaluate at the first one
        x_s = x.to(x0.dtype)
        eps = denoiser(x_s, torch.as_tensor(s, device=x0.device), descending.index(s))[:, : x0.shape[1]].double()
        a_t = alphas[t]
        x0_hat = (x - (1 - a_s).sqrt() * eps) / a_s.sqrt()
        x = a_t.sqrt() * x0_hat + (1 - a_t).sqrt() * eps
        a_s = a_t
    return x.to(x0.dtype)
