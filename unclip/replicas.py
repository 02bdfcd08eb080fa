"""Tiny random-weight replicas of the pretrained repos unclip runs on, in their exact hub folder layouts.

For tests and benchmarks that must not touch the network: each function writes a folder that loads the same
way as a local copy of the real repo (same subfolders, model_index.json, component classes, scheduler configs
and CLIP BPE tokenizer), only with small sizes and random weights.

* ``tiny_karlo``: kakaobrain/karlo-v1-alpha; with ``image_variations=True``
  kakaobrain/karlo-v1-alpha-image-variations (no prior; an ``image_encoder`` and a ``feature_extractor``).
* ``tiny_x4_upscaler``: stabilityai/stable-diffusion-x4-upscaler.
* ``tiny_pixel_upscaler``: the pixel-space 256→1024 layout that unclip's trainer writes (``unclip.loading``).
* ``clip_tokenizer_files``: ``vocab.json`` and ``merges.txt`` of the OpenAI CLIP BPE, rebuilt offline from the
  copy open_clip ships (same tokens, same ids as openai/clip-vit-large-patch14).

The weights are deterministic given ``seed``, and every parameter matters: whatever the libraries initialise
to all zeros or all ones (norms, biases, the prior's CLIP statistics, the text projection's unconditional
embedding, ...) is re-drawn, so that a comparison of two implementations catches a missed term.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PriorTransformer, UNet2DConditionModel, UNet2DModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from unclip.loading import component_entry, write_model_index, write_scheduler
from unclip.text_proj import UnCLIPTextProjModel

__all__ = ["clip_tokenizer_files", "randomize_", "tiny_karlo", "tiny_pixel_upscaler", "tiny_x4_upscaler"]

# Each model config below is the real repo's config.json with the sizes shrunk (the real sizes in the
# comments); every other key (block types, activations, embeddings, channel counts in and out) is kept.
# The 4-level karlo UNets have 2 levels here, each of their block types still present.

# karlo-v1-alpha/prior: 32 heads x 64, 20 layers, embedding_dim 768 (the inner width differs from the
# embedding width there too: 2048 vs 768).
KARLO_PRIOR = dict(
    num_attention_heads=2,
    attention_head_dim=24,
    num_layers=2,
    embedding_dim=32,
    num_embeddings=77,
    additional_embeddings=4,
    dropout=0.0,
)
# karlo-v1-alpha/decoder: block_out_channels 320/640/960/1280 (4 levels), 3 layers per block, 64-dim heads,
# 32 groups, cross_attention_dim 1536.
KARLO_DECODER = dict(
    act_fn="silu",
    attention_head_dim=16,
    block_out_channels=(32, 64),
    center_input_sample=False,
    class_embed_type="identity",
    cross_attention_dim=64,
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    downsample_padding=1,
    dual_cross_attention=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=3,
    layers_per_block=1,
    mid_block_scale_factor=1,
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    norm_eps=1e-5,
    norm_num_groups=8,
    num_class_embeds=None,
    only_cross_attention=False,
    out_channels=6,
    resnet_time_scale_shift="scale_shift",
    sample_size=64,
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    upcast_attention=False,
    use_linear_projection=False,
)
# karlo-v1-alpha/super_res_first and super_res_last (identical configs): block_out_channels 320/640/960/1280,
# 3 layers per block, 32 groups.
KARLO_SUPER_RES = dict(
    act_fn="silu",
    add_attention=False,
    attention_head_dim=8,
    block_out_channels=(16, 32),
    center_input_sample=False,
    down_block_types=("ResnetDownsampleBlock2D",) * 2,
    downsample_padding=1,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=6,
    layers_per_block=1,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=8,
    out_channels=3,
    resnet_time_scale_shift="default",
    sample_size=256,
    time_embedding_type="positional",
    up_block_types=("ResnetUpsampleBlock2D",) * 2,
)
# karlo-v1-alpha/text_encoder (openai/clip-vit-large-patch14's text tower): hidden 768, 12 layers, 12 heads,
# MLP 3072, projection 768. hidden_size and projection_dim must both equal the prior's embedding_dim.
KARLO_TEXT_ENCODER = dict(
    attention_dropout=0.0,
    bos_token_id=0,
    dropout=0.0,
    eos_token_id=2,
    hidden_act="quick_gelu",
    hidden_size=32,
    initializer_factor=1.0,
    initializer_range=0.02,
    intermediate_size=64,
    layer_norm_eps=1e-5,
    max_position_embeddings=77,
    num_attention_heads=4,
    num_hidden_layers=2,
    pad_token_id=1,
    projection_dim=32,
    vocab_size=49408,
)
# karlo-v1-alpha-image-variations/image_encoder: openai/clip-vit-large-patch14's vision tower, 1024 wide,
# 24 layers, 16 heads, patch 14 at 224 px, projection 768 (the text_proj's clip_embeddings_dim).
KARLO_IMAGE_ENCODER = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=30,
    patch_size=14,
    projection_dim=32,
    hidden_act="quick_gelu",
)
# Its feature_extractor: CLIPImageProcessor() defaults (shortest edge and center crop 224), at the tiny size.
KARLO_FEATURE_EXTRACTOR = dict(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
# karlo-v1-alpha/text_proj: clip_embeddings_dim 768, time_embed_dim 1280 (= 320 * 4), cross_attention_dim 1536.
KARLO_TEXT_PROJ = dict(
    clip_extra_context_tokens=4, clip_embeddings_dim=32, time_embed_dim=32 * 4, cross_attention_dim=64
)
# The scheduler configs are the real ones, unchanged.
KARLO_SCHEDULERS = {
    "prior_scheduler": dict(
        clip_sample=True,
        clip_sample_range=5.0,
        num_train_timesteps=1000,
        prediction_type="sample",
        variance_type="fixed_small_log",
    ),
    "decoder_scheduler": dict(
        clip_sample=True,
        clip_sample_range=1.0,
        num_train_timesteps=1000,
        prediction_type="epsilon",
        variance_type="learned_range",
    ),
    "super_res_scheduler": dict(
        clip_sample=True,
        clip_sample_range=1.0,
        num_train_timesteps=1000,
        prediction_type="epsilon",
        variance_type="fixed_small_log",
    ),
}

# The pixel 256→1024 upsampler (DALL·E 2 Appendix C: no attention, convolutional at full size): Karlo's
# super-res UNet (ResnetDownsampleBlock2D/ResnetUpsampleBlock2D, 2 levels, add_attention=False) at 1024 px,
# narrower so that one 1024 px step costs about 2 s on 2 CPU cores.
PIXEL_UPSCALER = {**KARLO_SUPER_RES, "block_out_channels": (8, 16), "norm_num_groups": 4, "sample_size": 1024}

# stable-diffusion-x4-upscaler/unet: block_out_channels 256/512/512/1024, 2 layers per block, 32 groups,
# cross_attention_dim 1024 (= the text encoder's hidden size). attention_head_dim is diffusers' legacy name
# for the number of heads (8, as in the real config).
X4_UNET = dict(
    act_fn="silu",
    attention_head_dim=8,
    block_out_channels=(16, 32, 32, 64),
    center_input_sample=False,
    cross_attention_dim=32,
    down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
    downsample_padding=1,
    dual_cross_attention=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=7,
    layers_per_block=1,
    mid_block_scale_factor=1,
    norm_eps=1e-5,
    norm_num_groups=8,
    num_class_embeds=1000,
    only_cross_attention=(True, True, True, False),
    out_channels=4,
    sample_size=128,
    up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
    use_linear_projection=True,
)
# stable-diffusion-x4-upscaler/vae: block_out_channels 128/256/512 (three levels: scale factor 4, kept),
# 2 layers per block, 32 groups. The real VAE has a self-attention in its mid-blocks; here it is switched off
# (mid_block_add_attention=False): at 1024 px its decoder attends over 256 x 256 = 65,536 latent tokens, which
# takes minutes on a CPU even at tiny widths.
X4_VAE = dict(
    act_fn="silu",
    block_out_channels=(8, 16, 32),
    down_block_types=("DownEncoderBlock2D",) * 3,
    in_channels=3,
    latent_channels=4,
    layers_per_block=1,
    mid_block_add_attention=False,
    norm_num_groups=8,
    out_channels=3,
    sample_size=256,
    scaling_factor=0.08333,
    up_block_types=("UpDecoderBlock2D",) * 3,
)
# stable-diffusion-x4-upscaler/text_encoder (OpenCLIP ViT-H text tower up to its penultimate layer): hidden 1024,
# 23 layers, 16 heads, MLP 4096, projection 512 (unused by CLIPTextModel).
X4_TEXT_ENCODER = {**KARLO_TEXT_ENCODER, "hidden_act": "gelu"}
X4_SCHEDULERS = {  # (class, the real config, unchanged)
    "scheduler": (
        "DDIMScheduler",
        dict(
            beta_end=0.02,
            beta_schedule="scaled_linear",
            beta_start=0.0001,
            clip_sample=False,
            num_train_timesteps=1000,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            skip_prk_steps=True,
            steps_offset=1,
            trained_betas=None,
        ),
    ),
    "low_res_scheduler": (
        "DDPMScheduler",
        dict(
            beta_end=0.02,
            beta_schedule="scaled_linear",
            beta_start=0.0001,
            clip_sample=False,
            num_train_timesteps=1000,
            prediction_type="epsilon",
            trained_betas=None,
            variance_type="fixed_small",
        ),
    ),
}


def clip_tokenizer_files(out_dir: str | Path) -> Path:
    """Writes ``vocab.json`` and ``merges.txt`` of the OpenAI CLIP BPE (49,408 tokens) into ``out_dir``.

    Rebuilt from open_clip's gzip'd merges exactly as OpenAI CLIP's ``SimpleTokenizer`` builds its vocabulary:
    the 256 byte symbols, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
    ``<|endoftext|>`` (ids 49406 and 49407).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe  # only needed here: a test dependency

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(default_bpe()) as handle:
        merges = handle.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + [m.replace(" ", "") for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), "utf-8")
    # transformers skips the first line of merges.txt: the header the hub's file has.
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    return out


