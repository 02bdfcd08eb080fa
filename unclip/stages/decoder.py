"""The 64 px decoder (DALL·E 2 §2.1): z_i (and the caption) → a 64 px image, with Karlo's GLIDE UNet."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from unclip.guidance import uses_guidance
from unclip.sampling import initial_noise
from unclip.settings import StageSettings
from unclip.stages.base import Stage, StageInputs
from unclip.text import TextConditioning
from unclip.text_proj import UnCLIPTextProjModel


@dataclass
class DecoderDenoiser:
    """A GLIDE UNet conditioned on z_i through its time embedding and four extra context tokens
    (``UnCLIPTextProjModel``). Predicts ε and a learned variance (6 channels)."""

    decoder: UNet2DConditionModel
    encoder_hidden_states: torch.Tensor
    time_embeds: torch.Tensor
    attention_mask: torch.Tensor

    @classmethod
    def conditioned(
        cls,
        decoder: UNet2DConditionModel,
        text_proj: UnCLIPTextProjModel,
        image_embeds: torch.Tensor,
        rows: TextConditioning,
        guided: bool,
    ) -> DecoderDenoiser:
        """The denoiser for z_i and the caption ``rows`` (``[unconditional; conditional]`` when ``guided``: the
        unconditional half gets the learned null image embedding); what sampling, inversion and training run."""
        hidden, time_embeds = text_proj(
            image_embeddings=image_embeds,
            prompt_embeds=rows.embeds,
            text_encoder_hidden_states=rows.hidden_states,
            do_classifier_free_guidance=guided,
        )
        mask = F.pad(rows.mask, (text_proj.config.clip_extra_context_tokens, 0), value=True)
        return cls(decoder, hidden, time_embeds, mask)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        return self.decoder(
            sample=x,
            timestep=t,
            encoder_hidden_states=self.encoder_hidden_states,
            class_labels=self.time_embeds,
            attention_mask=self.attention_mask,
        ).sample


class Decoder(Stage):
    name = kind = "decoder"
    keyword = flag = "decoder"
    label = ""  # the stage that decides the picture: A1111's own keys (Steps, Sampler, CFG scale)
    title = "64 px decoder"
    input_size, size = 0, 64
    layout = "karlo"
    components = ("text_proj", "decoder")
    models = conv_models = ("decoder",)
    scheduler = "decoder_scheduler"
    trains_on_clip = True
    settings = ("steps", "guidance", "scheduler", "start", "eta", "quiet_steps")
    defaults = StageSettings(steps=25, guidance=8.0)  # UnCLIPPipeline's
    flag_aliases = {"start": ("--invert-start",)}
    setting_help = {"start": "DDIM inversion stops at the last timestep ≤ this and sampling resumes there; 0: all "
                    "the way to noise"}  # fmt: skip

    def used(self, s, scheduler, inverted: bool) -> tuple[str, ...]:
        """Its start is where a DDIM inversion stops (the edits): text-to-image starts from noise."""
        return tuple(name for name in super().used(s, scheduler, inverted) if name != "start" or inverted)

    def denoiser(self, cascade, image_embeds: torch.Tensor, captions: TextConditioning, s: StageSettings):
        """The (guided) denoiser for z_i and the caption rows: what sampling and DDIM inversion both run."""
        use_cfg = uses_guidance(s.guidance)
        model = cascade.denoising_model("decoder")
        denoiser = DecoderDenoiser.conditioned(model, cascade.text_proj, image_embeds, captions.rows(use_cfg), use_cfg)
        return self.guided(cascade, denoiser, s, cascade.decoder.config.in_channels)

    def run(self, cascade, image_embeds: torch.Tensor, inputs: StageInputs, s: StageSettings) -> torch.Tensor:
        """Sample a 64 px image x ~ P(x | z_i, y), guided with the learned null embedding.

        ``inputs.decoder_noise``: x_T (default: drawn from the generators), e.g. held fixed across frames;
        ``inputs.inverted``: it is an image's DDIM inversion, at the first timestep ≤ ``s.start`` when > 0."""
        captions = inputs.captions if inputs.captions is not None else inputs.text
        denoiser = self.denoiser(cascade, image_embeds, captions, s)
        x_T = inputs.decoder_noise
        if x_T is None:
            config = cascade.decoder.config
            shape = (image_embeds.shape[0], config.in_channels, config.sample_size, config.sample_size)
            x_T = initial_noise(shape, inputs.generators, image_embeds.device, cascade.decoder.dtype)
        start = s.start if inputs.inverted else 0
        known = self.known(inputs, x_T.shape[-1], x_T)
        return self.sample(cascade, denoiser, x_T, s, inputs.generators, start=start, known=known).clamp(-1, 1)
