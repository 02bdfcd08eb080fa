"""DALL·E 2's image manipulations (§3), as methods ``UnCLIPCascade`` inherits (``EditsMixin``): they start from
CLIP image embeddings z_i of the user's images (or of prompts, through the prior) rather than from text alone.
They use the cascade's public API only: ``plan``, ``encode_image``, ``encode_text``, ``run_stage``, ``decode``,
``metadata``.

    pipe = UnCLIPCascade.from_pretrained("demo")
    pipe.vary("cat.png", num_images_per_prompt=4, seed=0)                        # §3.1 variations
    pipe.vary("cat.png", invert=True, eta=0.3)                                   # §3.1 faithful: DDIM inversion
    pipe.interpolate(Path("cat.png"), "a photo of a dog", frames=8)              # §3.2: a str is a prompt
    pipe.text_diff("cat.png", "a photo of a cat", "an anime drawing of a cat")   # §3.3 text diffs

The decoder's caption is ``prompt`` where a method takes one, else "" (the decoder was trained with captions
dropped half the time, DALL·E 2 §2.1). Every frame of an interpolation or text diff uses the same noise
(the same seed for every stage), so that only the embedding changes from frame to frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unclip.errors import UnclipError
from unclip.guidance import uses_guidance
from unclip.images import ImageInput, fit, load_images
from unclip.inversion import ddim_invert
from unclip.outputs import CascadeOutput, output
from unclip.plan import Plan, check_count, check_output_type
from unclip.sampling import image_generators
from unclip.stages import STAGES, StageInputs, check_finite
from unclip.text import TextConditioning


def slerp(a: torch.Tensor, b: torch.Tensor, theta: torch.Tensor | float) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) of the directions of ``a`` and ``b``, the norm interpolated
    linearly: DALL·E 2 §3.2's z_θ = slerp(z_1, z_2, θ), for CLIP embeddings that are not unit vectors.

    ``a``, ``b``: (..., D); ``theta``: a number or a tensor broadcasting against (..., 1)."""
    theta = torch.as_tensor(theta, dtype=torch.float64, device=a.device)
    if theta.ndim:
        theta = theta.reshape(*theta.shape, *([1] * (a.ndim - theta.ndim)))
    a64, b64 = a.double(), b.double()
    norm_a, norm_b = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    u, v = a64 / norm_a, b64 / norm_b
    omega = (u * v).sum(-1, keepdim=True).clamp(-1, 1).arccos()
    sin = omega.sin()
    parallel = sin.abs() < 1e-6  # same or opposite direction: fall back to the normalised straight line
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    direction = torch.where(
        parallel,
        (1 - theta) * u + theta * v,
        ((1 - theta) * omega).sin() / safe * u + (theta * omega).sin() / safe * v,
    )
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (direction * ((1 - theta) * norm_a + theta * norm_b)).to(a.dtype)


def text_diff_embeddings(
    z_i: torch.Tensor, z_t0: torch.Tensor, z_t: torch.Tensor, thetas: torch.Tensor
) -> torch.Tensor:
    """DALL·E 2 §3.3: the text diff z_d = norm(z_t − z_t0), and z_θ = slerp(z_i, z_d, θ) for each θ, with z_d
    scaled to |z_i| so that only the direction of the image embedding turns. (F, D) for F thetas."""
    z_d = F.normalize((z_t - z_t0).double(), dim=-1) * z_i.double().norm(dim=-1, keepdim=True)
    return slerp(z_i.double().expand(len(thetas), -1), z_d.expand(len(thetas), -1), thetas).to(z_i.dtype)


def check_embedding(what: str, z: torch.Tensor) -> torch.Tensor:
    """``z``, refused when a row is not finite or has zero norm: slerp and the text diff divide by its norm."""
    z = check_finite(what, z)
    if (z.float().norm(dim=-1) == 0).any():
        raise UnclipError(f"{what}: a CLIP embedding of zero length has no direction to interpolate: give another")
    return z


