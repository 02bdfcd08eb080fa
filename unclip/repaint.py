"""RePaint (Lugmayr et al. 2022): inpainting with a denoiser trained without masks, inside the one loop.

After each reverse step x_t → x_{t−1} the known region is put back, the source noised to t−1 (RePaint eq. 8):

    x_{t−1} = m ⊙ x_{t−1}^unknown + (1 − m) ⊙ x_{t−1}^known,    x_{t−1}^known = √ᾱ_{t−1} x_0 + √(1 − ᾱ_{t−1}) ε

with m = 1 where the mask repaints. After the last step the known region is x_0 itself. Resampling (§4.2, jump
length 1): each step is taken ``resample`` times, x_{t−1} diffused back to x_t between (eq. 9, over the spaced
step: x_t = √(ᾱ_t/ᾱ_{t−1}) x_{t−1} + √(1 − ᾱ_t/ᾱ_{t−1}) ε), so the repainted region can agree with the known one.

Every stage of an edit samples through ``unclip.sampling.sample(known=KnownRegion(...))``, in the space it samples
in (pixels, or the x4 upscaler's latents). ``feather`` and ``composite`` make the final picture: the source's pixels
outside the mask exactly, a ramp across ``blend`` pixels inside its edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import SchedulerMixin

from unclip.errors import UnclipError
from unclip.sampling import fork_generator, initial_noise


@dataclass
class KnownRegion:
    """The source and the mask at one stage's resolution, in the space it samples in."""

    source: torch.Tensor  # x_0 of the known region, (B, C, H, W)
    mask: torch.Tensor  # (B, 1, H, W): 1 where the stage repaints, 0 where it keeps the source
    generators: list[torch.Generator]  # its own noise (forks of the image generators: the rest draws as without it)
    resample: int = 1  # RePaint's r: steps taken per timestep

    def check(self, scheduler: SchedulerMixin, stage: str) -> None:
        """Resampling takes a step again from a noisier state: a multistep solver's history would be wrong."""
        if self.resample > 1 and hasattr(scheduler, "model_outputs"):
            raise UnclipError(
                f"{stage}: resampling needs a one-step sampler ({type(scheduler).__name__} keeps a history of "
                "steps): choose ddim, ddpm or unclip for it, or resample 1"
            )

    @staticmethod
    def alpha_bar(scheduler: SchedulerMixin, t) -> float | None:
        """ᾱ_t of the scheduler's training schedule (every unclip sampler is variance preserving); None: past the
        last step (x_0)."""
        return None if t is None else float(scheduler.alphas_cumprod[int(t)])

    def replace(self, x: torch.Tensor, alpha_bar: float | None) -> torch.Tensor:
        """Eq. 8: the known region of ``x`` replaced by the source at ᾱ = ``alpha_bar`` (None: x_0 itself)."""
        known = self.source.to(x.dtype)
        if alpha_bar is not None:
            noise = initial_noise(tuple(x.shape), self.generators, x.device, x.dtype)
            known = alpha_bar**0.5 * known + (1 - alpha_bar) ** 0.5 * noise
        return torch.where(self.mask.to(torch.bool), x, known)

    def jump_back(self, x: torch.Tensor, alpha_bar_t: float, alpha_bar_prev: float | None) -> torch.Tensor:
        """Eq. 9: x_{t−1} (at ``alpha_bar_prev``; None: x_0) diffused forward to x_t (at ``alpha_bar_t``)."""
        ratio = alpha_bar_t / (alpha_bar_prev if alpha_bar_prev is not None else 1.0)
        noise = initial_noise(tuple(x.shape), self.generators, x.device, x.dtype)
        return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise


def feather(mask: torch.Tensor, blend: int) -> torch.Tensor:
    """The weight of the generated picture: 0 outside the mask (the source exactly), rising from 1/``blend`` at its
    edge to 1 at ``blend`` pixels inside. The mean of the mask eroded by 0 … blend − 1 pixels, one pixel at a time
    (3 × 3 max-pooling of its outside, whose padding never erodes the picture's border)."""
    outside = 1 - mask.float()
    total = torch.zeros_like(outside)
    for _ in range(blend):
        total += 1 - outside
        outside = F.max_pool2d(outside, 3, stride=1, padding=1)
    return total / blend


def composite(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor, blend: int) -> torch.Tensor:
    """The edit's picture: the source where the mask keeps it, the generated picture inside, blended at the seam."""
    generated = generated.float()  # the source's pixels survive exactly in float32 (not in bf16)
    weight = feather(mask, max(blend, 1)).to(generated.device)
    source = source.to(generated.device, torch.float32)
    mixed = weight * generated + (1 - weight) * source
    return torch.where(weight > 0, mixed, source)


@dataclass
class Inpainting:
    """An edit's source and mask at the output size, one row per image of the call: what every stage's
    ``KnownRegion`` is cut from."""

    source: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    mask: torch.Tensor  # (B, 1, S, S): 1 where the edit repaints
    resample: int = 1

    def region(self, size: int, generators, stage: str, like: torch.Tensor) -> KnownRegion:
        """The known region at ``size`` px, on ``like``'s device and dtype. The source is resized (antialiased
        bicubic); a pixel is repainted when any of the output pixels it covers is."""
        source = self.source.float()
        if source.shape[-1] != size:
            source = F.interpolate(source, size=[size, size], mode="bicubic", align_corners=False, antialias=True)
        mask = F.adaptive_max_pool2d(self.mask.float(), size)
        return self._known(source.clamp(-1, 1), mask, generators, stage, like)

    def latent_region(self, vae, generators, stage: str, like: torch.Tensor) -> KnownRegion:
        """The known region in a VAE's latent space (the x4 upscaler): the source's encoding (the mean of its
        latent distribution, times the VAE's scaling factor), the mask pooled to the latents' size. One picture
        repeated for every image of the call (an expanded view) is encoded once."""
        shared = self.source.stride(0) == 0 and self.source.shape[0] > 1
        source = (self.source[:1] if shared else self.source).to(vae.device, vae.dtype)
        latents = vae.encode(source).latent_dist.mean * vae.config.scaling_factor
        latents = latents.expand(self.source.shape[0], -1, -1, -1) if shared else latents
        mask = F.adaptive_max_pool2d(self.mask.float(), latents.shape[-1])
        return self._known(latents, mask, generators, stage, like)

    def _known(self, source, mask, generators, stage: str, like: torch.Tensor) -> KnownRegion:
        source, mask = source.to(like.device, like.dtype), mask.to(like.device)
        return KnownRegion(source, mask, _forks(generators, stage), self.resample)


def _forks(generators, stage: str):
    """Generators of an edit's noise at ``stage``: forks of the image generators, which draw all else as they
    would without the edit (an edit that repaints everything is the plain picture of its seed)."""
    j = 2**20 + sum(map(ord, stage))  # far from the prior's best-of-n forks (0 … n − 1)
    if isinstance(generators, torch.Generator):
        return fork_generator(generators, j)
    return [fork_generator(g, j) for g in generators]