@torch.no_grad()
def randomize_(model: torch.nn.Module, generator: torch.Generator, std: float = 0.05) -> torch.nn.Module:
    """Re-draws, in place, each floating parameter or saved buffer that is all zeros (to N(0, std²)) or all
    ones (to 1 + N(0, std²)): freshly initialised norms, biases and zero-initialised layers would otherwise
    hide a missed or misplaced term."""
    for tensor in model.state_dict(keep_vars=True).values():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        for constant in (0.0, 1.0):
            if bool((tensor == constant).all()):
                noise = torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype)
                tensor.copy_(constant + std * noise)
    return model


def tiny_karlo(out_dir: str | Path, *, seed: int = 0, with_prior: bool = True, image_variations: bool = False) -> Path:
    """Writes a tiny random replica of kakaobrain/karlo-v1-alpha into ``out_dir`` and returns it.

    ``with_prior=False`` leaves out ``prior`` and ``prior_scheduler``; ``image_variations=True`` writes
    kakaobrain/karlo-v1-alpha-image-variations instead: no prior, plus ``image_encoder`` and ``feature_extractor``.
    """
    out = Path(out_dir)
    with_prior = with_prior and not image_variations
    index = {
        "decoder": _save_model(out, "decoder", lambda: UNet2DConditionModel(**KARLO_DECODER), seed),
        "super_res_first": _save_model(out, "super_res_first", lambda: UNet2DModel(**KARLO_SUPER_RES), seed),
        "super_res_last": _save_model(out, "super_res_last", lambda: UNet2DModel(**KARLO_SUPER_RES), seed),
        "text_encoder": _save_model(
            out, "text_encoder", lambda: CLIPTextModelWithProjection(CLIPTextConfig(**KARLO_TEXT_ENCODER)), seed
        ),
        "text_proj": _save_model(out, "text_proj", lambda: UnCLIPTextProjModel(**KARLO_TEXT_PROJ), seed),
        "tokenizer": _save_tokenizer(out / "tokenizer", pad_token="!"),  # karlo's converter chose "!" (id 0)
    }
    if with_prior:
        index["prior"] = _save_model(out, "prior", _karlo_prior, seed)
    for name, config in KARLO_SCHEDULERS.items():
        if with_prior or name != "prior_scheduler":
            index[name] = write_scheduler(out / name, "UnCLIPScheduler", config)
    pipeline_class = "UnCLIPPipeline"
    if image_variations:
        index["image_encoder"] = _save_model(
            out, "image_encoder", lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**KARLO_IMAGE_ENCODER)), seed
        )
        CLIPImageProcessor(**KARLO_FEATURE_EXTRACTOR).save_pretrained(out / "feature_extractor")
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
        pipeline_class = "UnCLIPImageVariationPipeline"
    write_model_index(out, pipeline_class, index)
    return out