def _same_noise(seed: int | None, frames: int) -> tuple[list[torch.Generator], int]:
    """One generator per frame, all with the same seed: every frame draws the same noise."""
    _, seeds = image_generators(seed, None, 1)
    return [torch.Generator("cpu").manual_seed(seeds[0]) for _ in range(frames)], seeds[0]


def _thetas(maximum: float, frames: int) -> torch.Tensor:
    """θ of each frame: 0 … ``maximum`` evenly (a single frame: 0), float64."""
    return torch.linspace(0, maximum, frames, dtype=torch.float64) if frames > 1 else torch.zeros(1).double()


def _frame_metadata(caption: str, seed: int, edit: dict, thetas: torch.Tensor, shared: dict) -> list[dict]:
    """One metadata dict per frame of an interpolation or text diff: one seed for all, each its θ."""
    return [
        {"prompt": caption, "negative_prompt": "", "seed": seed, "index": k, **edit, "theta": round(float(theta), 4),
         **shared}
        for k, theta in enumerate(thetas.tolist())
    ]  # fmt: skip


def _describe(item: Any) -> str:
    """A prompt or a file as given; an image opened from a file by its file name; otherwise "image"."""
    if isinstance(item, (str, Path)):
        return str(item)
    return getattr(item, "filename", "") or "image"


def _inversion_args(scheduler, stage_args: dict[str, Any], eta: float) -> tuple[dict[str, str | None], dict]:
    """The decoder's settings for an inverted edit: DDIM, at ``eta`` unless ``decoder_eta`` is given, unguided
    unless ``decoder_guidance_scale`` is. DDIM inversion retraces the ODE of the denoiser it runs; guided sampling
    from an unguided inversion, or a guided inversion, leaves it (Mokady et al. 2023, §3): on the demo, guidance 3
    kept the background of 19 % of inverted variations, guidance 1 of all of them."""
    schedulers = dict(scheduler) if isinstance(scheduler, dict) else dict.fromkeys(STAGES, scheduler)
    if schedulers.get("decoder") not in (None, "ddim") and isinstance(scheduler, dict):
        raise UnclipError(f"invert runs the decoder with ddim (its inversion's sampler), not {schedulers['decoder']}")
    schedulers["decoder"] = "ddim"
    args = {"decoder_guidance_scale": 1.0, "decoder_eta": eta, **{k: v for k, v in stage_args.items() if v is not None}}
    return schedulers, args


