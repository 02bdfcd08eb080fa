"""Loss weights: which pixels and which images an objective's error counts more for.

* ``edge_weights``: per pixel, 1 + λ × the target's local contrast (``contrast``): edges weigh more than flat
  colour (``decoder.edge_weight``, ``sr.edge_weight``);
* ``contrast_weights``: per image, (c_ref / c)² (at least 1) for an image whose colours lie c apart
  (``decoder.contrast_ref``);
* ``pixel_mean``: the per-pixel weighted mean that gives one loss per sample; ``detail``: how much an image has.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The absolute differences between neighbouring pixels, across (…, W − 1) and down (…, H − 1, W)."""
    return (images[..., :, 1:] - images[..., :, :-1]).abs(), (images[..., 1:, :] - images[..., :-1, :]).abs()


def detail(images: torch.Tensor) -> torch.Tensor:
    """Each image's mean absolute difference between neighbouring pixels (across and down): 0 on a flat colour."""
    across, down = _differences(images)
    return across.flatten(1).mean(1) + down.flatten(1).mean(1)


def contrast(images: torch.Tensor) -> torch.Tensor:
    """Each pixel's local contrast, (N, 1, H, W): the largest absolute difference between neighbouring pixels (across
    or down, the channels' mean) in its 3 × 3 neighbourhood, halved: 0 on a flat colour, 1 across a black-white edge
    of [-1, 1] images. Both sides of an edge and its blended pixels get the edge's value."""
    across, down = (d.mean(1, keepdim=True) for d in _differences(images))
    # each difference to both pixels it lies between
    across = torch.maximum(F.pad(across, (0, 1, 0, 0)), F.pad(across, (1, 0, 0, 0)))
    down = torch.maximum(F.pad(down, (0, 0, 0, 1)), F.pad(down, (0, 0, 1, 0)))
    return F.max_pool2d(torch.maximum(across, down), 3, stride=1, padding=1) / 2


def edge_weights(x0: torch.Tensor, edge_weight: float) -> torch.Tensor | None:
    """Per-pixel weights of the error, 1 + edge_weight × ``contrast(x0)``, (N, 1, H, W); None when 0 (uniform)."""
    return 1 + edge_weight * contrast(x0) if edge_weight > 0 else None


def pixel_mean(error: torch.Tensor, pixel_weight: torch.Tensor | None) -> torch.Tensor:
    """Each sample's mean error over channels and pixels, weighted by ``pixel_weight`` when given (normalised by the
    weights: an image's loss stays on the scale of the uniform one)."""
    if pixel_weight is None:
        return error.flatten(1).mean(1)
    return (pixel_weight * error).flatten(1).sum(1) / (pixel_weight.flatten(1).sum(1) * error.shape[1])


def colour_range(images: torch.Tensor) -> torch.Tensor:
    """Each image's colour range, (N,): the channels' mean of (largest − smallest value) over its pixels, halved, as
    ``contrast`` measures: for a shape on a background, how far its colour lies from the background's (black on
    white 0.92 in [-1, 1]; the demo's closest pair, orange on yellow, 0.15); 0 on a flat colour."""
    flat = images.flatten(2)
    return (flat.amax(2) - flat.amin(2)).mean(1) / 2


def contrast_weights(x0: torch.Tensor, reference: float) -> torch.Tensor | float:
    """Per-image weights of the error, (reference / c)² with c = ``colour_range(x0)``, between 1 and 16: images of
    less contrast than ``reference`` weighed up, none down; 1 when ``reference`` is 0 (uniform). A pixel drawn
    in the wrong one of two colours costs ε-prediction an error in proportion to their distance (x_0 = (x_t −
    √(1 − ᾱ_t) ε) / √ᾱ_t, DDPM eq. 4), squared in the loss: an orange circle's pixel gone red (c = 0.22) costs 1/18th
    of a black one's gone white (0.92). (Weighing the others down as well, to a mean weight of 1, cost the demo's
    high-contrast pictures their edges: docs/benchmarks.md.)"""
    if reference <= 0:
        return 1.0
    return (reference / colour_range(x0).clamp(min=reference / 4)).clamp(min=1) ** 2