def tiny_x4_upscaler(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Writes a tiny random replica of stabilityai/stable-diffusion-x4-upscaler into ``out_dir`` and returns it."""
    out = Path(out_dir)
    index = {
        "unet": _save_model(out, "unet", lambda: UNet2DConditionModel(**X4_UNET), seed),
        "vae": _save_model(out, "vae", lambda: AutoencoderKL(**X4_VAE), seed),
        "text_encoder": _save_model(
            out, "text_encoder", lambda: CLIPTextModel(CLIPTextConfig(**X4_TEXT_ENCODER)), seed
        ),
        # Its tokenizer_config.json says "<|endoftext|>" but its special_tokens_map.json "!", which wins: the
        # OpenCLIP tokenizer it was trained with pads with id 0, "!".
        "tokenizer": _save_tokenizer(out / "tokenizer", pad_token="!"),
    }
    for name, (class_name, config) in X4_SCHEDULERS.items():
        index[name] = write_scheduler(out / name, class_name, config)
    index["max_noise_level"] = 350
    write_model_index(out, "StableDiffusionUpscalePipeline", index)
    return out


def tiny_pixel_upscaler(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Writes a tiny random pixel 256→1024 upsampler (the layout unclip's trainer writes) into ``out_dir``."""
    out = Path(out_dir)
    index = {
        "_unclip_layout": "pixel",
        "unet": _save_model(out, "unet", lambda: UNet2DModel(**PIXEL_UPSCALER), seed),
        "scheduler": write_scheduler(out / "scheduler", "UnCLIPScheduler", KARLO_SCHEDULERS["super_res_scheduler"]),
    }
    write_model_index(out, "PixelUpscalerPipeline", index)
    return out


def _karlo_prior() -> PriorTransformer:
    prior = PriorTransformer(**KARLO_PRIOR)
    with torch.no_grad():  # the CLIP image-embedding statistics start as zeros; a std must be positive
        prior.clip_mean.normal_(0.0, 0.1)
        prior.clip_std.uniform_(0.5, 1.5)
    return prior


def _save_model(out: Path, name: str, build: Callable[[], torch.nn.Module], seed: int) -> list[str]:
    """Builds, randomises and saves (safetensors, the default of both libraries) one component; returns its
    model_index.json entry, ``[library, class]``."""
    component_seed = zlib.crc32(f"{seed}/{name}".encode())  # a different stream per component and seed
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(component_seed)
        model = build()
    randomize_(model, torch.Generator().manual_seed(component_seed))
    model.save_pretrained(out / name)
    return component_entry(model)


def _save_tokenizer(path: Path, *, pad_token: str) -> list[str]:
    files = clip_tokenizer_files(path)  # the hub's files; transformers 5 adds a tokenizer.json next to them
    tokenizer = CLIPTokenizer(
        str(files / "vocab.json"), str(files / "merges.txt"), pad_token=pad_token, model_max_length=77
    )
    tokenizer.save_pretrained(path)
    return ["transformers", "CLIPTokenizer"]
