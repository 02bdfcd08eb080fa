"""What each stage contributes to the one trainer: the modules it trains, its conditioning and its loss.

Each objective is an ``nn.Module`` holding only the trained modules (what accelerate wraps for DDP).
``prepare`` builds a micro-batch's inputs without gradients (frozen text encoder and CLIP, noise, timesteps,
condition dropout, degraded low-res inputs), drawing every random number from the generator it is given;
``forward`` returns one loss per sample.

* ``prior``: x_0-prediction of the normalised CLIP image embedding from the noised one, the text embedding
  and text tokens; MSE; caption dropped 10% of the time (DALL·E 2 §2.2). Here and in the decoder an image with
  several captions is seen with one drawn at random (``unclip.train.data.pick_captions``).
* ``decoder``: ε-prediction MSE plus λ·L_vlb for the learned variance (Improved DDPM eq. 16); CLIP
  embedding dropped 10% and caption 50% of the time (DALL·E 2 §2.1); optionally on multi-resolution noise
  (``decoder.pyramid_noise``) so that flat colours and layout are decided by the conditioning; ``decoder.edge_weight``
  and ``decoder.contrast_ref`` weigh edges and near-colour pairs up (``unclip.train.weights``).
* ``sr256`` / ``sr1024``: ε-prediction MSE on random crops of a quarter of the target size, the low-res
  input degraded (Gaussian blur; for 256→1024 also noise and JPEG compression, DALL·E 2 Appendix C), or with
  ``data.low_res`` the crop's twin in the picture the stage below made (noise and JPEG still added), and
  noise-augmented at the inference level; optionally each pixel's error weighed up at the target's edges
  (``sr.edge_weight``). The x4 latent upscaler (Karlo + x4's sr1024): the same crops and
  degradation, v-prediction on its VAE's latents, its caption through its own text encoder.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unclip.errors import UnclipError
from unclip.pipeline import UnCLIPCascade
from unclip.stages.decoder import DecoderDenoiser
from unclip.stages.pixel import ConcatDenoiser, augmentation_schedule
from unclip.stages.prior import PriorDenoiser
from unclip.stages.x4 import LatentUpscalerDenoiser
from unclip.text import TextConditioning, tokenize
from unclip.train.config import TrainConfig
from unclip.train.data import LOW_RES_FACTOR, pick_captions
from unclip.train.losses import Process
from unclip.train.weights import contrast_weights, detail, edge_weights, pixel_mean


@dataclass
class Frozen:
    """What the objectives use but never train: the cascade's CLIP text encoder and a CLIP image encoder."""

    cascade: UnCLIPCascade
    clip: Any = None  # unclip.clip_models.ClipImageEncoder, or None when embeddings are cached / unneeded
    cache: Any = None  # unclip.train.embeddings.CachedEmbeddings

    @torch.no_grad()
    def encode_text(self, texts: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids, mask = tokenize(self.cascade.tokenizer, texts)
        out = self.cascade.text_encoder(ids.to(device))
        return out.text_embeds.float(), out.last_hidden_state.float(), mask.to(device)

    @torch.no_grad()
    def image_embeds(self, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        """z_i: from the ``unclip embed`` cache when there is one, else the CLIP image encoder."""
        if self.cache is not None:
            return self.cache.image_embeds[batch["index"].cpu()].to(device).float()
        if self.clip is None:
            raise UnclipError("no CLIP image encoder: set data.clip, or run `unclip embed DATA --clip NAME` first")
        return self.clip(batch["pixel_values"].to(device)).float()


def _uniform(generator: torch.Generator, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _timesteps(generator: torch.Generator, n: int, high: int, low: int = 0) -> torch.Tensor:
    return low + torch.randint(0, high - low, (n,), generator=generator)


def _noise(generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=torch.float32).to(like.device)


def pyramid_noise(generator: torch.Generator, like: torch.Tensor, discount: float) -> torch.Tensor:
    """Multi-resolution ("pyramid") noise (Whitaker 2023): white noise plus white noise drawn at 1/2, 1/4, ...
    of the resolution down to 1×1, upsampled (nearest) and weighted discount^level, scaled back to unit
    variance per pixel. Without it a flat image's mean colour and layout stay readable from x_t up to the
    last few timesteps (the mean of 64×64 white noise has σ = 1/64), so a decoder learns to read them from
    the noise instead of from z_i and the caption and at sampling takes them from x_T: backgrounds and
    positions at random. ``discount`` = 0 is white noise, the same draws as ``_noise``."""
    noise = _noise(generator, like)
    if discount <= 0:
        return noise
    height, width = like.shape[-2:]
    variance, level = 1.0, 1
    while min(height, width) >> (level - 1) > 1:
        low = (max(1, height >> level), max(1, width >> level))
        weight = discount**level
        coarse = torch.randn((*like.shape[:-2], *low), generator=generator, dtype=torch.float32).to(like.device)
        noise = noise + weight * F.interpolate(coarse, size=(height, width), mode="nearest")
        variance += weight**2
        level += 1
    return noise / variance**0.5


def _weights(process: Process, t: torch.Tensor, gamma: float) -> torch.Tensor:
    return process.min_snr_weight(t, gamma) if gamma > 0 else torch.ones(t.shape)


def _drop_text(texts: list[str], drop: torch.Tensor) -> list[str]:
    return ["" if d else text for text, d in zip(texts, drop.tolist(), strict=True)]


class PriorObjective(nn.Module):
    stage = "prior"

    def __init__(self, cascade: UnCLIPCascade, config: TrainConfig):
        super().__init__()
        self.prior = cascade.prior
        self.prior.clip_mean.requires_grad_(False)  # CLIP statistics, not weights
        self.prior.clip_std.requires_grad_(False)
        self.process = Process.of(cascade.prior_scheduler)
        self.options, self.gamma = config.prior, config.min_snr_gamma

    def prepare(self, batch: dict[str, Any], frozen: Frozen, g: torch.Generator, device: torch.device) -> dict:
        z_i = frozen.image_embeds(batch, device)
        n = z_i.shape[0]
        texts = _drop_text(pick_captions(batch, g), _uniform(g, n) < self.options.text_drop)
        embeds, hidden, mask = frozen.encode_text(texts, device)
        x0 = (z_i - self.prior.clip_mean.to(device)) / self.prior.clip_std.to(device)  # normalised z_i
        t = _timesteps(g, n, self.process.num_timesteps)
        noise = _noise(g, x0)
        return dict(
            x_t=self.process.q_sample(x0, t.to(device), noise), t=t.to(device), embeds=embeds, hidden=hidden,
            mask=mask, target=self.process.target(x0, t.to(device), noise),
            weight=_weights(self.process, t, self.gamma).to(device),
        )  # fmt: skip

    def forward(self, x_t, t, embeds, hidden, mask, target, weight) -> torch.Tensor:
        pred = PriorDenoiser(self.prior, embeds, hidden, mask)(x_t, t, 0)  # the prior stage's denoiser
        return weight * ((pred.float() - target) ** 2).mean(1)


class DecoderObjective(nn.Module):
    stage = "decoder"

    def __init__(self, cascade: UnCLIPCascade, config: TrainConfig):
        super().__init__()
        self.decoder, self.text_proj = cascade.decoder, cascade.text_proj
        self.process = Process.of(cascade.decoder_scheduler)
        self.options, self.gamma = config.decoder, config.min_snr_gamma
        channels = self.decoder.config.in_channels
        learned = self.options.learned_variance
        self.learned_variance = self.decoder.config.out_channels == 2 * channels if learned is None else learned
        if self.learned_variance and self.decoder.config.out_channels != 2 * channels:
            raise UnclipError(f"decoder.learned_variance needs a decoder with {2 * channels} output channels")
        self.size = self.decoder.config.sample_size

    def prepare(self, batch: dict[str, Any], frozen: Frozen, g: torch.Generator, device: torch.device) -> dict:
        z_i = frozen.image_embeds(batch, device)
        n = z_i.shape[0]
        drop_image = _uniform(g, n) < self.options.image_embed_drop
        texts = _drop_text(pick_captions(batch, g), _uniform(g, n) < self.options.caption_drop)
        embeds, hidden, mask = frozen.encode_text(texts, device)
        x0 = batch["pixel_values"].to(device).float()
        if x0.shape[-1] != self.size:
            x0 = F.interpolate(x0, size=(self.size, self.size), mode="bicubic", antialias=True).clamp(-1, 1)
        t = _timesteps(g, n, self.process.num_timesteps)
        noise = pyramid_noise(g, x0, self.options.pyramid_noise)
        td = t.to(device)
        return dict(
            x0=x0, x_t=self.process.q_sample(x0, td, noise), t=td, noise=noise, z_i=z_i,
            drop_image=drop_image.to(device), embeds=embeds, hidden=hidden, mask=mask,
            weight=_weights(self.process, t, self.gamma).to(device) * contrast_weights(x0, self.options.contrast_ref),
            pixel_weight=edge_weights(x0, self.options.edge_weight),
        )  # fmt: skip

    def forward(
        self, x0, x_t, t, noise, z_i, drop_image, embeds, hidden, mask, weight, pixel_weight=None
    ) -> torch.Tensor:
        null = self.text_proj.learned_classifier_free_guidance_embeddings.to(z_i.dtype)
        z_i = torch.where(drop_image[:, None], null.expand_as(z_i), z_i)
        rows = TextConditioning(embeds, hidden, mask, doubled=False)
        denoiser = DecoderDenoiser.conditioned(self.decoder, self.text_proj, z_i, rows, guided=False)  # the stage's
        out = denoiser(x_t, t, 0).float()
        channels = x_t.shape[1]
        eps = out[:, :channels]
        loss = weight * pixel_mean((eps - noise) ** 2, pixel_weight)  # L_simple (DDPM eq. 14)
        if self.learned_variance:  # + λ L_vlb through the variance only (Improved DDPM eq. 16)
            vlb = self.process.vlb_term(x0, x_t, t, eps.detach(), out[:, channels:])
            loss = loss + self.options.vlb_weight * self.process.num_timesteps * vlb
        return loss


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress one (3, H, W) image in [−1, 1] at ``quality`` and decode it again."""
    array = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=int(quality))
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), dtype=np.float32)
    return torch.from_numpy(decoded).permute(2, 0, 1).to(image.device) / 127.5 - 1


def _blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-image σ (in pixels of ``images``)."""
    out = []
    for image, sigma in zip(images, sigmas.tolist(), strict=True):
        radius = max(1, int(3 * sigma + 0.5))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
        kernel = torch.exp(-(x**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        padded = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        out.append(F.conv2d(padded, kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3))
    return torch.cat(out)


class SuperResObjective(nn.Module):
    """64→256 (Karlo's ``super_res_first``/``super_res_last``) or 256→1024 (the pixel upsampler)."""

    def __init__(self, cascade: UnCLIPCascade, config: TrainConfig, stage: str):
        super().__init__()
        self.stage = stage
        self.options, self.gamma = config.sr, config.min_snr_gamma
        settings = cascade.model_config.stages[stage]
        if stage == "sr256":
            self.unet = cascade.super_res_last if self.options.train == "last" else cascade.super_res_first
            self.process = Process.of(cascade.super_res_scheduler)
            # Karlo's last model runs only the final sampling step: train it on the lowest timesteps
            self.t_max = self.process.num_timesteps // settings.steps if self.options.train == "last" else None
        else:
            self.unet = cascade.upscaler_unet
            self.process = Process.of(cascade.upscaler_scheduler)
            self.t_max = None
        if self.options.timesteps:
            self.t_min, self.t_max = self.options.timesteps
            if self.t_max > self.process.num_timesteps:
                raise UnclipError(
                    f"sr.timesteps: {list(self.options.timesteps)} goes past the scheduler's "
                    f"{self.process.num_timesteps} timesteps; give [low, high] with high ≤ {self.process.num_timesteps}"
                )
        else:
            self.t_min = 0
        self.noise_level = settings.noise_level if self.options.noise_level < 0 else self.options.noise_level
        self.augment = augmentation_schedule()  # as at inference
        self.size = self.unet.config.sample_size

    def degrade(self, low: torch.Tensor, g: torch.Generator, twin: torch.Tensor | None = None) -> torch.Tensor:
        """The paper's low-res corruption: blur for 64→256; blur, noise and JPEG for 256→1024 (``sr.noise_sigma``,
        ``sr.jpeg_quality`` set either for either stage). With ``twin`` (the crops' low-res twins, ``data.low_res``)
        a fraction ``sr.paired`` of the images start from their twin instead of their blurred copy."""
        n = low.shape[0]
        low = _blur(low, _uniform(g, n, *self.options.blur_sigma))
        if twin is not None:
            paired = (_uniform(g, n) < self.options.paired).view(-1, 1, 1, 1).to(low.device)
            low = torch.where(paired, twin, low)
        paper = self.stage == "sr1024"
        noise = self.options.noise_sigma or ((0.0, 0.04) if paper else (0.0, 0.0))
        quality = self.options.jpeg_quality or ((30, 96) if paper else (0, 0))
        if noise[1] > 0:
            low = low + _uniform(g, n, *noise).view(-1, 1, 1, 1).to(low.device) * _noise(g, low)
        if quality[1] > 0:
            qualities = torch.randint(quality[0], quality[1], (n,), generator=g).tolist()
            low = torch.stack([_jpeg(image, q) for image, q in zip(low, qualities, strict=True)])
        return low.clamp(-1, 1)

    def random_crops(self, batch: dict[str, Any], g: torch.Generator, device: torch.device, unit: int,
                     smallest: int) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """The batch's images at the stage's size, and from each a random square crop of ``sr.crop_fraction`` of
        the side (a multiple of ``unit`` pixels, at least ``smallest``); of ``sr.crop_tries`` such crops of an
        image, the one with the most detail. With low-res twins in the batch (``data.low_res``) also each crop's
        twin, the same square of it (the crops then start on whole low-res pixels); else None."""
        images = self._at(batch["pixel_values"].to(device).float(), self.size)
        twins = batch.get("low_res_values")
        step = 1 if twins is None else LOW_RES_FACTOR
        if twins is not None:
            twins = self._at(twins.to(device).float(), self.size // LOW_RES_FACTOR)
        n, tries = images.shape[0], self.options.crop_tries
        crop = max(smallest, int(self.size * self.options.crop_fraction) // unit * unit)
        shape = (n,) if tries == 1 else (n, tries)  # one try draws as before: the same crops for the same seed
        tops = (torch.randint(0, (self.size - crop) // step + 1, shape, generator=g) * step).view(n, tries).tolist()
        lefts = (torch.randint(0, (self.size - crop) // step + 1, shape, generator=g) * step).view(n, tries).tolist()
        crops, twin_crops = [], []
        for k, (image, ys, xs) in enumerate(zip(images, tops, lefts, strict=True)):
            candidates = torch.stack([image[:, y : y + crop, x : x + crop] for y, x in zip(ys, xs, strict=True)])
            best = int(detail(candidates).argmax()) if tries > 1 else 0
            crops.append(candidates[best])
            if twins is not None:
                y, x, side = ys[best] // step, xs[best] // step, crop // step
                twin_crops.append(twins[k, :, y : y + side, x : x + side])
        return torch.stack(crops), torch.stack(twin_crops) if twins is not None else None

    @staticmethod
    def _at(images: torch.Tensor, size: int) -> torch.Tensor:
        if images.shape[-1] == size:
            return images
        return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)

    def prepare(self, batch: dict[str, Any], frozen: Frozen, g: torch.Generator, device: torch.device) -> dict:
        x0, twins = self.random_crops(batch, g, device, unit=LOW_RES_FACTOR, smallest=16)
        n, crop = x0.shape[0], x0.shape[-1]
        low = F.interpolate(x0, size=(crop // 4, crop // 4), mode="bicubic", antialias=True).clamp(-1, 1)
        low = self.degrade(low, g, twins)
        low = F.interpolate(low, size=(crop, crop), mode="bicubic", antialias=True)
        if self.noise_level > 0:
            level = torch.full((n,), self.noise_level, dtype=torch.long)
            low = self.augment.add_noise(low, _noise(g, low), level.to(device))
        t = _timesteps(g, n, self.t_max or self.process.num_timesteps, self.t_min)
        noise = _noise(g, x0)
        td = t.to(device)
        return dict(
            x_t=self.process.q_sample(x0, td, noise), t=td, low_res=low, target=self.process.target(x0, td, noise),
            weight=_weights(self.process, t, self.gamma).to(device),
            pixel_weight=edge_weights(x0, self.options.edge_weight),
        )  # fmt: skip

    def forward(self, x_t, t, low_res, target, weight, pixel_weight=None) -> torch.Tensor:
        out = ConcatDenoiser(self.unet, low_res)(x_t, t, 0).float()  # the upsampler stages' denoiser
        return weight * pixel_mean(self.error(out[:, : target.shape[1]] - target), pixel_weight)

    def error(self, difference: torch.Tensor) -> torch.Tensor:
        """The per-element error of ``sr.loss``: squared (l2) or absolute (l1)."""
        return difference.abs() if self.options.loss == "l1" else difference**2


class LatentUpscalerObjective(SuperResObjective):
    """256→1024 with the Stable Diffusion x4 latent upscaler (``upscaler_unet``; its text encoder and VAE frozen):
    v-prediction MSE on the VAE latents (× ``scaling_factor``) of random crops of the 1024 px image, conditioned as
    ``unclip.stages.x4`` samples: the crop's degraded copy at a quarter of its side, noise-augmented at the
    inference level by the upscaler's own low-res scheduler, concatenated to x_t, the level as class label; the
    caption through the upscaler's CLIP text encoder, dropped ``sr.text_drop`` of the time (the empty prompt of
    guidance)."""

    def __init__(self, cascade: UnCLIPCascade, config: TrainConfig):
        super().__init__(cascade, config, "sr1024")
        self.augment = cascade.upscaler_low_res_scheduler
        vae = cascade.upscaler_vae
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)  # pixels per latent (4: 256 latents → 1024 px)
        self.size = cascade.stages["sr1024"].size
        if config.data.low_res and self.factor != LOW_RES_FACTOR:
            raise UnclipError(
                f"data.low_res twins are a quarter of the image's side, but this upscaler's VAE has {self.factor} "
                "pixels per latent: leave data.low_res out"
            )
        if config.sr.edge_weight > 0:
            raise UnclipError("sr.edge_weight weighs pixels of the pixel upsamplers; this one denoises VAE latents: "
                              "leave sr.edge_weight out")  # fmt: skip
        self.text_drop = config.sr.text_drop
        self._frozen = (cascade, vae)  # a tuple: not submodules, so neither trained nor wrapped by DDP

    @torch.no_grad()
    def _text(self, texts: list[str], device: torch.device) -> torch.Tensor:
        cascade = self._frozen[0]
        encoder = cascade.upscaler_text_encoder
        ids, mask = tokenize(cascade.upscaler_tokenizer, texts)
        use_mask = getattr(encoder.config, "use_attention_mask", False)
        return encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0].float()

    @torch.no_grad()
    def prepare(self, batch: dict[str, Any], frozen: Frozen, g: torch.Generator, device: torch.device) -> dict:
        unit = 8 * self.factor  # the latent crop stays divisible by the UNet's downsampling
        crops, twins = self.random_crops(batch, g, device, unit=unit, smallest=unit)
        n, crop = crops.shape[0], crops.shape[-1]
        low = F.interpolate(crops, size=(crop // self.factor,) * 2, mode="bicubic", antialias=True).clamp(-1, 1)
        low = self.degrade(low, g, twins)
        level = torch.full((n,), self.noise_level, dtype=torch.long, device=device)
        low = self.augment.add_noise(low, _noise(g, low), level)
        vae = self._frozen[1]
        posterior = vae.encode(crops.to(vae.dtype)).latent_dist
        x0 = (posterior.mean + posterior.std * _noise(g, posterior.mean)).float() * vae.config.scaling_factor
        texts = _drop_text(pick_captions(batch, g), _uniform(g, n) < self.text_drop)
        t = _timesteps(g, n, self.t_max or self.process.num_timesteps, self.t_min)
        noise = _noise(g, x0)
        td = t.to(device)
        return dict(
            x_t=self.process.q_sample(x0, td, noise), t=td, low_res=low, level=level, hidden=self._text(texts, device),
            target=self.process.target(x0, td, noise), weight=_weights(self.process, t, self.gamma).to(device),
        )  # fmt: skip

    def forward(self, x_t, t, low_res, level, hidden, target, weight) -> torch.Tensor:
        out = LatentUpscalerDenoiser(self.unet, low_res.to(x_t.dtype), level, hidden)(x_t, t, 0).float()
        return weight * self.error(out - target).flatten(1).mean(1)


# The objective of each kind of stage that trains (``unclip.stages.KINDS``).
OBJECTIVES = {
    "prior": PriorObjective,
    "decoder": DecoderObjective,
    "sr256": lambda cascade, config: SuperResObjective(cascade, config, "sr256"),
    "pixel": lambda cascade, config: SuperResObjective(cascade, config, "sr1024"),
    "x4": LatentUpscalerObjective,
}
CLIP_RESOLUTION = 224  # the images of the text stages feed a CLIP image encoder (unless embeddings are cached)


def data_resolution(stage: str) -> int:
    """The image size a stage's data loader gives (before its own resizing and cropping): CLIP's input for the
    stages conditioned on z_i (prior, decoder), else the side the stage makes (``Stage.size``)."""
    from unclip.stages import first_of

    return CLIP_RESOLUTION if first_of(stage).trains_on_clip else first_of(stage).size


def objective_for(cascade: UnCLIPCascade, config: TrainConfig) -> nn.Module:
    """The objective of the kind of ``config.stage`` the cascade has, or a one-line error saying what would train."""
    from unclip.stages import KINDS, first_of

    stage = config.stage
    kind = cascade.stages.get(stage)
    trainable = " or ".join(k for k in OBJECTIVES if KINDS[k].name == stage)
    if kind is None or kind.kind not in OBJECTIVES:
        has = f"its {stage} is {kind.kind}" if kind is not None else first_of(stage).missing.format(title=stage)
        raise UnclipError(
            f"stage {stage} trains a {trainable} stage, but the model of init_from has none ({has}): pick another "
            "init_from, or leave it out to train one from scratch"
        )
    return OBJECTIVES[kind.kind](cascade, config)
