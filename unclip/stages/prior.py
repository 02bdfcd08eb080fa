"""The diffusion prior (DALL·E 2 §2.2): text → CLIP image embedding z_i, with Karlo's ``PriorTransformer``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import PriorTransformer

from unclip.guidance import uses_guidance
from unclip.sampling import fork_generator, initial_noise
from unclip.settings import StageSettings
from unclip.stages.base import Stage, StageInputs
from unclip.text import TextConditioning, clip_similarity


@dataclass
class PriorDenoiser:
    """Predicts the unnoised (normalised) CLIP image embedding z_i directly, as Karlo's prior was trained."""

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


class Prior(Stage):
    name = kind = "prior"
    keyword = flag = "prior"
    label = "Prior"
    title = "prior"
    input_size, size = 0, 0
    layout = "karlo"
    components = models = ("prior",)
    scheduler = "prior_scheduler"
    trains_on_clip = True
    settings = ("steps", "guidance", "scheduler", "eta", "samples")
    defaults = StageSettings(steps=25, guidance=4.0)  # UnCLIPPipeline's
    missing = "this model has no prior (an image-variations layout): it cannot start from text"

    def run(self, cascade, x: None, inputs: StageInputs, s: StageSettings) -> torch.Tensor:
        """Sample CLIP image embeddings z_i ~ P(z_i | y), one per image.

        ``s.samples`` > 1: the paper's best-of-n (§2.2: "we generate two samples of z_i and select the one with
        the higher dot product with z_t"): image k draws that many embeddings and keeps the one whose direction
        is closest to its text embedding z_t. With one generator per image (a seed), draw 0 uses the image's
        generator and draw j a generator seeded from (its initial seed, j): so the image is the one a single draw
        makes unless another draw is closer to the text, alone or in a batch. One generator for the whole batch
        draws every candidate from it in turn."""
        samples, generators = s.samples, inputs.generators
        if samples == 1:
            return self.draw(cascade, inputs.text, s, generators)
        z_t = inputs.text.prompt_embeds()
        batch = z_t.shape[0]
        if isinstance(generators, list):
            generators = [g if j == 0 else fork_generator(g, j) for g in generators for j in range(samples)]
        candidates = self.draw(cascade, inputs.text.repeat(samples), s, generators).view(batch, samples, -1)
        best = clip_similarity(candidates, z_t[:, None]).argmax(dim=1)
        return candidates[torch.arange(batch, device=best.device), best]

    def draw(self, cascade, text: TextConditioning, s: StageSettings, generators) -> torch.Tensor:
        """One z_i per generator, from its own noise."""
        rows = text.rows(uses_guidance(s.guidance))
        prior = PriorDenoiser(cascade.denoising_model("prior"), rows.embeds, rows.hidden_states, rows.mask)
        shape = (text.prompt_embeds().shape[0], cascade.prior.config.embedding_dim)
        x_T = initial_noise(shape, generators, rows.embeds.device, rows.embeds.dtype)
        z = self.sample(cascade, self.guided(cascade, prior, s), x_T, s, generators)
        return cascade.prior.post_process_latents(z)  # undo the clip_mean/clip_std normalisation
