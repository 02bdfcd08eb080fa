"""The demo CLIP in transformers' classes and the hub layouts the cascade and the trainer load.

    from unclip.demo.clip_export import export_clip, load_open_clip

    export_clip(model, "runs/clip")          # model: the trained open_clip CLIP (unclip.demo.clip)
    model = load_open_clip("runs/clip")      # the open_clip checkpoint back

``export_clip`` writes, with ``save_pretrained`` (safetensors):

* ``text_encoder/``, ``tokenizer/``: CLIPTextModelWithProjection and CLIPTokenizer, as karlo-v1-alpha has them
  (pad token "!", id 0, as open_clip pads): ``text_embeds`` is open_clip's ``encode_text``, unnormalised.
* ``image_encoder/``, ``feature_extractor/``: CLIPVisionModelWithProjection and CLIPImageProcessor, the names of
  karlo-v1-alpha-image-variations; ``image_embeds`` is open_clip's ``encode_image``. The processor's config is
  also in ``image_encoder/``, so that ``hf:FOLDER/image_encoder`` (``unclip.clip_models``) finds its size,
  mean and std there.
* ``open_clip/``: ``open_clip_config.json`` and ``open_clip_model.safetensors``, loadable as
  ``open_clip.create_model("local-dir:FOLDER/open_clip")`` or ``openclip:local-dir:FOLDER/open_clip``.

The weights map one to one: open_clip's fused attention input projection splits into q, k and v; its
projections (applied as ``x @ proj``) are transposed into ``nn.Linear`` weights. Both text towers use a causal
mask and pool the end-of-text token (``eos_token_id`` 49407: the first one in the sequence).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from unclip.demo.clip import CONTEXT_LENGTH, MODEL_CONFIG
from unclip.replicas import clip_tokenizer_files

BOS, EOS, PAD = 49406, 49407, 0  # <|startoftext|>, <|endoftext|>, "!" (open_clip pads with 0)
OPEN_CLIP_DIR = "open_clip"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"


def _blocks(state: dict[str, torch.Tensor], src: str, dst: str, layers: int) -> dict[str, torch.Tensor]:
    """open_clip residual blocks ``src.i`` → transformers encoder layers ``dst.i``."""
    out = {}
    for i in range(layers):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        for name, tensor in zip("qkv", state[f"{s}.attn.in_proj_weight"].chunk(3), strict=True):
            out[f"{d}.self_attn.{name}_proj.weight"] = tensor
        for name, tensor in zip("qkv", state[f"{s}.attn.in_proj_bias"].chunk(3), strict=True):
            out[f"{d}.self_attn.{name}_proj.bias"] = tensor
        pairs = {"attn.out_proj": "self_attn.out_proj", "ln_1": "layer_norm1", "ln_2": "layer_norm2"}
        pairs |= {"mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
        for a, b in pairs.items():
            for p in ("weight", "bias"):
                out[f"{d}.{b}.{p}"] = state[f"{s}.{a}.{p}"]
    return out


def text_config() -> CLIPTextConfig:
    cfg, embed_dim = MODEL_CONFIG["text_cfg"], MODEL_CONFIG["embed_dim"]
    return CLIPTextConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["width"],
        intermediate_size=int(cfg["width"] * cfg.get("mlp_ratio", 4.0)),
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        max_position_embeddings=cfg["context_length"],
        hidden_act="quick_gelu" if MODEL_CONFIG.get("quick_gelu") else "gelu",
        layer_norm_eps=1e-5,
        projection_dim=embed_dim,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )


def vision_config() -> CLIPVisionConfig:
    cfg, embed_dim = MODEL_CONFIG["vision_cfg"], MODEL_CONFIG["embed_dim"]
    return CLIPVisionConfig(
        hidden_size=cfg["width"],
        intermediate_size=int(cfg["width"] * cfg.get("mlp_ratio", 4.0)),
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["width"] // cfg.get("head_width", 64),
        image_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        hidden_act="quick_gelu" if MODEL_CONFIG.get("quick_gelu") else "gelu",
        layer_norm_eps=1e-5,
        projection_dim=embed_dim,
    )


def to_text_encoder(model) -> CLIPTextModelWithProjection:
    """open_clip's text tower as a CLIPTextModelWithProjection, in eval mode."""
    state = model.state_dict()
    config = text_config()
    weights = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].T,
        **_blocks(state, "transformer.resblocks", "text_model.encoder.layers", config.num_hidden_layers),
    }
    encoder = CLIPTextModelWithProjection(config)
    encoder.load_state_dict({k: v.clone().contiguous() for k, v in weights.items()}, strict=True)
    return encoder.eval()


def to_image_encoder(model) -> CLIPVisionModelWithProjection:
    """open_clip's image tower as a CLIPVisionModelWithProjection, in eval mode."""
    state = model.state_dict()
    config = vision_config()
    weights = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].T,
        **_blocks(state, "visual.transformer.resblocks", "vision_model.encoder.layers", config.num_hidden_layers),
    }
    encoder = CLIPVisionModelWithProjection(config)
    encoder.load_state_dict({k: v.clone().contiguous() for k, v in weights.items()}, strict=True)
    return encoder.eval()


def image_processor(model) -> CLIPImageProcessor:
    """open_clip's eval preprocessing: shorter side to the model's size (bicubic), center crop, mean and std."""
    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": size},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        do_convert_rgb=True,
    )


def tokenizer(folder: str | Path) -> CLIPTokenizer:
    """The CLIP BPE (open_clip's, as OpenAI's) as karlo-v1-alpha's tokenizer: pad "!", 77 tokens."""
    files = clip_tokenizer_files(folder)
    return CLIPTokenizer(
        str(files / "vocab.json"), str(files / "merges.txt"), pad_token="!", model_max_length=CONTEXT_LENGTH
    )


def save_open_clip(model, folder: str | Path) -> Path:
    """``open_clip_config.json`` and ``open_clip_model.safetensors`` in ``folder``."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in model.visual.preprocess_cfg.items()}
    config = {"model_cfg": MODEL_CONFIG, "preprocess_cfg": preprocess}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / OPEN_CLIP_WEIGHTS))
    return out


def load_open_clip(folder: str | Path):
    """The open_clip model ``export_clip`` saved in ``folder`` (or in ``folder/open_clip``), in eval mode."""
    import open_clip

    from unclip.clip_models import _root_logging_off

    path = Path(folder)
    if not (path / "open_clip_config.json").is_file():
        path = path / OPEN_CLIP_DIR
    with _root_logging_off():
        return open_clip.create_model(f"local-dir:{path}").eval()


def export_clip(model, folder: str | Path) -> Path:
    """Write the text and image towers, tokenizer, image processor and the open_clip checkpoint into ``folder``."""
    out = Path(folder)
    to_text_encoder(model).save_pretrained(out / "text_encoder")
    tokenizer(out / "tokenizer").save_pretrained(out / "tokenizer")
    to_image_encoder(model).save_pretrained(out / "image_encoder")
    processor = image_processor(model)
    processor.save_pretrained(out / "feature_extractor")
    processor.save_pretrained(out / "image_encoder")
    save_open_clip(model, out / OPEN_CLIP_DIR)
    return out
