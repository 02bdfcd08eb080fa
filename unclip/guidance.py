"""Classifier-free guidance as a wrapper around a denoiser (Ho & Salimans 2022, eq. 6):

    ε̃(x_t, c) = ε(x_t, ∅) + s · (ε(x_t, c) − ε(x_t, ∅))

A denoiser is any callable ``(x_t, t, i) -> model output``. The wrapped model must have been given its
conditioning as ``[unconditional; conditional]`` rows; the wrapper doubles ``x_t``, runs one batched
pass and combines the halves (``split``: two passes, one a half). Only the first ``guided_channels``
channels are guided: a learned variance (Karlo's decoder predicts 6 channels: ε and the variance
interpolation v) is taken from the conditional half, as in GLIDE and the reference UnCLIP pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class ClassifierFreeGuidance:
    def __init__(self, denoiser: Denoiser, scale: float, guided_channels: int | None = None, split: bool = False):
        self.denoiser = denoiser
        self.scale = scale
        self.guided_channels = guided_channels
        self.halves = halves(denoiser) if split else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        if self.halves is not None:
            uncond, cond = (half(x, t, i) for half in self.halves)
        else:
            uncond, cond = self.denoiser(torch.cat([x, x]), t, i).chunk(2)
        c = self.guided_channels or cond.shape[1]
        guided = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([guided, cond[:, c:]], dim=1) if c < cond.shape[1] else guided


def uses_guidance(scale: float) -> bool:
    """Scales ≤ 1 skip the unconditional pass: s = 1 is the plain conditional model."""
    return scale > 1.0


def guided(denoiser: Denoiser, scale: float, guided_channels: int | None = None, split: bool = False) -> Denoiser:
    if not uses_guidance(scale):
        return denoiser
    return ClassifierFreeGuidance(denoiser, scale, guided_channels, split)


def halves(denoiser) -> tuple[Denoiser, Denoiser]:
    """The unconditional and the conditional denoiser of a stage denoiser (a dataclass, ``unclip.stages``) given
    ``[unconditional; conditional]`` rows: each of its tensors cut in two along the batch."""
    if not dataclasses.is_dataclass(denoiser):
        raise TypeError(f"split guidance needs a dataclass denoiser with its conditioning rows, got {denoiser!r}")
    rows = {f.name: getattr(denoiser, f.name) for f in dataclasses.fields(denoiser)}
    rows = {name: value for name, value in rows.items() if isinstance(value, torch.Tensor)}
    return tuple(dataclasses.replace(denoiser, **{k: v.chunk(2)[h] for k, v in rows.items()}) for h in (0, 1))
