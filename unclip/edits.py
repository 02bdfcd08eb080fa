"""DALL·E 2's image manipulations (§3), as methods of ``UnCLIPCascade``: they start from CLIP image embeddings
z_i of the user's images (or of prompts, through the prior) rather than from text alone.

    pipe = UnCLIPCascade.from_config("demo")
    pipe.vary("cat.png", num_images_per_prompt=4, seed=0)                        # §3.1 variations
    pipe.vary("cat.png", invert=True, eta=0.3)                                   # §3.1 faithful: DDIM inversion
    pipe.interpolate(Path("cat.png"), "a photo of a dog", frames=8)              # §3.2: a str is a prompt
    pipe.text_diff("cat.png", "a photo of a cat", "an anime drawing of a cat")   # §3.3 text diffs

The decoder's caption is ``prompt`` where a method takes one, else "" (the decoder was trained with captions
dropped half the time, DALL·E 2 §2.1). Every frame of an interpolation or text diff uses the same noise
(the same seed for every stage), so that only the embedding changes from frame to frame.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from unclip.errors import UnclipError
from unclip.guidance import uses_guidance
from unclip.images import ImageInput, fit, load_images
from unclip.inversion import ddim_invert
from unclip.pipeline_utils import (
    CascadeOutput,
    check_count,
    check_finite,
    check_output_type,
    image_generators,
    postprocess,
)
from unclip.schedulers import make_scheduler

if TYPE_CHECKING:
    from unclip.config import StageSettings
    from unclip.pipeline import UnCLIPCascade


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


def _same_noise(seed: int | None, frames: int) -> tuple[list[torch.Generator], int]:
    """One generator per frame, all with the same seed: every frame draws the same noise."""
    generators, seeds = image_generators(seed, None, 1)
    return [torch.Generator("cpu").manual_seed(seeds[0]) for _ in range(frames)], seeds[0]


def _thetas(maximum: float, frames: int) -> torch.Tensor:
    """θ of each frame: 0 … ``maximum`` evenly (a single frame: 0), float64."""
    return torch.linspace(0, maximum, frames, dtype=torch.float64) if frames > 1 else torch.zeros(1).double()


def _frame_metadata(caption: str, seed: int, edit: dict, thetas: torch.Tensor, common: dict) -> list[dict]:
    """One metadata dict per frame of an interpolation or text diff: one seed for all, each its θ."""
    return [
        {
            "prompt": caption,
            "negative_prompt": "",
            "seed": seed,
            "index": k,
            **edit,
            "theta": round(float(theta), 4),
            **common,
        }  # fmt: skip
        for k, theta in enumerate(thetas.tolist())
    ]


def _describe(item: Any) -> str:
    """A prompt or a file as given; an image opened from a file by its file name; otherwise "image"."""
    if isinstance(item, (str, Path)):
        return str(item)
    return getattr(item, "filename", "") or "image"


def _inverted_noise(
    pipe: UnCLIPCascade, pictures: list[torch.Tensor], z_i: torch.Tensor, captions, settings
) -> torch.Tensor:
    """The decoder's x_T of each picture by DDIM inversion under its own z_i (DALL·E 2 §3.1)."""
    size = pipe.decoder.config.sample_size
    x0 = (fit(pictures, size) * 2 - 1).to(pipe._execution_device, pipe.decoder.dtype)
    denoiser = pipe.decoder_denoiser(z_i, captions, settings)
    scheduler = make_scheduler("ddim", pipe.decoder_scheduler)
    return ddim_invert(denoiser, scheduler, x0, settings.steps, start=settings.start, progress=pipe._progress)


def _inversion_settings(decoder: StageSettings, stage_args: dict[str, Any]) -> StageSettings:
    """The decoder's settings for an inverted edit: DDIM, unguided unless the caller set
    ``decoder_guidance_scale``. DDIM inversion retraces the ODE of the denoiser it runs; guided sampling from an
    unguided inversion, or a guided inversion, leaves it (Mokady et al. 2023, §3): on the demo, guidance 3 kept the
    background of 19 % of inverted variations, guidance 1 of all of them."""
    guidance = decoder.guidance if stage_args.get("decoder_guidance_scale") is not None else 1.0
    return dataclasses.replace(decoder, scheduler="ddim", guidance=guidance)


def _check_eta(eta: float) -> None:
    if not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise UnclipError(f"eta must be in [0, 1] (0: the inverted image itself, 1: DDPM-like noise), got {eta!r}")


def _output(x, output_type, metadata, return_dict):
    images = postprocess(x, output_type)
    return CascadeOutput(images=images, metadata=metadata) if return_dict else (images, metadata)


