"""The offline demo's cascade: Karlo's layout and component classes at sizes that train on a CPU and make a
1024 px image in seconds there, around a trained tiny CLIP text tower.

    from unclip.demo.architecture import build_demo
    build_demo(Path("runs/demo/init"), Path("runs/demo/clip"), seed=0)   # writes init/unclip and init/upscaler

Written with each library's own initialisation (not ``unclip.replicas``' test randomisation). The CLIP width D
(the text tower's hidden size, which must equal its projection width, as in CLIP ViT-L/14 for Karlo) is the
prior's embedding width and the text projection's input width.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers import PriorTransformer, UNet2DConditionModel, UNet2DModel
from transformers import CLIPTextConfig

from unclip.errors import UnclipError
from unclip.loading import component_entry, write_model_index, write_scheduler
from unclip.replicas import KARLO_DECODER, KARLO_SCHEDULERS, KARLO_SUPER_RES
from unclip.text_proj import UnCLIPTextProjModel

# The prior: a causal transformer over [text tokens, text embedding, timestep, noised z_i, query] (DALL·E 2 §2.2).
DEMO_PRIOR = dict(num_attention_heads=4, attention_head_dim=32, num_layers=4, num_embeddings=77,
                  additional_embeddings=4, dropout=0.0)  # fmt: skip
# The 64 px decoder: Karlo's block types (ResNet blocks at 64 px, cross-attention to z_i's context tokens and
# the caption at 32 and 16 px), learned variance (6 output channels).
DEMO_DECODER = {
    **KARLO_DECODER,
    "block_out_channels": (16, 32, 64),
    "layers_per_block": 2,
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "attention_head_dim": 32,
    "cross_attention_dim": 64,
    "norm_num_groups": 8,
}
# 64→256: Karlo's super-res UNet (no attention), three levels.
DEMO_SUPER_RES = {
    **KARLO_SUPER_RES,
    "block_out_channels": (16, 32, 64),
    "down_block_types": ("ResnetDownsampleBlock2D",) * 3,
    "up_block_types": ("ResnetUpsampleBlock2D",) * 3,
}
# 256→1024: the same UNet family without attention (DALL·E 2 Appendix C), narrow at 1024 px where each step costs
# most, wider below: four levels (8/16/32/64) cost 1.4× two (8/16) per step at 1024 px (2.96 s against 2.11 s, fp32 on
# 2 CPU cores, 2026-12-02) and hold 15× the parameters (0.68 M).
DEMO_PIXEL_UPSCALER = {
    **KARLO_SUPER_RES,
    "block_out_channels": (8, 16, 32, 64),
    "down_block_types": ("ResnetDownsampleBlock2D",) * 4,
    "up_block_types": ("ResnetUpsampleBlock2D",) * 4,
    "norm_num_groups": 4,
    "sample_size": 1024,
}


def build_demo(folder: Path, clip_folder: Path, *, seed: int = 0) -> Path:
    """Writes ``folder/unclip`` (Karlo layout with prior) and ``folder/upscaler`` (pixel layout); returns folder."""
    text_encoder, tokenizer = clip_folder / "text_encoder", clip_folder / "tokenizer"
    for part in (text_encoder, tokenizer):
        if not part.is_dir():
            raise UnclipError(f"text_encoder: {clip_folder} has no {part.name}/ (scripts/train_demo_clip.py writes it)")
    text = CLIPTextConfig.from_pretrained(text_encoder)
    width = text.projection_dim
    if text.hidden_size != width:
        raise UnclipError(
            f"text_encoder: the CLIP text tower's hidden size ({text.hidden_size}) must equal its projection width "
            f"({width}), as Karlo's prior and text projection take both"
        )
    unclip = folder / "unclip"
    shutil.copytree(text_encoder, unclip / "text_encoder")
    shutil.copytree(tokenizer, unclip / "tokenizer")
    decoder = DEMO_DECODER
    index = {
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "prior": _save(unclip / "prior", lambda: PriorTransformer(embedding_dim=width, **DEMO_PRIOR), seed),
        "text_proj": _save(
            unclip / "text_proj",
            lambda: UnCLIPTextProjModel(
                clip_extra_context_tokens=4,
                clip_embeddings_dim=width,
                time_embed_dim=decoder["block_out_channels"][0] * 4,
                cross_attention_dim=decoder["cross_attention_dim"],
            ),
            seed,
        ),
        "decoder": _save(unclip / "decoder", lambda: UNet2DConditionModel(**decoder), seed),
        "super_res_first": _save(unclip / "super_res_first", lambda: UNet2DModel(**DEMO_SUPER_RES), seed),
        "super_res_last": _save(unclip / "super_res_last", lambda: UNet2DModel(**DEMO_SUPER_RES), seed),
    }
    for name, config in KARLO_SCHEDULERS.items():
        index[name] = write_scheduler(unclip / name, "UnCLIPScheduler", config)
    write_model_index(unclip, "UnCLIPPipeline", index)
    upscaler = folder / "upscaler"
    scheduler = write_scheduler(upscaler / "scheduler", "UnCLIPScheduler", KARLO_SCHEDULERS["super_res_scheduler"])
    unet = _save(upscaler / "unet", lambda: UNet2DModel(**DEMO_PIXEL_UPSCALER), seed)
    write_model_index(
        upscaler, "PixelUpscalerPipeline", {"_unclip_layout": "pixel", "unet": unet, "scheduler": scheduler}
    )
    return folder


def _save(path: Path, build, seed: int) -> list[str]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    if isinstance(model, PriorTransformer):  # CLIP statistics start as zeros: the trainer sets them from the data
        with torch.no_grad():
            model.clip_std.fill_(1.0)
    model.save_pretrained(path)
    return component_entry(model)
