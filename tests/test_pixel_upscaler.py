"""A pixel-space 256→1024 upsampler as the model config's `upscaler:` (the layout unclip's trainer writes)."""

import json

import numpy as np
import pytest
from conftest import write_model_yaml
from PIL import Image

from unclip import UnCLIPCascade, UnclipError
from unclip.cli import main
from unclip.replicas import tiny_pixel_upscaler

FAST = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, super_res_num_inference_steps=2)


@pytest.fixture(scope="module")
def pixel_yaml(tmp_path_factory, karlo_dir):
    root = tmp_path_factory.mktemp("pixel")
    upscaler = tiny_pixel_upscaler(root / "pixel-upscaler")
    return write_model_yaml(root / "karlo-pixel.yaml", karlo_dir, upscaler, sr1024={"steps": 2})


@pytest.fixture(scope="module")
def pixel_cascade(pixel_yaml):
    pipe = UnCLIPCascade.from_config(pixel_yaml)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_layout_is_detected(pixel_cascade):
    assert pixel_cascade.upscaler_layout == "pixel" and pixel_cascade.max_size == 1024
    assert pixel_cascade.upscaler_vae is None and pixel_cascade.upscaler_text_encoder is None


def test_generates_1024_and_batch_equals_single(pixel_cascade):
    batch = pixel_cascade("a red cube", num_images_per_prompt=2, seed=5, size=1024, output_type="np", **FAST).images
    alone = pixel_cascade("a red cube", seed=6, size=1024, output_type="np", **FAST).images
    assert batch.shape == (2, 1024, 1024, 3) and np.isfinite(batch).all() and batch.std() > 0.01
    difference = np.abs(batch[1] - alone[0])  # equal up to float rounding (see test_cascade)
    assert difference.mean() < 1e-5 and (difference > 1 / 255).mean() < 1e-3
    assert np.abs(batch[0] - batch[1]).mean() > 0.05


def test_256_stops_before_the_upscaler(pixel_cascade, cascade):
    ours = pixel_cascade("a cat", seed=1, size=256, output_type="np", **FAST).images
    karlo = cascade("a cat", seed=1, size=256, output_type="np", **FAST).images
    assert np.array_equal(ours, karlo)


def test_save_load_round_trip(tmp_path, pixel_cascade):
    pixel_cascade.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "upscaler" / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DModel"] and "vae" not in index
    again = UnCLIPCascade.from_config(tmp_path / "saved" / "model.yaml")
    again.set_progress_bar_config(disable=True)
    a = pixel_cascade("a dog", seed=2, size=1024, output_type="np", **FAST).images
    b = again("a dog", seed=2, size=1024, output_type="np", **FAST).images
    assert np.array_equal(a, b)


def test_cli_writes_a_1024_png(tmp_path, pixel_yaml):
    argv = ["generate", "a cat", "--model", str(pixel_yaml), "--out", str(tmp_path), "--size", "1024", "--quiet"]
    assert main(argv + ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2", "--upscale-steps", "2"]) == 0
    (png,) = tmp_path.glob("*.png")
    assert Image.open(png).size == (1024, 1024)


def test_a_folder_of_neither_layout_is_refused(tmp_path, karlo_dir):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text('{"_class_name": "Something", "text_encoder": ["x", "y"]}')
    yaml_file = write_model_yaml(tmp_path / "odd.yaml", karlo_dir, tmp_path / "odd")
    with pytest.raises(UnclipError, match="no known layout"):
        UnCLIPCascade.from_config(yaml_file)
