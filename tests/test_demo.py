"""The offline demo: its architecture around a trained CLIP text tower, and the shipped model (`--model demo`)."""

import numpy as np
import pytest
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from unclip import UnCLIPCascade
from unclip.errors import UnclipError
from unclip.replicas import KARLO_TEXT_ENCODER, _save_tokenizer
from unclip.train.architectures import ARCHITECTURES


def _text_tower(folder, hidden=32, projection=32):
    config = CLIPTextConfig(**{**KARLO_TEXT_ENCODER, "hidden_size": hidden, "projection_dim": projection})
    CLIPTextModelWithProjection(config).save_pretrained(folder / "text_encoder")
    _save_tokenizer(folder / "tokenizer", pad_token="!")
    return folder


def test_demo_architecture_builds_around_a_text_tower(tmp_path):
    clip = _text_tower(tmp_path / "clip")
    model_yaml = ARCHITECTURES["demo"](tmp_path / "init", 0, text_encoder=clip)
    pipe = UnCLIPCascade.from_config(model_yaml)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.prior.config.embedding_dim == 32 and pipe.text_proj.config.clip_embeddings_dim == 32
    assert pipe.upscaler_layout == "pixel" and pipe.max_size == 1024
    steps = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, super_res_num_inference_steps=2)
    out = pipe("a small red circle on a blue background", seed=0, size=256, output_type="np", **steps)
    assert out.images.shape == (1, 256, 256, 3) and np.isfinite(out.images).all()


def test_demo_architecture_refuses_a_missing_or_mismatched_text_tower(tmp_path):
    with pytest.raises(UnclipError, match="text_encoder=FOLDER"):
        ARCHITECTURES["demo"](tmp_path / "a", 0, text_encoder=None)
    with pytest.raises(UnclipError, match="no text_encoder/"):
        ARCHITECTURES["demo"](tmp_path / "b", 0, text_encoder=tmp_path / "nowhere")
    clip = _text_tower(tmp_path / "clip", hidden=32, projection=16)
    with pytest.raises(UnclipError, match="must equal its projection width"):
        ARCHITECTURES["demo"](tmp_path / "c", 0, text_encoder=clip)
