"""``UnCLIPCascade``: text → CLIP text encoder → prior → 64 px decoder → 64→256 → 256→1024.

    from unclip import UnCLIPCascade
    pipe = UnCLIPCascade.from_pretrained("karlo-x4", torch_dtype=torch.float16).to("cuda")
    out = pipe("a corgi playing a trumpet", num_images_per_prompt=2, seed=0, size=1024)
    out.images[0].save("corgi.png"); out.metadata[0]["seed"]

This file is the orchestration only. Each stage lives in ``unclip/stages/`` (its denoiser and its ``run``), its
settings' names come from ``unclip.plan`` (the settings table × the stage registry), loading and saving from
``unclip.loading``, the one denoising loop from ``unclip.sampling``, the edits (DALL·E 2 §3) from
``unclip.edits``, inpainting and outpainting from ``unclip.inpaint``. Stage names: ``prior``, ``decoder``,
``sr256`` (Karlo's 64→256 pair) and ``sr1024`` (the model config's ``upscaler``: the Stable Diffusion x4 latent
upscaler, or a pixel-space upsampler).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from unclip.clip_models import ClipImageEncoder, from_transformers, load_clip_image_encoder
from unclip.config import ModelConfig, load_model_config, save_model_config
from unclip.edits import EditsMixin
from unclip.errors import UnclipError
from unclip.guidance import uses_guidance
from unclip.images import load_images
from unclip.inpaint import InpaintMixin
from unclip.loading import LAYOUTS, UPSCALER_PREFIX, load_components, save_layout
from unclip.lora import LoraMixin
from unclip.outputs import CascadeOutput, output
from unclip.plan import KEYWORDS, Plan, check_count, check_keep, check_output_type, negatives_for, prompt_list, resolve
from unclip.runtime import check_attention
from unclip.sampling import image_generators
from unclip.speedups import Speedups, fit_memory_format
from unclip.speedups import apply as apply_speedups
from unclip.stages import KINDS, STAGES, Stage, StageInputs, check_finite, offload_order
from unclip.text import TextConditioning, clip_similarity, encode_text

if TYPE_CHECKING:
    from unclip.rerank import ClipReranker

__all__ = ["CascadeOutput", "UnCLIPCascade"]


class UnCLIPCascade(DiffusionPipeline, EditsMixin, InpaintMixin, LoraMixin):
    """The DALL·E 2-style cascade on Karlo's components, optionally followed by a 256→1024 upscaler: the x4
    latent upscaler (``upscaler_`` + unet, vae, text_encoder, tokenizer, scheduler, low_res_scheduler) or a
    pixel upsampler (``upscaler_unet``, ``upscaler_scheduler``; the x4-only components are None)."""

    # diffusers' enable_model_cpu_offload skips the names whose component is None (no prior, pixel upscaler)
    model_cpu_offload_seq = offload_order()
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
        self._loras: dict[str, dict[str, Any]] = {}  # LoRA adapters by name (unclip.lora.LoraMixin)
        self._lora_fused = False

    # ----------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | Path | ModelConfig, torch_dtype: torch.dtype | None = None
    ) -> UnCLIPCascade:
        """Load a cascade: a preset name (``demo``, ``karlo-x4``), a model YAML file, a folder written by
        ``save_pretrained`` (or the trainer), a folder or hub id in Karlo's layout, or a ``ModelConfig``.

        Each location in a model config is a hub id (downloaded once, then read from the cache) or a local folder
        in that repo's layout (``unclip.loading``)."""
        model = pretrained_model_name_or_path
        config = model if isinstance(model, ModelConfig) else load_model_config(model)
        pipe = cls(**load_components(config, torch_dtype or torch.float32), model_config=config)
        for lora in config.lora:  # the model config's adapters (lora: [{path, scale}])
            pipe.load_lora(lora["path"], lora.get("scale", 1.0))
        return pipe

    @classmethod
    def from_config(cls, model: str | Path | ModelConfig, torch_dtype: torch.dtype | None = None) -> UnCLIPCascade:
        """Deprecated name of ``from_pretrained`` (in diffusers, ``from_config`` builds a model from a config dict)."""
        warnings.warn(
            "UnCLIPCascade.from_config is deprecated: use UnCLIPCascade.from_pretrained (same arguments)",
            FutureWarning,
            stacklevel=2,
        )
        return cls.from_pretrained(model, torch_dtype=torch_dtype)

    def save_pretrained(self, save_directory: str | Path, safe_serialization: bool = True) -> Path:
        """Write ``unclip/`` (Karlo layout), ``upscaler/`` (x4 or pixel layout, as loaded) and ``model.yaml`` that
        loads them (``from_pretrained(save_directory)``). Weights as safetensors only."""
        if not safe_serialization:
            raise UnclipError("save_pretrained writes safetensors only: leave safe_serialization at True")
        if self._loras:
            raise UnclipError("save_pretrained with LoRA adapters loaded: save the base model from a cascade without "
                              "them, and name the adapters in its model.yaml (lora: [{path, scale}])")  # fmt: skip
        root = Path(save_directory)
        save_layout(self, root / "unclip", "karlo")
        if self.upscaler_layout is not None:
            save_layout(self, root / "upscaler", self.upscaler_layout, UPSCALER_PREFIX)
        upscaler = "upscaler" if self.upscaler_layout else None
        return save_model_config(dataclasses.replace(self.model_config, unclip="unclip", upscaler=upscaler),
                                 root / "model.yaml")  # fmt: skip

    # ------------------------------------------------------------------------------------ what it has
    @property
    def stages(self) -> dict[str, Stage]:
        """The kind of each stage this cascade has (``unclip.stages.KINDS``), in running order."""
        found: dict[str, Stage] = {}
        for kind in KINDS.values():
            if kind.name not in found and kind.present(self):
                found[kind.name] = kind
        return found

    @property
    def upscaler_layout(self) -> str | None:
        """``x4`` (the SD x4 latent upscaler), ``pixel`` (a pixel-space UNet) or None (the cascade ends at 256)."""
        stage = self.stages.get("sr1024")
        return stage.layout if stage is not None else None

    @property
    def max_size(self) -> int:
        return max(stage.size for stage in self.stages.values())

    @property
    def execution_device(self) -> torch.device:
        """Where the stages run (with model offload: the GPU, although the weights wait on the CPU)."""
        return self._execution_device

    def denoising_model(self, name: str):
        """The component ``name`` as the stages run it: its compiled form when ``speedups.compile`` names it."""
        return self._compiled.get(name, getattr(self, name))

    def progress_bar(self, iterable=None, total=None, desc: str | None = None):
        """diffusers' progress bar (``set_progress_bar_config``), named after the stage it counts."""
        config = {"leave": False, **getattr(self, "_progress_bar_config", {})}
        return tqdm(iterable, total=total, desc=desc, **config)

    def set_attention(self, backend: str) -> None:
        """``sdpa`` (PyTorch scaled_dot_product_attention, the default) or ``xformers``."""
        check_attention(backend, self.execution_device)
        if backend == "xformers":
            self.enable_xformers_memory_efficient_attention()
        elif getattr(self, "_xformers", False):
            self.disable_xformers_memory_efficient_attention()
        self._xformers = backend == "xformers"

    def enable_speedups(self, speedups: Speedups) -> None:
        """Switch the GPU speed-ups of ``unclip.speedups`` on and off (each field; call again to change)."""
        self._compiled = apply_speedups(self, speedups)
        self.speedups = speedups

    # ------------------------------------------------------------------------------ parts of every call
    def plan(
        self,
        size: int | None = None,
        scheduler: str | dict[str, str] | None = None,
        stage_args: dict[str, Any] | None = None,
        first_stage: str = "prior",
        inverted: bool = False,
    ) -> Plan:
        """The output size, the stages that run and their settings (``unclip.plan.resolve``), with every check
        that needs this model's schedulers (``Stage.check``): all before any work. The convolutions are put in
        the memory format their device runs fastest in (``unclip.speedups.fit_memory_format``) here too, so
        every part of a call runs them the same way."""
        stages = self.stages
        plan = resolve(self.model_config, size=size, scheduler=scheduler, stage_args=stage_args,
                       first_stage=first_stage, inverted=inverted, kinds=stages)  # fmt: skip
        for name in plan.stages:
            plan.used[name] = stages[name].check(self, plan.settings[name], plan.inverted)
        if self.execution_device.type == "cpu" and self.dtype == torch.float16:
            raise UnclipError("float16 needs a GPU: on CPU load with torch_dtype=torch.float32 (or bfloat16)")
        fit_memory_format(self, self.speedups)
        return plan

    def metadata(self, plan: Plan) -> dict[str, Any]:
        """What every image of a call shares: size, model, dtype, device, speed-ups, the unclip version, and the
        settings each stage ran with."""
        from unclip import __version__

        return {
            "size": plan.size,
            "model": self.model_config.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": self.execution_device.type,
            **({"speedups": self.speedups.describe()} if self.speedups != Speedups() else {}),
            **({"lora": self.lora_metadata()} if self._loras else {}),
            "stages": plan.metadata(),
            "version": __version__,
        }

    def encode_text(self, prompts: list[str], negatives: list[str] | None = None) -> TextConditioning:
        """CLIP text embeddings z_t, hidden states and masks; ``[negatives; prompts]`` when given."""
        return encode_text(self.tokenizer, self.text_encoder, prompts, negatives, self.execution_device)

    def encode_captions(self, captions: list[str], guided_stage: bool) -> TextConditioning:
        """The decoder's caption rows: ``captions`` (with ``""`` as their unconditional half when guided)."""
        return self.encode_text(captions, [""] * len(captions) if guided_stage else None)

    def clip_image_encoder(self) -> ClipImageEncoder:
        """The CLIP image tower that maps images to z_i: the layout's own (karlo-v1-alpha-image-variations has
        ``image_encoder`` and ``feature_extractor``), else the model config's ``image_encoder``, loaded once."""
        device = self.execution_device
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
        return torch.cat(embeds).to(self.execution_device, self.text_proj.dtype)

    def run_stage(self, name: str, x: Any, inputs: StageInputs, plan: Plan) -> torch.Tensor:
        """Stage ``name`` of ``plan`` on ``x``, the previous stage's output; ``x`` itself when the plan skips it."""
        if name not in plan.stages:
            return x
        return check_finite(name, self.stages[name].run(self, x, inputs, plan.settings[name]))

    def decode(self, image_embeds: torch.Tensor, inputs: StageInputs, plan: Plan) -> torch.Tensor:
        """z_i → 64 px decoder → the upsamplers the plan runs: images in [-1, 1]."""
        x = image_embeds
        for name in STAGES[STAGES.index("decoder") :]:
            x = self.run_stage(name, x, inputs, plan)
        self.maybe_free_model_hooks()
        return x

    # -------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        seed: int | list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        size: int | None = None,
        scheduler: str | dict[str, str] | None = None,
        rerank: ClipReranker | None = None,
        keep: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        **stage_args: Any,
    ) -> CascadeOutput | tuple:
        """Generate images. A per-stage setting left out (or None) is the model config's (the reference pipelines'
        defaults for Karlo and the x4 upscaler).

        Args:
            prompt: one prompt or a list; ``num_images_per_prompt`` images each, prompt-major order.
            negative_prompt: encoded in place of "" in the unconditional branch of every guided stage.
            seed: image k of the call uses ``torch.Generator("cpu").manual_seed(seed + k)`` for all its
                noise, so it is the same made alone or in a batch; or a list, one seed per image. Ignored when
                ``generator`` is given.
            generator: diffusers-style alternative: one generator (for the whole batch) or one per image.
            size: 64, 256 or 1024 (default: the largest the model makes); the cascade stops there.
            scheduler: one name for every stage, or ``{stage: name}`` (see ``unclip.schedulers``).
            rerank, keep: CLIP reranking (DALL·E 2 §7, as in DALL·E 1): the ``num_images_per_prompt`` images of a
                prompt are candidates, scored by ``rerank`` (a ``unclip.rerank.ClipReranker``); the best ``keep``
                (default 1) are returned, best first, with ``clip_score`` and ``rank`` in their metadata.
            output_type: ``pil``, ``np`` or ``pt``.
            **stage_args: per-stage settings (``unclip.plan.KEYWORDS``): STAGE_KEYWORDS. ``prior_samples`` > 1 is
                the best-of-n prior (DALL·E 2 §2.2); each image's cosine similarity of z_i and z_t goes into its
                metadata as ``prior_score``.
        """
        # 1. Check the request and plan the stages (nothing runs if anything is wrong)
        prompts = prompt_list(prompt)
        check_count("num_images_per_prompt", num_images_per_prompt)
        check_output_type(output_type)
        keep = check_keep(keep, rerank is not None, num_images_per_prompt)
        plan = self.plan(size, scheduler, stage_args)
        per_image = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = negatives_for(negative_prompt, len(prompts), num_images_per_prompt)
        generators, seeds = image_generators(seed, generator, len(per_image))

        # 2. CLIP text encoder: z_t and the token states, with the negatives' when a stage is guided
        guided = uses_guidance(plan.settings["prior"].guidance) or uses_guidance(plan.settings["decoder"].guidance)
        text = self.encode_text(per_image, negatives if guided else None)
        inputs = StageInputs(generators, text, prompts=per_image, negatives=negatives)

        # 3. prior: z_t → z_i
        image_embeds = self.run_stage("prior", None, inputs, plan)

        # 4. decoder → sr256 → sr1024: z_i → 64 → 256 → 1024 px (up to ``size``)
        x = self.decode(image_embeds, inputs, plan)

        # 5. metadata, reranking, images
        prior_scores = clip_similarity(image_embeds, text.prompt_embeds()).tolist()
        shared = self.metadata(plan)
        metadata = [
            {"prompt": per_image[k], "negative_prompt": negatives[k], "seed": seeds[k], "index": k, **shared,
             "prior_score": round(prior_scores[k], 4)}
            for k in range(len(per_image))
        ]  # fmt: skip
        if rerank is not None:
            x, metadata = rerank.choose(x, metadata, num_images_per_prompt, keep)
        return output(x, metadata, output_type, return_dict)


UnCLIPCascade.__call__.__doc__ = UnCLIPCascade.__call__.__doc__.replace("STAGE_KEYWORDS", ", ".join(KEYWORDS))
