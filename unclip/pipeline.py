"""``UnCLIPCascade``: text → CLIP text encoder → prior → 64 px decoder → 64→256 → 256→1024.

    from unclip import UnCLIPCascade
    pipe = UnCLIPCascade.from_config("karlo-x4", torch_dtype=torch.float16).to("cuda")
    out = pipe("a corgi playing a trumpet", num_images_per_prompt=2, seed=0, size=1024)
    out.images[0].save("corgi.png"); out.metadata[0]["seed"]

Stage names used throughout: ``prior``, ``decoder``, ``sr256`` (Karlo's 64→256 pair) and ``sr1024`` (the
model config's ``upscaler``: the Stable Diffusion x4 latent upscaler, or a pixel-space upsampler as unclip's
trainer writes it). Every stage runs through the one loop of ``unclip.sampling``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline, UnCLIPScheduler
from tqdm.auto import tqdm

from unclip import edits
from unclip.clip_models import ClipImageEncoder, from_transformers, load_clip_image_encoder
from unclip.config import STAGES, ModelConfig, StageSettings, load_model_config, save_model_config
from unclip.errors import UnclipError
from unclip.guidance import guided, uses_guidance
from unclip.images import load_images
from unclip.loading import LAYOUTS, detect_upscaler_layout, load_layout
from unclip.pipeline_utils import (
    STAGE_ARGUMENTS,
    CascadeOutput,
    TextConditioning,
    check_count,
    check_finite,
    check_output_type,
    clip_similarity,
    fork_generator,
    image_generators,
    negatives_for,
    postprocess,
    prompt_list,
    tokenize,
)
from unclip.sampling import initial_noise, sample
from unclip.schedulers import make_scheduler
from unclip.speedups import Speedups, vae_decode_dtype
from unclip.speedups import apply as apply_speedups
from unclip.stages import (
    DecoderDenoiser,
    LatentUpscalerDenoiser,
    PixelUpsamplerDenoiser,
    PriorDenoiser,
    SuperResDenoiser,
)

if TYPE_CHECKING:
    from unclip.rerank import ClipReranker

logger = logging.getLogger("unclip")

SIZES = (64, 256, 1024)
UPSCALER_PREFIX = "upscaler_"
# Noise augmentation of the pixel upsamplers' low-res input (sr256, pixel sr1024): levels are timesteps of
# this schedule, the one unclip's trainer augments with.
AUGMENTATION_TIMESTEPS = 1000


class UnCLIPCascade(DiffusionPipeline):
    """The DALL·E 2-style cascade on Karlo's components, optionally followed by a 256→1024 upscaler: the x4
    latent upscaler (``upscaler_`` + unet, vae, text_encoder, tokenizer, scheduler, low_res_scheduler) or a
    pixel upsampler (``upscaler_unet``, ``upscaler_scheduler``; the x4-only components are None)."""

    # diffusers' enable_model_cpu_offload skips the names whose component is None (no prior, pixel upscaler)
    model_cpu_offload_seq = (
        "image_encoder->text_encoder->prior->text_proj->decoder->super_res_first->super_res_last"
        "->upscaler_text_encoder->upscaler_unet->upscaler_vae"
    )
    _optional_components = ["prior", "prior_scheduler", "image_encoder", "feature_extractor"] + [
        UPSCALER_PREFIX + name for name in LAYOUTS["x4"]
    ]

    def __init__(
        self,
        text_encoder,
        tokenizer,
        text_proj,
        decoder,
        decoder_scheduler,
        super_res_first,
        super_res_last,
        super_res_scheduler,
        prior=None,
        prior_scheduler=None,
        upscaler_unet=None,
        upscaler_vae=None,
        upscaler_text_encoder=None,
        upscaler_tokenizer=None,
        upscaler_scheduler=None,
        upscaler_low_res_scheduler=None,
        image_encoder=None,
        feature_extractor=None,
        max_noise_level: int = 350,
        model_config: ModelConfig | None = None,
    ):
        super().__init__()
        self.register_modules(
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_proj=text_proj,
            decoder=decoder,
            decoder_scheduler=decoder_scheduler,
            super_res_first=super_res_first,
            super_res_last=super_res_last,
            super_res_scheduler=super_res_scheduler,
            prior=prior,
            prior_scheduler=prior_scheduler,
            upscaler_unet=upscaler_unet,
            upscaler_vae=upscaler_vae,
            upscaler_text_encoder=upscaler_text_encoder,
            upscaler_tokenizer=upscaler_tokenizer,
            upscaler_scheduler=upscaler_scheduler,
            upscaler_low_res_scheduler=upscaler_low_res_scheduler,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.max_noise_level = max_noise_level
        self._clip_image_encoder: ClipImageEncoder | None = None  # the model config's, loaded on first use
        self.speedups = Speedups()
        self._compiled: dict[str, Any] = {}  # component name -> its torch.compile'd callable, when switched on
        self._compile_cache: dict[tuple, Any] = {}
        self.model_config = model_config or ModelConfig(unclip="", upscaler="x4" if upscaler_unet else None)

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, model: str | Path | ModelConfig, torch_dtype: torch.dtype | None = None) -> UnCLIPCascade:
        """Load a cascade from a preset name (``karlo-x4``), a model YAML file or a ``ModelConfig``.

        Each location in the config is a hub id (downloaded once, then read from the cache) or a local
        folder in that repo's layout. In float16 the x4 upscaler's VAE stays in float32: it overflows in
        float16 (black images), as in the reference pipeline. ``upscaler`` may also be a pixel-space
        256→1024 upsampler (the layout unclip's trainer writes).
        """
        config = model if isinstance(model, ModelConfig) else load_model_config(model)
        dtype = torch_dtype or torch.float32
        components = load_layout(config.unclip, "karlo", dtype)
        if config.upscaler:
            layout = detect_upscaler_layout(config.upscaler)
            upscaler = load_layout(config.upscaler, layout, dtype)
            components["max_noise_level"] = upscaler.pop("max_noise_level", 350)
            if layout == "x4" and dtype == torch.float16:
                upscaler["vae"].to(torch.float32)
            components.update({UPSCALER_PREFIX + name: module for name, module in upscaler.items()})
        return cls(**components, model_config=config)

    def save_pretrained(self, save_directory: str | Path, **_: Any) -> Path:
        """Write ``unclip/`` (Karlo layout), ``upscaler/`` (x4 or pixel layout, as loaded) and ``model.yaml``
        that loads them."""
        root = Path(save_directory)
        layouts = {"unclip": ("karlo", "UnCLIPPipeline", "")}
        if self.upscaler_layout == "x4":
            layouts["upscaler"] = ("x4", "StableDiffusionUpscalePipeline", UPSCALER_PREFIX)
        elif self.upscaler_layout == "pixel":
            layouts["upscaler"] = ("pixel", "PixelUpscalerPipeline", UPSCALER_PREFIX)
        for folder, (layout, pipeline_class, prefix) in layouts.items():
            index: dict[str, Any] = {"_class_name": pipeline_class}
            for name in LAYOUTS[layout]:
                component = getattr(self, prefix + name)
                if component is None:
                    continue
                component.save_pretrained(root / folder / name)
                library = type(component).__module__.split(".")[0]
                index[name] = [library, type(component).__name__]
            if layout == "x4":
                index["max_noise_level"] = self.max_noise_level
            if layout == "pixel":
                index["_unclip_layout"] = "pixel"
            (root / folder / "model_index.json").write_text(_json(index))
        config = dataclasses.replace(
            self.model_config, unclip="unclip", upscaler="upscaler" if len(layouts) > 1 else None
        )
        return save_model_config(config, root / "model.yaml")

    # --------------------------------------------------------------------------------------- settings
    @property
    def upscaler_layout(self) -> str | None:
        """``x4`` (the SD x4 latent upscaler), ``pixel`` (a pixel-space UNet) or None (the cascade ends at 256)."""
        if self.upscaler_unet is None:
            return None
        return "x4" if self.upscaler_vae is not None else "pixel"

    @property
    def max_size(self) -> int:
        return 1024 if self.upscaler_unet is not None else 256

    def set_attention(self, backend: str) -> None:
        """``sdpa`` (PyTorch scaled_dot_product_attention, the default) or ``xformers``."""
        if backend == "sdpa":
            if getattr(self, "_xformers", False):
                self.disable_xformers_memory_efficient_attention()
                self._xformers = False
            return
        check_attention(backend, self._execution_device)
        self.enable_xformers_memory_efficient_attention()
        self._xformers = True

    def enable_speedups(self, speedups: Speedups) -> None:
        """Switch the GPU speed-ups of ``unclip.speedups`` on and off (each field; call again to change)."""
        self._compiled = apply_speedups(self, speedups)
        self.speedups = speedups

    def _model(self, name: str):
        """The component that denoises, or its compiled form when ``speedups.compile`` names its stage."""
        return self._compiled.get(name, getattr(self, name))

    def _sample(self, denoiser, scheduler, x_T, s: StageSettings, generators, desc: str, **kwargs) -> torch.Tensor:
        """``unclip.sampling.sample`` for one stage, with this cascade's progress bar and speed-ups."""
        return sample(
            denoiser, scheduler, x_T, s.steps, generators, desc=desc, progress=self._progress,
            host_timesteps=self.speedups.host_timesteps, **kwargs,
        )  # fmt: skip

    def _guided(self, denoiser, scale: float, guided_channels: int | None = None):
        return guided(denoiser, scale, guided_channels, split=self.speedups.split_guidance)

    def stage_settings(
        self, overrides: dict[str, dict[str, Any]] | None = None, stages: tuple[str, ...] = STAGES
    ) -> dict[str, StageSettings]:
        """The model config's settings per stage with ``{stage: {field: value}}`` overrides (None = keep).

        Only ``stages`` (those that will run) are checked: a 256 px preview ignores the x4 stage's settings.
        A pixel upscaler has no text: its ``sr1024`` guidance is ignored (kept as given in the metadata), and
        its scheduler names are checked against its own scheduler.
        """
        settings = {}
        for stage in STAGES:
            changes = {k: v for k, v in (overrides or {}).get(stage, {}).items() if v is not None}
            settings[stage] = dataclasses.replace(self.model_config.stages[stage], **changes)
            if stage not in stages:
                continue
            settings[stage].validate(stage)
            try:  # fail before any work on a bad name
                scheduler = make_scheduler(settings[stage].scheduler, self._reference_scheduler(stage))
            except UnclipError as error:
                raise UnclipError(f"{stage}: {error}") from None
            if isinstance(scheduler, UnCLIPScheduler) and settings[stage].steps < 2:  # it divides by steps − 1
                raise UnclipError(
                    f"{stage}: the UnCLIP scheduler needs steps ≥ 2, got {settings[stage].steps}; "
                    "for one step choose the ddim scheduler"
                )
            start = settings[stage].start
            if start > 0 and stage in ("sr256", "sr1024"):  # fail now, not after the prior and decoder ran
                scheduler.set_timesteps(settings[stage].steps)
                if not (scheduler.timesteps <= start).any():
                    raise UnclipError(
                        f"{stage}: start {start} is below every one of its {settings[stage].steps} timesteps "
                        f"({', '.join(str(int(t)) for t in scheduler.timesteps)}): raise start or steps"
                    )
        if settings["prior"].start:
            raise UnclipError("prior: start applies to the decoder (DDIM inversion) and the pixel upsamplers only")
        if "sr1024" in stages and settings["sr1024"].start and self.upscaler_layout == "x4":
            raise UnclipError("sr1024: start applies to pixel upsamplers; the x4 upscaler starts from noise")
        for stage in ("sr256", "sr1024"):
            limit = self._max_noise_level(stage)
            if stage in stages and settings[stage].noise_level > limit:
                raise UnclipError(f"{stage} noise_level must be ≤ {limit}, got {settings[stage].noise_level}")
        return settings

    def _max_noise_level(self, stage: str) -> int:
        """The x4 upscaler's own limit (its model_index.json); a pixel upsampler's augmentation schedule's last step."""
        if stage == "sr1024" and self.upscaler_layout == "x4":
            return self.max_noise_level
        return AUGMENTATION_TIMESTEPS - 1

    def _reference_scheduler(self, stage: str):
        names = {"prior": "prior_scheduler", "decoder": "decoder_scheduler", "sr256": "super_res_scheduler"}
        scheduler = getattr(self, names.get(stage, "upscaler_scheduler"))
        return scheduler if scheduler is not None else self.decoder_scheduler  # a stage this model lacks

    def _progress(self, iterable, desc: str):
        return tqdm(iterable, **{"desc": desc, "leave": False, **getattr(self, "_progress_bar_config", {})})

    # ------------------------------------------------------------------------------------------ stages
    def encode_text(self, prompts: list[str], negatives: list[str] | None, device: torch.device) -> TextConditioning:
        """CLIP text embeddings z_t, hidden states and masks; ``[negatives; prompts]`` when given.

        Each distinct text goes through the encoder alone, as UnCLIPPipeline does it, so a row does not
        depend on what else is in the batch (same seed, same picture, alone or batched)."""
        texts = (negatives or []) + prompts
        ids, mask = tokenize(self.tokenizer, texts)
        first = {text: row for row, text in reversed(list(enumerate(texts)))}
        encoded = {text: self.text_encoder(ids[row : row + 1].to(device)) for text, row in first.items()}
        embeds = torch.cat([encoded[text].text_embeds for text in texts])
        hidden = torch.cat([encoded[text].last_hidden_state for text in texts])
        return TextConditioning(embeds, hidden, mask.to(device), negatives is not None)

    def run_prior(
        self, text: TextConditioning, s: StageSettings, generators, batch: int, samples: int = 1
    ) -> torch.Tensor:
        """Sample CLIP image embeddings z_i ~ P(z_i | y) (DALL·E 2 §2.2).

        ``samples`` > 1: the paper's best-of-n (§2.2: "we generate two samples of z_i and select the one with
        the higher dot product with z_t"): image k draws ``samples`` embeddings and keeps the one whose
        direction is closest to its text embedding z_t. Draw 0 uses the image's generator, draw j a generator
        seeded from (its initial seed, j): so the image is the one ``samples=1`` makes unless another draw
        is closer to the text."""
        if self.prior is None:
            raise UnclipError("this model has no prior (an image-variations layout): it cannot start from text")
        if samples > 1:
            draws = [g if j == 0 else fork_generator(g, j) for g in generators for j in range(samples)]
            candidates = self.run_prior(text.repeat(samples), s, draws, batch * samples)
            candidates = candidates.view(batch, samples, -1)
            best = clip_similarity(candidates, text.prompt_embeds()[:, None]).argmax(dim=1)
            return candidates[torch.arange(batch, device=best.device), best]
        rows = text.rows(uses_guidance(s.guidance))
        prior = PriorDenoiser(self._model("prior"), rows.embeds, rows.hidden_states, rows.mask)
        x_T = initial_noise((batch, self.prior.config.embedding_dim), generators, rows.embeds.device, rows.embeds.dtype)
        scheduler = make_scheduler(s.scheduler, self.prior_scheduler)
        z = self._sample(self._guided(prior, s.guidance), scheduler, x_T, s, generators, "prior")
        return self.prior.post_process_latents(z)  # undo the clip_mean/clip_std normalisation

    def decoder_denoiser(self, image_embeds: torch.Tensor, text: TextConditioning, s: StageSettings):
        """The decoder's (guided) denoiser for z_i and the caption rows: what sampling and inversion both run."""
        use_cfg = uses_guidance(s.guidance)
        rows = text.rows(use_cfg)
        hidden, time_embeds = self.text_proj(
            image_embeddings=image_embeds,
            prompt_embeds=rows.embeds,
            text_encoder_hidden_states=rows.hidden_states,
            do_classifier_free_guidance=use_cfg,
        )
        mask = F.pad(rows.mask, (self.text_proj.config.clip_extra_context_tokens, 0), value=True)
        channels = self.decoder.config.in_channels
        return self._guided(DecoderDenoiser(self._model("decoder"), hidden, time_embeds, mask), s.guidance, channels)

    def run_decoder(
        self,
        image_embeds: torch.Tensor,
        text: TextConditioning,
        s: StageSettings,
        generators,
        x_T: torch.Tensor | None = None,
        eta: float | None = None,
        inverted: bool = False,
    ) -> torch.Tensor:
        """Sample a 64 px image x ~ P(x | z_i, y) (DALL·E 2 §2.1), guided with the learned null embedding.

        ``x_T``: the decoder noise, e.g. held fixed across frames (default: drawn from the generators).
        ``inverted``: ``x_T`` is an image's DDIM inversion, at the first timestep ≤ ``s.start`` when that is > 0.
        ``eta``: DDIM's η (Song et al. 2021, eq. 16) for the ddim scheduler."""
        denoiser = self.decoder_denoiser(image_embeds, text, s)
        channels, size = self.decoder.config.in_channels, self.decoder.config.sample_size
        if x_T is None:
            shape = (image_embeds.shape[0], channels, size, size)
            x_T = initial_noise(shape, generators, image_embeds.device, self.decoder.dtype)
        scheduler = make_scheduler(s.scheduler, self.decoder_scheduler)
        step_kwargs = {"eta": eta} if eta is not None else None
        x = self._sample(
            denoiser,
            scheduler,
            x_T,
            s,
            generators,
            "decoder",
            step_kwargs=step_kwargs,
            start=s.start if inverted else 0,
        )
        return x.clamp(-1, 1)

    def run_sr256(self, image: torch.Tensor, s: StageSettings, generators) -> torch.Tensor:
        """64→256 (DALL·E 2 §2.1, upsamplers): bicubic-upsampled low-res image as extra input channels;
        Karlo's ``super_res_first`` runs every step but the last, ``super_res_last`` the last."""
        x_T, low_res = _pixel_upsampler_inputs(image, self.super_res_first, s, generators)
        scheduler = make_scheduler(s.scheduler, self.super_res_scheduler)
        denoiser = SuperResDenoiser(self._model("super_res_first"), self._model("super_res_last"), low_res, s.steps)
        return self._sample(denoiser, scheduler, x_T, s, generators, "sr256", **_start(s, low_res))

    def run_sr1024(
        self, image: torch.Tensor, prompts: list[str], negatives: list[str], s: StageSettings, generators
    ) -> torch.Tensor:
        """256→1024: the x4 latent upscaler, or a pixel-space upsampler."""
        if self.upscaler_layout == "pixel":
            return self.run_pixel_sr1024(image, s, generators)
        return self.run_x4_sr1024(image, prompts, negatives, s, generators)

    def run_pixel_sr1024(self, image: torch.Tensor, s: StageSettings, generators) -> torch.Tensor:
        """256→1024 in pixel space (DALL·E 2 §2.1 and Appendix C): the bicubic-upsampled 256 px image as extra
        input channels of one UNet without attention; no text, so no guidance (``s.guidance`` is ignored)."""
        x_T, low_res = _pixel_upsampler_inputs(image.clamp(-1, 1), self.upscaler_unet, s, generators)
        scheduler = make_scheduler(s.scheduler, self.upscaler_scheduler)
        denoiser = PixelUpsamplerDenoiser(self._model("upscaler_unet"), low_res)
        return self._sample(denoiser, scheduler, x_T, s, generators, "sr1024", **_start(s, low_res))

    def run_x4_sr1024(
        self, image: torch.Tensor, prompts: list[str], negatives: list[str], s: StageSettings, generators
    ) -> torch.Tensor:
        """256→1024 with the x4 latent upscaler, as StableDiffusionUpscalePipeline does it."""
        use_cfg = uses_guidance(s.guidance)
        device = image.device
        ids, mask = tokenize(self.upscaler_tokenizer, (negatives if use_cfg else []) + prompts)
        use_mask = getattr(self.upscaler_text_encoder.config, "use_attention_mask", False)
        hidden = self.upscaler_text_encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
        low_res = ((image * 0.5 + 0.5).clamp(0, 1) * 2 - 1).to(
            hidden.dtype
        )  # the float image, as the reference gets it
        level = torch.tensor([s.noise_level], dtype=torch.long, device=device)
        low_res = _augment(low_res, level, self.upscaler_low_res_scheduler, generators)
        repeat = 2 if use_cfg else 1
        denoiser = LatentUpscalerDenoiser(
            self._model("upscaler_unet"), torch.cat([low_res] * repeat), level.repeat(low_res.shape[0] * repeat), hidden
        )
        vae = self.upscaler_vae
        shape = (image.shape[0], vae.config.latent_channels, *image.shape[2:])
        x_T = initial_noise(shape, generators, device, hidden.dtype)
        scheduler = make_scheduler(s.scheduler, self.upscaler_scheduler)
        latents = self._sample(self._guided(denoiser, s.guidance), scheduler, x_T, s, generators, "sr1024")
        decode_dtype = vae_decode_dtype(self.speedups, hidden.dtype)  # never float16: the x4 VAE overflows in it
        if vae.dtype != decode_dtype:  # (nn.Module's own .to: ModelMixin's warns of fp32 modules this VAE lacks)
            torch.nn.Module.to(vae, decode_dtype)
        check_finite("sr1024 (latents)", latents)
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample

    # ------------------------------------------------------------------------------------------ images
    def clip_image_encoder(self) -> ClipImageEncoder:
        """The CLIP image tower that maps images to z_i: the layout's own (karlo-v1-alpha-image-variations has
        ``image_encoder`` and ``feature_extractor``), else the model config's ``image_encoder``, loaded once."""
        device = self._execution_device
        if self.image_encoder is not None:
            if self.feature_extractor is None:
                raise UnclipError("the model has an image_encoder but no feature_extractor: the download is incomplete")
            return from_transformers(self.image_encoder, self.feature_extractor).to(device)
        name = self.model_config.image_encoder
        if not name:
            raise UnclipError(
                f"model {self.model_config.name or '(unnamed)'} has no CLIP image encoder: add 'image_encoder: "
                "hf:openai/clip-vit-large-patch14' (Karlo's CLIP) to its model config, or use an image-variations repo"
            )
        if self._clip_image_encoder is None or self._clip_image_encoder.name != name:
            self._clip_image_encoder = load_clip_image_encoder(name, device, self.dtype)
        return self._clip_image_encoder.to(device)

    @torch.no_grad()
    def encode_image(self, image) -> torch.Tensor:
        """CLIP image embeddings z_i (B, D) of images: PIL images, files, or a (B, 3, H, W) tensor in [0, 1]."""
        encoder = self.clip_image_encoder()
        expected = self.text_proj.config.clip_embeddings_dim
        if encoder.dim != expected:
            raise UnclipError(
                f"image encoder {encoder.name} makes {encoder.dim}-d embeddings but the decoder takes {expected}-d: "
                "use the CLIP the decoder was trained with"
            )
        embeds = [encoder(picture[None] * 2 - 1) for picture in load_images(image)]  # each at its own size
        return torch.cat(embeds).to(self._execution_device, self.text_proj.dtype)

    def encode_captions(self, captions: list[str], guided_stage: bool) -> TextConditioning:
        """The decoder's caption rows: ``captions`` (with ``""`` as their unconditional half when guided)."""
        negatives = [""] * len(captions) if guided_stage else None
        return self.encode_text(captions, negatives, self._execution_device)

    # ------------------------------------------------------------------------------ shared by every call
    def plan(
        self,
        size: int | None,
        scheduler: str | dict[str, str] | None,
        stage_args: dict[str, Any],
        first_stage: str = "prior",
    ) -> tuple[int, tuple[str, ...], dict[str, StageSettings]]:
        """The output size, the stages that run (from ``first_stage`` to ``size``) and their settings, checked
        before any work. ``stage_args`` are ``__call__``'s per-stage keywords (``STAGE_ARGUMENTS``)."""
        unknown = sorted(set(stage_args) - set(STAGE_ARGUMENTS))
        if unknown:
            raise UnclipError(f"unknown argument '{unknown[0]}'; per-stage arguments: {', '.join(STAGE_ARGUMENTS)}")
        size = size or self.max_size
        if size not in SIZES:
            raise UnclipError(f"size must be one of 64, 256 or 1024, got {size}")
        if size > self.max_size:
            raise UnclipError(f"size {size} needs an upscaler: add 'upscaler:' to the model config, or ask for 256")
        schedulers = scheduler if isinstance(scheduler, dict) else {stage: scheduler for stage in STAGES}
        unknown = sorted(set(schedulers) - set(STAGES))
        if unknown:
            raise UnclipError(f"unknown stage '{unknown[0]}' in scheduler; stages: {', '.join(STAGES)}")
        below = dict(zip(STAGES, (0, 0, 64, 256), strict=True))
        stages_run = tuple(s for s in STAGES[STAGES.index(first_stage) :] if size > below[s])
        overrides: dict[str, dict[str, Any]] = {stage: {"scheduler": schedulers.get(stage)} for stage in STAGES}
        for name, value in stage_args.items():
            stage, field = STAGE_ARGUMENTS[name]
            overrides[stage][field] = value
        settings = self.stage_settings(overrides, stages_run)
        if self._execution_device.type == "cpu" and self.dtype == torch.float16:
            raise UnclipError("float16 needs a GPU: on CPU load with torch_dtype=torch.float32 (or bfloat16)")
        return size, stages_run, settings

    def render(
        self,
        image_embeds: torch.Tensor,
        captions: TextConditioning,
        settings: dict[str, StageSettings],
        stages_run: tuple[str, ...],
        generators,
        prompts: list[str],
        negatives: list[str],
        decoder_noise: torch.Tensor | None = None,
        eta: float | None = None,
        inverted: bool = False,
    ) -> torch.Tensor:
        """z_i → 64 px decoder → the upsamplers in ``stages_run``: images in [-1, 1]. ``prompts`` and
        ``negatives`` are the x4 upscaler's text; ``decoder_noise``, ``eta``, ``inverted``: see ``run_decoder``."""
        decoder = self.run_decoder(
            image_embeds, captions, settings["decoder"], generators, decoder_noise, eta, inverted
        )
        x = check_finite("decoder", decoder)
        if "sr256" in stages_run:
            x = check_finite("sr256", self.run_sr256(x, settings["sr256"], generators))
        if "sr1024" in stages_run:
            x = check_finite("sr1024", self.run_sr1024(x, prompts, negatives, settings["sr1024"], generators))
        self.maybe_free_model_hooks()
        return x

    def common_metadata(self, size: int, settings: dict[str, StageSettings], stages_run: tuple[str, ...]) -> dict:
        return {
            "size": size,
            "model": self.model_config.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self._execution_device.type,
            **({"speedups": self.speedups.describe()} if self.speedups != Speedups() else {}),
            "stages": {stage: dataclasses.asdict(settings[stage]) for stage in stages_run},
        }

    # -------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        seed: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        size: int | None = None,
        prior_num_inference_steps: int | None = None,
        decoder_num_inference_steps: int | None = None,
        super_res_num_inference_steps: int | None = None,
        upscale_num_inference_steps: int | None = None,
        prior_guidance_scale: float | None = None,
        decoder_guidance_scale: float | None = None,
        upscale_guidance_scale: float | None = None,
        super_res_noise_level: int | None = None,
        upscale_noise_level: int | None = None,
        super_res_start: int | None = None,
        upscale_start: int | None = None,
        scheduler: str | dict[str, str] | None = None,
        prior_samples: int = 1,
        rerank: ClipReranker | None = None,
        keep: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> CascadeOutput | tuple:
        """Generate images. ``None`` means the model config's default (the reference pipelines' defaults).

        Args:
            prompt: one prompt or a list; ``num_images_per_prompt`` images each, prompt-major order.
            negative_prompt: encoded in place of "" in the unconditional branch of every guided stage.
            seed: image k of the call uses ``torch.Generator("cpu").manual_seed(seed + k)`` for all its
                noise, so it is the same made alone or in a batch. Ignored when ``generator`` is given.
            generator: diffusers-style alternative: one generator (for the whole batch) or one per image.
            size: 64, 256 or 1024 (default: the largest the model makes); the cascade stops there.
            scheduler: one name for every stage, or ``{stage: name}`` (see ``unclip.schedulers``).
            super_res_start, upscale_start: pixel upsamplers only: > 0 runs only the steps at timesteps ≤ this,
                from the noised low-res image (SDEdit) rather than pure noise at T.
            prior_samples: best-of-n prior (DALL·E 2 §2.2): draw this many z_i per image, keep the one closest
                to z_t; its cosine similarity goes into the metadata as ``prior_score``.
            rerank, keep: CLIP reranking (DALL·E 2 §7, as in DALL·E 1): the ``num_images_per_prompt`` images of a
                prompt are candidates, scored by ``rerank`` (a ``unclip.rerank.ClipReranker``); the best ``keep``
                (default 1) are returned, best first, with ``clip_score`` and ``rank`` in their metadata.
            output_type: ``pil``, ``np`` or ``pt``.
        """
        prompts = prompt_list(prompt)
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_count("prior_samples", prior_samples)
        check_output_type(output_type)
        if keep is not None and rerank is None:
            raise UnclipError("keep needs rerank: give a CLIP reranker (unclip.rerank.ClipReranker) to choose with")
        if rerank is not None:
            keep = 1 if keep is None else keep
            check_count("keep", keep)
            if keep > num_images_per_prompt:
                raise UnclipError(f"keep {keep} > num_images_per_prompt {num_images_per_prompt}: make more candidates")
        size, stages_run, settings = self.plan(
            size,
            scheduler,
            dict(
                prior_num_inference_steps=prior_num_inference_steps,
                decoder_num_inference_steps=decoder_num_inference_steps,
                super_res_num_inference_steps=super_res_num_inference_steps,
                upscale_num_inference_steps=upscale_num_inference_steps,
                prior_guidance_scale=prior_guidance_scale,
                decoder_guidance_scale=decoder_guidance_scale,
                upscale_guidance_scale=upscale_guidance_scale,
                super_res_noise_level=super_res_noise_level,
                upscale_noise_level=upscale_noise_level,
                super_res_start=super_res_start,
                upscale_start=upscale_start,
            ),
        )
        device = self._execution_device
        batch = len(prompts) * num_images_per_prompt
        per_image = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = negatives_for(negative_prompt, len(prompts), num_images_per_prompt)
        generators, seeds = image_generators(seed, generator, batch)

        needs_uncond = uses_guidance(settings["prior"].guidance) or uses_guidance(settings["decoder"].guidance)
        text = self.encode_text(per_image, negatives if needs_uncond else None, device)
        image_embeds = check_finite("prior", self.run_prior(text, settings["prior"], generators, batch, prior_samples))
        prior_scores = clip_similarity(image_embeds, text.prompt_embeds()).tolist()
        x = self.render(image_embeds, text, settings, stages_run, generators, per_image, negatives)

        common = self.common_metadata(size, settings, stages_run)
        metadata = [
            {
                "prompt": per_image[k],
                "negative_prompt": negatives[k],
                "seed": seeds[k],
                "index": k,
                **common,
                "prior_samples": prior_samples,
                "prior_score": round(prior_scores[k], 4),
            }
            for k in range(batch)
        ]
        if rerank is not None:
            x, metadata = rerank.choose(x, metadata, num_images_per_prompt, keep)
        images = postprocess(x, output_type)
        return CascadeOutput(images=images, metadata=metadata) if return_dict else (images, metadata)

    # the paper's image manipulations (DALL·E 2 §3), in unclip.edits
    vary = edits.vary
    interpolate = edits.interpolate
    text_diff = edits.text_diff


def check_attention(backend: str, device: torch.device) -> None:
    """Refuse an attention backend that cannot run here, before anything is loaded."""
    if backend == "sdpa":
        return
    if backend != "xformers":
        raise UnclipError(f"unknown attention backend '{backend}'; choose sdpa or xformers")
    if importlib.util.find_spec("xformers") is None:
        raise UnclipError("--attention xformers: xformers is not installed; pip install 'unclip[xformers]' or use sdpa")
    if torch.device(device).type != "cuda":
        raise UnclipError("--attention xformers needs a CUDA device; use sdpa on CPU")


def _pixel_upsampler_inputs(
    image: torch.Tensor, unet, s: StageSettings, generators
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T at the UNet's sample size, and the low-res conditioning: ``image`` bicubic-upsampled (antialiased)
    to that size, Gaussian-noise-augmented at ``s.noise_level`` when > 0 (the reference sr256 uses none)."""
    size = unet.config.sample_size
    channels = unet.config.in_channels - image.shape[1]  # x_t and the low-res image are concatenated
    x_T = initial_noise((image.shape[0], channels, size, size), generators, image.device, image.dtype)
    work = torch.float32 if image.device.type == "cpu" else image.dtype  # no antialiased bicubic in bf16 on CPU
    low_res = F.interpolate(image.to(work), size=[size, size], mode="bicubic", align_corners=False, antialias=True)
    low_res = low_res.to(image.dtype)
    if s.noise_level > 0:
        schedule = DDPMScheduler(num_train_timesteps=AUGMENTATION_TIMESTEPS, beta_schedule="squaredcos_cap_v2")
        low_res = _augment(low_res, s.noise_level, schedule, generators)
    return x_T, low_res


def _start(s: StageSettings, low_res: torch.Tensor) -> dict[str, Any]:
    """``sample``'s SDEdit arguments for an upsampler: start from the (clean) upsampled low-res image."""
    return {"init": low_res.clamp(-1, 1), "start": s.start} if s.start > 0 else {}


def _augment(image: torch.Tensor, level, scheduler, generators) -> torch.Tensor:
    """q(x_s | x_0) at s = level: noise augmentation of an upsampler's low-res input."""
    noise = initial_noise(image.shape, generators, image.device, image.dtype)
    level = torch.as_tensor([level] if isinstance(level, int) else level, device=image.device)
    return scheduler.add_noise(image, noise, level)


def _json(data: dict) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"
