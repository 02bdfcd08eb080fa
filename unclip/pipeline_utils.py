"""Pieces the cascade's entry points share (``UnCLIPCascade.__call__`` and ``unclip.edits``): outputs, text
conditioning rows, one generator per image, prompts and negatives, finiteness checks and post-processing."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from unclip.errors import UnclipError

logger = logging.getLogger("unclip")

OUTPUT_TYPES = ("pil", "np", "pt")
# UnCLIPCascade.__call__'s per-stage keywords → (stage, StageSettings field); the edit methods take the same.
STAGE_ARGUMENTS: dict[str, tuple[str, str]] = {
    "prior_num_inference_steps": ("prior", "steps"),
    "decoder_num_inference_steps": ("decoder", "steps"),
    "super_res_num_inference_steps": ("sr256", "steps"),
    "upscale_num_inference_steps": ("sr1024", "steps"),
    "prior_guidance_scale": ("prior", "guidance"),
    "decoder_guidance_scale": ("decoder", "guidance"),
    "upscale_guidance_scale": ("sr1024", "guidance"),
    "super_res_noise_level": ("sr256", "noise_level"),
    "upscale_noise_level": ("sr1024", "noise_level"),
    "decoder_start": ("decoder", "start"),  # the edits' DDIM inversion only: text-to-image starts from noise
    "super_res_start": ("sr256", "start"),
    "upscale_start": ("sr1024", "start"),
}


@dataclass
class CascadeOutput(BaseOutput):
    """``images``: PIL images, an (N, H, W, 3) float array or an (N, 3, H, W) tensor in [0, 1].
    ``metadata``: one dict per image with everything needed to make it again."""

    images: Any
    metadata: list[dict[str, Any]]


@dataclass
class TextConditioning:
    """CLIP text encoder outputs; ``[negative; prompt]`` rows when ``doubled``."""

    embeds: torch.Tensor
    hidden_states: torch.Tensor
    mask: torch.Tensor
    doubled: bool

    def rows(self, guided_stage: bool) -> TextConditioning:
        if guided_stage or not self.doubled:
            return self
        half = self.embeds.shape[0] // 2
        return TextConditioning(self.embeds[half:], self.hidden_states[half:], self.mask[half:], False)

    def prompt_embeds(self) -> torch.Tensor:
        """z_t of the prompts (not the negatives)."""
        return self.rows(False).embeds

    def repeat(self, n: int) -> TextConditioning:
        """Each row ``n`` times in a row (``[negative; prompt]`` halves kept)."""
        return TextConditioning(
            *(x.repeat_interleave(n, dim=0) for x in (self.embeds, self.hidden_states, self.mask)), self.doubled
        )


def fork_generator(generator: torch.Generator, j: int) -> torch.Generator:
    """A generator for draw ``j`` of an image: seeded from the image generator's initial seed and j."""
    seed = (generator.initial_seed() * 0x9E3779B97F4A7C15 + j) % 2**63
    return torch.Generator(generator.device).manual_seed(seed)


def clip_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The dot product of CLIP embeddings as CLIP scores them: of their unit vectors (cosine similarity)."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def tokenize(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP tokens padded to the tokenizer's 77; warns once per text that is truncated."""
    limit = tokenizer.model_max_length
    for text in dict.fromkeys(texts):
        ids = tokenizer(text, truncation=False)["input_ids"]
        if len(ids) > limit:
            removed = tokenizer.decode(ids[limit - 1 : -1])
            logger.warning("prompt truncated to CLIP's %d tokens; dropped: %r", limit, removed)
    out = tokenizer(texts, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask.bool()


def negatives_for(negative_prompt, num_prompts: int, per_prompt: int) -> list[str]:
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * (num_prompts * per_prompt)
    if len(negative_prompt) != num_prompts:
        raise UnclipError(
            f"got {len(negative_prompt)} negative prompts for {num_prompts} prompts: give one each, or one for all"
        )
    return [n or "" for n in negative_prompt for _ in range(per_prompt)]


def image_generators(seed, generator, batch: int) -> tuple[Any, list[int | None]]:
    if generator is not None:
        if isinstance(generator, list) and len(generator) != batch:
            raise UnclipError(f"got {len(generator)} generators for {batch} images: give one per image")
        return generator, [None] * batch
    if seed is None:
        seed = random.randrange(2**31)
    if not isinstance(seed, int) or seed < 0:
        raise UnclipError(f"seed must be a whole number ≥ 0, got {seed!r}")
    return [torch.Generator("cpu").manual_seed(seed + k) for k in range(batch)], [seed + k for k in range(batch)]


def check_finite(stage: str, x: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise UnclipError(
            f"stage {stage} produced NaN/inf values in {str(x.dtype).removeprefix('torch.')}: "
            "run it in bfloat16 or float32 (--dtype bf16 / fp32)"
        )
    return x


def postprocess(x: torch.Tensor, output_type: str):
    images = (x * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images.float().cpu()
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else DiffusionPipeline.numpy_to_pil(array)


def prompt_list(prompt: str | list[str], what: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise UnclipError(f'the {what} is empty: give a text such as "a corgi playing a trumpet"')
    return prompts


def check_count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UnclipError(f"{name} must be ≥ 1, got {value!r}")


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise UnclipError(f"unknown output_type '{output_type}'; choose one of: {', '.join(OUTPUT_TYPES)}")