@torch.no_grad()
def vary(
    pipe: UnCLIPCascade,
    image: ImageInput | list[ImageInput],
    prompt: str | None = None,
    num_images_per_prompt: int = 1,
    seed: int | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    size: int | None = None,
    invert: bool = False,
    eta: float = 0.5,
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
        seed, generator, size, scheduler, output_type and the per-stage keywords (``decoder_num_inference_steps``,
        ``super_res_start``, ...): as in ``__call__``.
    """
    check_count("num_images_per_prompt", num_images_per_prompt)
    check_output_type(output_type)
    if invert:
        _check_eta(eta)
    if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
        raise UnclipError('prompt must be a non-empty text (or None for the caption "")')
    size, stages_run, settings = pipe.plan(size, scheduler, stage_args, first_stage="decoder")
    if invert:
        settings["decoder"] = _inversion_settings(settings["decoder"], stage_args)
    items = image if isinstance(image, (list, tuple)) else [image]
    pictures = load_images(image)
    names = [_describe(item) for item in items] if len(items) == len(pictures) else ["image"] * len(pictures)
    z_i = check_finite("image encoder", pipe.encode_image(pictures))
    batch = len(pictures) * num_images_per_prompt
    generators, seeds = image_generators(seed, generator, batch)
    caption = prompt or ""
    one_each = pipe.encode_captions([caption] * len(pictures), uses_guidance(settings["decoder"].guidance))
    captions = one_each.repeat(num_images_per_prompt)
    z = z_i.repeat_interleave(num_images_per_prompt, dim=0)
    noise = None
    if invert:
        x_T = _inverted_noise(pipe, pictures, z_i, one_each, settings["decoder"])
        noise = x_T.repeat_interleave(num_images_per_prompt, dim=0)
    x = pipe.render(
        z,
        captions,
        settings,
        stages_run,
        generators,
        [caption] * batch,
        [""] * batch,
        noise,
        eta if invert else None,
        invert,
    )
    common = pipe.common_metadata(size, settings, stages_run)
    edit = {"edit": "variation", "invert": invert, **({"eta": eta} if invert else {})}
    metadata = [
        {
            "prompt": caption,
            "negative_prompt": "",
            "seed": seeds[k],
            "index": k,
            "source": names[k // num_images_per_prompt],
            **edit,
            **common,
        }
        for k in range(batch)
    ]
    return _output(x, output_type, metadata, return_dict)


def _endpoint(pipe: UnCLIPCascade, item, settings, seed: int) -> torch.Tensor:
    """z_i of an interpolation end: a prompt through the prior (seeded), or an image through CLIP."""
    if isinstance(item, str):
        if not item.strip():
            raise UnclipError("an interpolation end is an empty text: give a prompt or an image")
        guided_prior = uses_guidance(settings["prior"].guidance)
        text = pipe.encode_text([item], [""] if guided_prior else None, pipe._execution_device)
        return pipe.run_prior(text, settings["prior"], [torch.Generator("cpu").manual_seed(seed)], 1)
    return pipe.encode_image(item)


@torch.no_grad()
def interpolate(
    pipe: UnCLIPCascade,
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
    size, stages_run, settings = pipe.plan(size, scheduler, stage_args, first_stage=first)
    generators, seed = _same_noise(seed, frames)
    z_a, z_b = (check_finite("embedding", _endpoint(pipe, item, settings, seed)) for item in (start, end))
    thetas = _thetas(1.0, frames)
    z = slerp(z_a.expand(frames, -1), z_b.expand(frames, -1), thetas.to(z_a.device))
    caption = prompt or ""
    captions = pipe.encode_captions([caption], uses_guidance(settings["decoder"].guidance)).repeat(frames)
    x = pipe.render(z, captions, settings, stages_run, generators, [caption] * frames, [""] * frames)
    ends = {"edit": "interpolation", "from": _describe(start), "to": _describe(end)}
    metadata = _frame_metadata(caption, seed, ends, thetas, pipe.common_metadata(size, settings, stages_run))
    return _output(x, output_type, metadata, return_dict)


@torch.no_grad()
def text_diff(
    pipe: UnCLIPCascade,
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
    size, stages_run, settings = pipe.plan(size, scheduler, stage_args, first_stage="decoder")
    if invert:
        settings["decoder"] = _inversion_settings(settings["decoder"], stage_args)
    generators, seed = _same_noise(seed, frames)
    z_i = check_finite("image encoder", pipe.encode_image(pictures))
    texts = pipe.encode_text([from_prompt, to_prompt], None, pipe._execution_device).embeds
    thetas = _thetas(max_theta, frames)
    z = text_diff_embeddings(z_i[0], texts[0], texts[1], thetas.to(z_i.device))
    caption = pipe.encode_captions([""], uses_guidance(settings["decoder"].guidance))
    captions = caption.repeat(frames)
    noise = None
    if invert:
        x_T = _inverted_noise(pipe, pictures, z_i, caption, settings["decoder"])
        noise = x_T.expand(frames, -1, -1, -1).contiguous()
    x = pipe.render(
        z,
        captions,
        settings,
        stages_run,
        generators,
        [""] * frames,
        [""] * frames,
        noise,
        0.0 if invert else None,
        invert,
    )
    diff = {"edit": "text_diff", "source": _describe(image), "from": from_prompt, "to": to_prompt, "invert": invert}
    metadata = _frame_metadata("", seed, diff, thetas, pipe.common_metadata(size, settings, stages_run))
    return _output(x, output_type, metadata, return_dict)
