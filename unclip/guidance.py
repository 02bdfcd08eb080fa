"""Classifier-free guidance as a wrapper around a denoiser (Ho & Salimans 2022, eq. 6):

    ε̃(x_t, c) = ε(x_t, ∅) + s · (ε(x_t, c) − ε(x_t, ∅))

A denoiser is any callable ``(x_t, t, i) -> model output``. The wrapped model must have been given its
conditioning as ``[unconditional; conditional]`` rows; the wrapper doubles ``x_t``, runs one batched
pass and combines the halves. Only the first ``guided_channels`` channels are guided: a learned variance
(Karlo's decoder predicts 6 channels: ε and the variance interpolation v) is taken from the conditional
half, as in GLIDE and the reference UnCLIP pipeline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class ClassifierFreeGuidance:
    def __init__(self, denoiser: Denoiser, scale: float, guided_channels: int | None = None):
        self.denoiser = denoiser
        self.scale = scale
        self.guided_channels = guided_channels

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        uncond, cond = self.denoiser(torch.cat([x, x]), t, i).chunk(2)
        c = self.guided_channels or cond.shape[1]
        guided = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([guided, cond[:, c:]], dim=1) if c < cond.shape[1] else guided


def uses_guidance(scale: float) -> bool:
    """Scales ≤ 1 skip the unconditional pass: s = 1 is the plain conditional model."""
    return scale > 1.0


def guided(denoiser: Denoiser, scale: float, guided_channels: int | None = None) -> Denoiser:
    return ClassifierFreeGuidance(denoiser, scale, guided_channels) if uses_guidance(scale) else denoiser
