"""The Stable Diffusion x4 latent upscaler (256→1024), as StableDiffusionUpscalePipeline runs it: the
noise-augmented 256 px image concatenated to the latent x_t, its augmentation level as class label, the
prompt through cross-attention (its own CLIP text encoder), then the VAE decoder to pixels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from unclip.guidance import uses_guidance
from unclip.sampling import initial_noise
from unclip.settings import StageSettings
from unclip.stages.base import StageInputs, check_finite
from unclip.stages.pixel import Upscaler, augment
from unclip.text import tokenize

VAE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # what unclip.speedups' vae_dtype may name


def vae_decode_dtype(speedups, cascade_dtype: torch.dtype) -> torch.dtype:
    """The dtype the VAE decodes in: ``speedups.vae_dtype`` when set, else as the reference pipeline: float32 when
    the cascade runs in float16 (the x4 VAE overflows in it: black images), else the cascade's dtype."""
    if speedups.vae_dtype is not None:
        return VAE_DTYPES[speedups.vae_dtype]
    return torch.float32 if cascade_dtype == torch.float16 else cascade_dtype


@dataclass
class LatentUpscalerDenoiser:
    """Predicts v (the x4 upscaler's prediction type)."""

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


class X4Upscaler(Upscaler):
    kind = layout = "x4"
    components = ("upscaler_text_encoder", "upscaler_unet", "upscaler_vae")
    models = ("upscaler_unet",)
    conv_models = ("upscaler_unet", "upscaler_vae")
    settings = ("steps", "guidance", "scheduler", "noise_level", "eta")
    defaults = StageSettings(steps=75, guidance=9.0, noise_level=20)  # StableDiffusionUpscalePipeline's

    def max_noise_level(self, cascade) -> int:
        """Its own limit (its model_index.json's ``max_noise_level``)."""
        return cascade.max_noise_level

    def run(self, cascade, image: torch.Tensor, inputs: StageInputs, s: StageSettings) -> torch.Tensor:
        use_cfg = uses_guidance(s.guidance)
        device = image.device
        ids, mask = tokenize(cascade.upscaler_tokenizer, (inputs.negatives if use_cfg else []) + inputs.prompts)
        encoder = cascade.upscaler_text_encoder
        use_mask = getattr(encoder.config, "use_attention_mask", False)
        hidden = encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
        low_res = ((image * 0.5 + 0.5).clamp(0, 1) * 2 - 1).to(hidden.dtype)  # the float image, as the reference
        level = torch.tensor([s.noise_level], dtype=torch.long, device=device)
        low_res = augment(low_res, level, cascade.upscaler_low_res_scheduler, inputs.generators)
        repeat = 2 if use_cfg else 1
        unet = cascade.denoising_model("upscaler_unet")
        denoiser = LatentUpscalerDenoiser(
            unet, torch.cat([low_res] * repeat), level.repeat(low_res.shape[0] * repeat), hidden
        )
        vae = cascade.upscaler_vae
        decode_dtype = vae_decode_dtype(cascade.speedups, hidden.dtype)  # never float16: the x4 VAE overflows in it
        if vae.dtype != decode_dtype:  # (nn.Module's own .to: ModelMixin's warns of fp32 modules this VAE lacks)
            torch.nn.Module.to(vae, decode_dtype)
        x_T = initial_noise((image.shape[0], vae.config.latent_channels, *image.shape[2:]), inputs.generators,
                            device, hidden.dtype)  # fmt: skip
        known = None if inputs.edit is None else inputs.edit.latent_region(vae, inputs.generators, self.name, x_T)
        latents = self.sample(cascade, self.guided(cascade, denoiser, s), x_T, s, inputs.generators, known=known)
        check_finite("sr1024 (latents)", latents)
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
