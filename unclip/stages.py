"""The denoisers of the four stages: each binds a model to its conditioning and maps (x_t, t, i) to the
model output its scheduler expects. The loop that runs them is ``unclip.sampling.sample``. Stage sr1024
has two: the x4 latent upscaler's and a pixel-space upsampler's.

Conditioning tensors are given with ``[unconditional; conditional]`` rows when the stage is guided
(see ``unclip.guidance``), with conditional rows only when it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel


@dataclass
class PriorDenoiser:
    """The diffusion prior (DALL·E 2 §2.2): predicts the unnoised CLIP image embedding z_i directly."""

    prior: PriorTransformer
    text_embeds: torch.Tensor  # CLIP text embedding z_t (the "proj_embedding")
    text_hidden_states: torch.Tensor  # CLIP text encoder's last hidden states
    text_mask: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return self.prior(
            x,
            timestep=t,
            proj_embedding=self.text_embeds,
            encoder_hidden_states=self.text_hidden_states,
            attention_mask=self.text_mask,
        ).predicted_image_embedding


@dataclass
class DecoderDenoiser:
    """The 64 px decoder (DALL·E 2 §2.1): a GLIDE UNet conditioned on z_i through its time embedding and
    four extra context tokens (``UnCLIPTextProjModel``). Predicts ε and a learned variance (6 channels)."""

    decoder: UNet2DConditionModel
    encoder_hidden_states: torch.Tensor
    time_embeds: torch.Tensor
    attention_mask: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return self.decoder(
            sample=x,
            timestep=t,
            encoder_hidden_states=self.encoder_hidden_states,
            class_labels=self.time_embeds,
            attention_mask=self.attention_mask,
        ).sample


@dataclass
class SuperResDenoiser:
    """Karlo's 64→256 upsampler: the low-res image upsampled and concatenated to x_t. ``first`` runs
    every step but the last, ``last`` the final step (Karlo trains the two separately)."""

    first: UNet2DModel
    last: UNet2DModel
    low_res: torch.Tensor
    num_steps: int

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        unet = self.last if i == self.num_steps - 1 else self.first
        return unet(sample=torch.cat([x, self.low_res], dim=1), timestep=t).sample


@dataclass
class PixelUpsamplerDenoiser:
    """A pixel-space 256→1024 upsampler (DALL·E 2 §2.1, Appendix C: a UNet without attention): the
    low-res image upsampled to 1024 and concatenated to x_t. No text, so no guidance. Predicts what its
    scheduler's ``prediction_type`` says (ε for Karlo's scheduler, which the trainer's replica uses)."""

    unet: UNet2DModel
    low_res: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return self.unet(sample=torch.cat([x, self.low_res], dim=1), timestep=t).sample


@dataclass
class LatentUpscalerDenoiser:
    """The x4 latent upscaler (256→1024): the noise-augmented low-res image concatenated to the latent
    x_t, its augmentation level as class label, text through cross-attention. Predicts v."""

    unet: UNet2DConditionModel
    low_res: torch.Tensor
    noise_level: torch.Tensor
    text_hidden_states: torch.Tensor

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return self.unet(
            torch.cat([x, self.low_res], dim=1),
            t,
            encoder_hidden_states=self.text_hidden_states,
            class_labels=self.noise_level,
        ).sample
