"""A pixel-space 256→1024 upsampler (DALL·E 2 §2.1, Appendix C: a UNet without attention), the layout unclip's
trainer writes; and what every pixel upsampler shares (Karlo's 64→256 in ``sr256.py`` too): the low-res image
upsampled and concatenated to x_t, optionally noise-augmented, optionally the start of an SDEdit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel

from unclip.errors import UnclipError
from unclip.sampling import initial_noise
from unclip.settings import StageSettings
from unclip.stages.base import Stage, StageInputs

# Noise augmentation of a pixel upsampler's low-res input: levels are timesteps of this schedule, the one
# unclip's trainer augments with (Ho et al. 2022, Cascaded Diffusion Models §4.1: Gaussian conditioning augmentation).
AUGMENTATION_TIMESTEPS = 1000


def augmentation_schedule() -> DDPMScheduler:
    """The schedule of the pixel upsamplers' noise augmentation, at inference and in training."""
    return DDPMScheduler(num_train_timesteps=AUGMENTATION_TIMESTEPS, beta_schedule="squaredcos_cap_v2")


def augment(image: torch.Tensor, level, schedule, generators) -> torch.Tensor:
    """q(x_s | x_0) at s = ``level`` of ``schedule``: noise augmentation of an upsampler's low-res input."""
    noise = initial_noise(image.shape, generators, image.device, image.dtype)
    level = torch.as_tensor([level] if isinstance(level, int) else level, device=image.device)
    return schedule.add_noise(image, noise, level)


@dataclass
class ConcatDenoiser:
    """A UNet that takes the upsampled low-res image as extra input channels of x_t. No text, so no guidance;
    predicts what its scheduler's ``prediction_type`` says (ε for Karlo's schedulers)."""

    unet: UNet2DModel
    low_res: torch.Tensor
    pad: int = 0  # > 0: the input mirrored this many pixels past each border, and as much cropped off the output

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        sample = torch.cat([x, self.low_res], dim=1)
        if self.pad == 0:
            return self.unet(sample=sample, timestep=t).sample
        p = self.pad
        out = self.unet(sample=F.pad(sample, (p, p, p, p), mode="reflect"), timestep=t).sample
        return out[..., p:-p, p:-p]


def low_res_inputs(image: torch.Tensor, unet, s: StageSettings, generators) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T at the UNet's sample size, and the low-res conditioning: ``image`` bicubic-upsampled (antialiased)
    to that size, Gaussian-noise-augmented at ``s.noise_level`` when > 0 (the reference sr256 uses none)."""
    size = unet.config.sample_size
    channels = unet.config.in_channels - image.shape[1]  # x_t and the low-res image are concatenated
    x_T = initial_noise((image.shape[0], channels, size, size), generators, image.device, image.dtype)
    work = torch.float32 if image.device.type == "cpu" else image.dtype  # no antialiased bicubic in bf16 on CPU
    low_res = F.interpolate(image.to(work), size=[size, size], mode="bicubic", align_corners=False, antialias=True)
    low_res = low_res.to(image.dtype)
    if s.noise_level > 0:
        low_res = augment(low_res, s.noise_level, augmentation_schedule(), generators)
    return x_T, low_res


def pad_for(unet: UNet2DModel, s: StageSettings) -> int:
    """``s.pad`` rounded up to a multiple of the UNet's downsampling factor (the padded side must divide by it),
    and below the side (a mirror cannot reach further)."""
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    pad = -(-s.pad // factor) * factor
    if pad >= unet.config.sample_size:
        raise UnclipError(f"sr1024 pad must be below the upsampler's size {unet.config.sample_size}, got {s.pad}")
    return pad


def sdedit(s: StageSettings, low_res: torch.Tensor) -> dict[str, Any]:
    """``sample``'s SDEdit arguments for an upsampler: start from the (clean) upsampled low-res image."""
    return {"init": low_res.clamp(-1, 1), "start": s.start} if s.start > 0 else {}


class Upscaler(Stage):
    """What the kinds of the 256→1024 stage (the model config's ``upscaler``) share: the stage and its names."""

    name = "sr1024"
    keyword, flag, label = "upscale", "upscale", "SR1024"
    title = "256→1024"
    input_size, size = 256, 1024
    scheduler = "upscaler_scheduler"
    flag_aliases = {"noise_level": ("--noise-level",)}


class PixelUpsampler(Upscaler):
    kind = layout = "pixel"
    components = models = conv_models = ("upscaler_unet",)
    settings = ("steps", "scheduler", "noise_level", "start", "eta", "pad")
    defaults = StageSettings(steps=7, noise_level=0)

    def present(self, cascade) -> bool:
        return cascade.upscaler_unet is not None and cascade.upscaler_vae is None

    def max_noise_level(self, cascade) -> int:
        return AUGMENTATION_TIMESTEPS - 1

    def check(self, cascade, s: StageSettings, inverted: bool = False) -> tuple[str, ...]:
        pad_for(cascade.upscaler_unet, s)  # refused before any stage runs
        return super().check(cascade, s, inverted)

    def run(self, cascade, image: torch.Tensor, inputs: StageInputs, s: StageSettings) -> torch.Tensor:
        """256→1024 in pixel space from the 256 px image (clamped to [-1, 1])."""
        x_T, low_res = low_res_inputs(image.clamp(-1, 1), cascade.upscaler_unet, s, inputs.generators)
        denoiser = ConcatDenoiser(cascade.denoising_model("upscaler_unet"), low_res, pad_for(cascade.upscaler_unet, s))
        known = self.known(inputs, x_T.shape[-1], x_T)
        return self.sample(cascade, denoiser, x_T, s, inputs.generators, known=known, **sdedit(s, low_res))
