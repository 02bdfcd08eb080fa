"""Inpainting and outpainting through the whole cascade (DALL·E 2's edits), training-free, as methods
``UnCLIPCascade`` inherits (``InpaintMixin``):

    pipe = UnCLIPCascade.from_pretrained("demo")
    out = pipe.edit("scene.png", "mask.png", "a large yellow circle in the bottom right on a blue background")
    out = pipe.edit("scene.png", prompt="a red square on a blue background", pad=64)  # outpainting

The prompt goes through the prior to z_i (optionally turned towards the picture's own CLIP embedding,
``image_weight``); the decoder samples at 64 px and each upsampler at its size with the known region put back at
every step (RePaint, ``unclip.repaint``; the x4 upscaler in its latent space); the final picture keeps the
source's pixels outside the mask exactly, blended across ``blend`` pixels inside its edge.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from unclip.edits import check_embedding, slerp
from unclip.errors import UnclipError
from unclip.guidance import uses_guidance
from unclip.masks import Canvas, MaskInput, read_canvas
from unclip.outputs import CascadeOutput, output
from unclip.plan import check_count, check_output_type, negatives_for
from unclip.repaint import Inpainting, composite
from unclip.sampling import image_generators
from unclip.stages import StageInputs


def check_edit_options(image_weight: float, resample: int, blend: int | None) -> None:
    if not isinstance(image_weight, (int, float)) or not 0 <= image_weight <= 1:
        raise UnclipError(
            f"image_weight must be in [0, 1] (0: the prompt alone, 1: the picture's own), got {image_weight!r}"
        )
    check_count("resample", resample)
    if blend is not None and (not isinstance(blend, int) or isinstance(blend, bool) or blend < 1):
        raise UnclipError(f"blend must be a whole number of pixels ≥ 1, got {blend!r}")


def first_stage(image_weight: float) -> str:
    """Where an edit starts: the prior, unless z_i is the picture's own embedding alone (``image_weight`` 1)."""
    return "decoder" if image_weight == 1 else "prior"


class InpaintMixin:
    """``edit`` for ``UnCLIPCascade``."""

    @torch.no_grad()
    def edit(
        self,
        image,
        mask: MaskInput | None = None,
        prompt: str = "",
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        size: int | None = None,
        pad: int | tuple[int, int, int, int] | str | None = None,
        image_weight: float = 0.0,
        resample: int = 1,
        blend: int | None = None,
        scheduler: str | dict[str, str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **stage_args: Any,
    ) -> CascadeOutput | tuple:
        """Repaint the masked region of a square picture to match ``prompt`` (inpainting), or extend it by a
        border (outpainting, ``pad``).

        Args:
            image: a file, a PIL image or a (3, H, W) tensor in [0, 1] (a ``unclip.masks.Canvas`` as read).
            mask: white = repaint, black = keep (a file, PIL image or (H, W) array); an RGBA mask's transparent
                pixels are the region, as OpenAI's API takes it. None: the image's own transparent pixels, or only
                the ``pad`` border. A mask that repaints nothing gives the picture back (with a warning).
            prompt: what the repainted region (and the picture as a whole) should show.
            pad: outpainting: PIXELS on every side or (left, top, right, bottom); the new border is repainted and
                the larger canvas becomes the output size.
            image_weight: z_i = slerp(prior(prompt), CLIP(picture), image_weight): 0 the prompt's alone.
            resample: RePaint's resampling: each step taken this many times (needs a one-step sampler).
            blend: pixels of the seam inside the mask's edge (default: the output size / 32).
            negative_prompt, num_images_per_prompt, seed, generator, size, scheduler, output_type and the per-stage
            keywords: as in ``__call__``.
        """
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_output_type(output_type)
        check_edit_options(image_weight, resample, blend)
        if not isinstance(prompt, str):
            raise UnclipError(f"prompt must be a text, got {type(prompt).__name__}")
        canvas = image if isinstance(image, Canvas) else read_canvas(image, mask, pad)
        if canvas.fraction == 0:
            warnings.warn("the mask repaints nothing: the edit gives the picture back", stacklevel=2)
        plan = self.plan(size, scheduler, stage_args, first_stage=first_stage(image_weight))
        blend = blend or max(plan.size // 32, 1)
        batch = num_images_per_prompt
        source, region = canvas.at(plan.size)
        generators, seeds = image_generators(seed, generator, batch)
        negatives = negatives_for(negative_prompt, 1, batch)
        guided = uses_guidance(plan.settings["prior"].guidance) or uses_guidance(plan.settings["decoder"].guidance)
        text = self.encode_text([prompt] * batch, negatives if guided else None)
        edit = Inpainting(source.expand(batch, -1, -1, -1), region.expand(batch, -1, -1, -1), resample)
        inputs = StageInputs(generators, text, prompts=[prompt] * batch, negatives=negatives, edit=edit)
        z_i = self.run_stage("prior", None, inputs, plan) if "prior" in plan.stages else None
        if image_weight > 0:
            z_own = check_embedding("image encoder", self.encode_image(canvas.rgb)).expand(batch, -1)
            z_i = z_own if z_i is None else slerp(check_embedding("prior", z_i), z_own, image_weight)
        x = self.decode(z_i, inputs, plan)
        x = composite(x, source, region, blend)
        shared = self.metadata(plan)
        options = {"image_weight": image_weight, "resample": resample, "blend": blend}
        metadata = [
            {"prompt": prompt, "negative_prompt": negatives[k], "seed": seeds[k], "index": k, **canvas.describe(),
             **options, **shared}
            for k in range(batch)
        ]  # fmt: skip
        return output(x, metadata, output_type, return_dict)
