"""Karlo's 64→256 upsampler (DALL·E 2 §2.1): two UNets, ``super_res_first`` for every step but the last and
``super_res_last`` for the last (Karlo trains them apart), each taking the upsampled 64 px image as channels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DModel

from unclip.settings import StageSettings
from unclip.stages.base import Stage, StageInputs
from unclip.stages.pixel import AUGMENTATION_TIMESTEPS, ConcatDenoiser, low_res_inputs, sdedit


@dataclass
class SuperResDenoiser:
    """``first`` at every step but the last, ``last`` at the final step (step index ``num_steps`` − 1)."""

    first: UNet2DModel
    last: UNet2DModel
    low_res: torch.Tensor
    num_steps: int

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        unet = self.last if i == self.num_steps - 1 else self.first
        return ConcatDenoiser(unet, self.low_res)(x, t, i)


class SuperRes256(Stage):
    name = kind = "sr256"
    keyword, flag, label = "super_res", "sr", "SR256"
    title = "64→256"
    input_size, size = 64, 256
    layout = "karlo"
    components = models = conv_models = ("super_res_first", "super_res_last")
    scheduler = "super_res_scheduler"
    settings = ("steps", "scheduler", "noise_level", "start", "eta")
    defaults = StageSettings(steps=7)  # UnCLIPPipeline's

    def max_noise_level(self, cascade) -> int:
        return AUGMENTATION_TIMESTEPS - 1

    def run(self, cascade, image: torch.Tensor, inputs: StageInputs, s: StageSettings) -> torch.Tensor:
        """64→256 from the decoder's image."""
        x_T, low_res = low_res_inputs(image, cascade.super_res_first, s, inputs.generators)
        first, last = (cascade.denoising_model(name) for name in self.models)
        denoiser = SuperResDenoiser(first, last, low_res, s.steps)
        known = self.known(inputs, x_T.shape[-1], x_T)
        return self.sample(cascade, denoiser, x_T, s, inputs.generators, known=known, **sdedit(s, low_res))