class EditsMixin:
    """``vary``, ``interpolate`` and ``text_diff`` for ``UnCLIPCascade``."""

    def _invert(self, pictures: list[torch.Tensor], z_i: torch.Tensor, captions: TextConditioning, plan: Plan):
        """The decoder's x_T of each picture by DDIM inversion under its own z_i (DALL·E 2 §3.1)."""
        decoder, settings = self.stages["decoder"], plan.settings["decoder"]
        x0 = (fit(pictures, self.decoder.config.sample_size) * 2 - 1).to(self.execution_device, self.decoder.dtype)
        denoiser = decoder.denoiser(self, z_i, captions, settings)
        scheduler = decoder.make_scheduler(self, settings)  # ddim: the plan of an inverted edit says so
        progress = lambda steps, desc: self.progress_bar(steps, desc=desc)  # noqa: E731
        return ddim_invert(denoiser, scheduler, x0, settings.steps, start=settings.start, progress=progress)

    @torch.no_grad()
    def vary(
        self,
        image: ImageInput | list[ImageInput],
        prompt: str | None = None,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        size: int | None = None,
        invert: bool = False,
        eta: float | None = None,
        scheduler: str | dict[str, str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **stage_args: Any,
    ) -> CascadeOutput | tuple:
        """Variations of images (DALL·E 2 §3.1): each image's CLIP embedding z_i, decoded
        ``num_images_per_prompt`` times with fresh noise; image-major order.

        Args:
            image: a PIL image, a file, a (3, H, W) tensor in [0, 1], or a list of them.
            prompt: the decoder's caption (default ""): steers the variations through the text path as well.
            invert: faithful variations: the decoder noise is the image's own x_T by DDIM inversion, and the
                decoder samples with DDIM at ``eta`` (0 gives the image back; larger η varies more).
            eta: the decoder's DDIM η (``decoder_eta``); with ``invert`` 0.5 unless given.
            seed, generator, size, scheduler, output_type and the per-stage keywords (``decoder_num_inference_steps``,
            ``super_res_start``, ...): as in ``__call__``.
        """
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_output_type(output_type)
        if eta is not None and stage_args.get("decoder_eta") is not None:
            raise UnclipError("eta and decoder_eta are the same setting: give one")
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise UnclipError('prompt must be a non-empty text (or None for the caption "")')
        if invert:
            scheduler, stage_args = _inversion_args(scheduler, stage_args, 0.5 if eta is None else eta)
        elif eta is not None:
            stage_args = {**stage_args, "decoder_eta": eta}
        plan = self.plan(size, scheduler, stage_args, first_stage="decoder", inverted=invert)
        items = image if isinstance(image, (list, tuple)) else [image]
        pictures = load_images(image)
        names = [_describe(item) for item in items] if len(items) == len(pictures) else ["image"] * len(pictures)
        z_i = check_finite("image encoder", self.encode_image(pictures))
        batch = len(pictures) * num_images_per_prompt
        generators, seeds = image_generators(seed, generator, batch)
        caption = prompt or ""
        one_each = self.encode_captions([caption] * len(pictures), uses_guidance(plan.settings["decoder"].guidance))
        inputs = StageInputs(generators, captions=one_each.repeat(num_images_per_prompt), prompts=[caption] * batch,
                             negatives=[""] * batch, inverted=invert)  # fmt: skip
        if invert:
            inputs.decoder_noise = self._invert(pictures, z_i, one_each, plan).repeat_interleave(
                num_images_per_prompt, dim=0
            )
        x = self.decode(z_i.repeat_interleave(num_images_per_prompt, dim=0), inputs, plan)
        shared = self.metadata(plan)
        edit = {"edit": "variation", "invert": invert}
        metadata = [
            {"prompt": caption, "negative_prompt": "", "seed": seeds[k], "index": k,
             "source": names[k // num_images_per_prompt], **edit, **shared}
            for k in range(batch)
        ]  # fmt: skip
        return output(x, metadata, output_type, return_dict)

    def _endpoint(self, item, plan: Plan, seed: int) -> torch.Tensor:
        """z_i of an interpolation end: a prompt through the prior (seeded), or an image through CLIP."""
        if isinstance(item, str):
            if not item.strip():
                raise UnclipError("an interpolation end is an empty text: give a prompt or an image")
            text = self.encode_text([item], [""] if uses_guidance(plan.settings["prior"].guidance) else None)
            inputs = StageInputs([torch.Generator("cpu").manual_seed(seed)], text)
            return self.run_stage("prior", None, inputs, plan)
        return self.encode_image(item)

    @torch.no_grad()
    def interpolate(
        self,
        start: ImageInput,
        end: ImageInput,
        frames: int = 5,
        seed: int | None = None,
        size: int | None = None,
        prompt: str | None = None,
        scheduler: str | dict[str, str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **stage_args: Any,
    ) -> CascadeOutput | tuple:
        """Interpolations (DALL·E 2 §3.2): ``frames`` images at z_θ = slerp(z_start, z_end, θ), θ = 0 … 1, the
        noise of every stage held fixed (one seed for all frames). ``start`` and ``end`` are each a prompt (its
        z_i sampled by the prior with ``seed``) or an image (its CLIP embedding)."""
        check_count("frames", frames)
        check_output_type(output_type)
        first = "prior" if isinstance(start, str) or isinstance(end, str) else "decoder"
        plan = self.plan(size, scheduler, stage_args, first_stage=first)
        generators, seed = _same_noise(seed, frames)
        z_a, z_b = (check_embedding(f"interpolation end {_describe(item)}", self._endpoint(item, plan, seed))
                    for item in (start, end))  # fmt: skip
        thetas = _thetas(1.0, frames)
        z = slerp(z_a.expand(frames, -1), z_b.expand(frames, -1), thetas.to(z_a.device))
        caption = prompt or ""
        captions = self.encode_captions([caption], uses_guidance(plan.settings["decoder"].guidance)).repeat(frames)
        inputs = StageInputs(generators, captions=captions, prompts=[caption] * frames, negatives=[""] * frames)
        x = self.decode(z, inputs, plan)
        ends = {"edit": "interpolation", "from": _describe(start), "to": _describe(end)}
        metadata = _frame_metadata(caption, seed, ends, thetas, self.metadata(plan))
        return output(x, metadata, output_type, return_dict)

    @torch.no_grad()
    def text_diff(
        self,
        image: ImageInput,
        from_prompt: str,
        to_prompt: str,
        frames: int = 5,
        max_theta: float = 0.5,
        invert: bool = True,
        seed: int | None = None,
        size: int | None = None,
        scheduler: str | dict[str, str] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **stage_args: Any,
    ) -> CascadeOutput | tuple:
        """Text diffs (DALL·E 2 §3.3): edit an image towards a change of caption. z_d = norm(z_t − z_t0) of the
        CLIP text embeddings of ``to_prompt`` and ``from_prompt``; frame k is decoded from
        z_θ = slerp(z_i, z_d, θ), θ = 0 … ``max_theta`` (the paper uses 0.25-0.50).

        ``invert`` (the paper's choice): the decoder noise is the image's x_T by DDIM inversion and the decoder
        samples with DDIM (η = 0), so frame 0 is the image itself; otherwise one seed's noise for every frame."""
        check_count("frames", frames)
        check_output_type(output_type)
        for name, text in (("from_prompt", from_prompt), ("to_prompt", to_prompt)):
            if not isinstance(text, str) or not text.strip():
                raise UnclipError(
                    f'{name} is empty: give captions such as "a photo of a cat" → "an anime drawing of a cat"'
                )
        if not isinstance(max_theta, (int, float)) or not 0 < max_theta <= 1:
            raise UnclipError(f"max_theta must be in (0, 1] (the paper uses 0.25-0.50), got {max_theta!r}")
        pictures = load_images(image)
        if len(pictures) != 1:
            raise UnclipError(f"text_diff edits one image, got {len(pictures)}")
        if invert:
            scheduler, stage_args = _inversion_args(scheduler, stage_args, 0.0)
        plan = self.plan(size, scheduler, stage_args, first_stage="decoder", inverted=invert)
        generators, seed = _same_noise(seed, frames)
        z_i = check_embedding("image encoder", self.encode_image(pictures))
        texts = self.encode_text([from_prompt, to_prompt]).embeds
        if torch.equal(texts[0], texts[1]):
            raise UnclipError(
                f"from_prompt and to_prompt have the same CLIP embedding ({from_prompt!r}): the text diff is zero; "
                "give two different captions"
            )
        thetas = _thetas(max_theta, frames)
        z = text_diff_embeddings(z_i[0], texts[0], texts[1], thetas.to(z_i.device))
        caption = self.encode_captions([""], uses_guidance(plan.settings["decoder"].guidance))
        inputs = StageInputs(generators, captions=caption.repeat(frames), prompts=[""] * frames,
                             negatives=[""] * frames, inverted=invert)  # fmt: skip
        if invert:
            inputs.decoder_noise = self._invert(pictures, z_i, caption, plan).expand(frames, -1, -1, -1).contiguous()
        x = self.decode(z, inputs, plan)
        diff = {"edit": "text_diff", "source": _describe(image), "from": from_prompt, "to": to_prompt, "invert": invert}
        metadata = _frame_metadata("", seed, diff, thetas, self.metadata(plan))
        return output(x, metadata, output_type, return_dict)
