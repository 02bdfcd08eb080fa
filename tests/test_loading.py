"""Loading both hub layouts from local folders, the config files, save/load, and refusals."""

import json
import shutil

import numpy as np
import pytest
from conftest import write_model_yaml

from unclip import UnCLIPCascade, UnclipError, load_model_config
from unclip.config import preset_names
from unclip.text_proj import UnCLIPTextProjModel

FAST = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3, super_res_num_inference_steps=2)


def test_presets_load():
    assert {"karlo", "karlo-x4"} <= set(preset_names())
    config = load_model_config("karlo-x4")
    assert config.unclip == "kakaobrain/karlo-v1-alpha"
    assert config.upscaler == "stabilityai/stable-diffusion-x4-upscaler"
    assert (config.stages["prior"].steps, config.stages["decoder"].guidance) == (25, 8.0)
    assert config.stages["sr1024"].noise_level == 20 and config.max_size == 1024
    assert load_model_config("karlo").max_size == 256
    assert config.image_encoder == load_model_config("karlo").image_encoder == "hf:openai/clip-vit-large-patch14"
    variations = load_model_config("karlo-variations")
    assert variations.unclip == "kakaobrain/karlo-v1-alpha-image-variations" and variations.image_encoder is None
    assert load_model_config("demo").image_encoder.endswith("models/demo/clip/image_encoder")


def test_hub_layout_with_unclip_library_entry(karlo_dir, cascade):
    index = json.loads((karlo_dir / "model_index.json").read_text())
    assert index["text_proj"] == ["unclip", "UnCLIPTextProjModel"]
    assert isinstance(cascade.text_proj, UnCLIPTextProjModel)


def test_diffusers_save_pretrained_form_loads_too(tmp_path, karlo_dir):
    copy = tmp_path / "karlo"
    shutil.copytree(karlo_dir, copy)
    index = json.loads((copy / "model_index.json").read_text())
    index["text_proj"] = ["diffusers", "UnCLIPTextProjModel"]
    (copy / "model_index.json").write_text(json.dumps(index))
    pipe = UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "m.yaml", copy, None))
    assert pipe.max_size == 256 and isinstance(pipe.text_proj, UnCLIPTextProjModel)


def test_without_upscaler_the_cascade_ends_at_256(tmp_path, karlo_dir):
    pipe = UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "m.yaml", karlo_dir, None))
    pipe.set_progress_bar_config(disable=True)
    assert pipe("a cat", seed=0, output_type="np", **FAST).images.shape == (1, 256, 256, 3)
    with pytest.raises(UnclipError, match="needs an upscaler"):
        pipe("a cat", size=1024)


def test_save_load_round_trip(tmp_path, cascade):
    model_yaml = cascade.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "unclip" / "model_index.json").read_text())
    assert index["text_proj"] == ["unclip", "UnCLIPTextProjModel"]
    assert list((tmp_path / "saved" / "unclip" / "decoder").glob("*.safetensors"))
    assert json.loads((tmp_path / "saved" / "upscaler" / "model_index.json").read_text())["max_noise_level"] == 350
    reloaded = UnCLIPCascade.from_pretrained(tmp_path / "saved")  # the folder, as in diffusers
    reloaded.set_progress_bar_config(disable=True)
    kwargs = dict(seed=2, size=1024, upscale_num_inference_steps=2, output_type="np", **FAST)
    assert np.array_equal(cascade("a cat", **kwargs).images, reloaded("a cat", **kwargs).images)
    assert UnCLIPCascade.from_pretrained(model_yaml).model_config.unclip == reloaded.model_config.unclip
    with pytest.raises(TypeError, match="push_to_hub"):
        cascade.save_pretrained(tmp_path / "other", push_to_hub=True)  # refused, not swallowed
    with pytest.raises(UnclipError, match="safetensors only"):
        cascade.save_pretrained(tmp_path / "other", safe_serialization=False)


def test_from_config_is_the_deprecated_name_of_from_pretrained(model_yaml, karlo_dir):
    with pytest.warns(FutureWarning, match="use UnCLIPCascade.from_pretrained"):
        pipe = UnCLIPCascade.from_config(model_yaml)
    assert pipe.max_size == 1024
    karlo = UnCLIPCascade.from_pretrained(karlo_dir)  # a folder in Karlo's layout: Karlo alone, its defaults
    assert karlo.max_size == 256 and karlo.model_config.stages["decoder"].guidance == 8.0


def test_missing_subfolder_is_named(tmp_path, karlo_dir):
    copy = tmp_path / "karlo"
    shutil.copytree(karlo_dir, copy)
    shutil.rmtree(copy / "decoder")
    with pytest.raises(UnclipError, match="no 'decoder/' subfolder"):
        UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "m.yaml", copy, None))


def test_folder_that_is_no_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnclipError, match="not a karlo layout: no model_index.json"):
        UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "m.yaml", tmp_path / "empty", None))


def test_prior_and_decoder_size_mismatch_is_refused(tmp_path, karlo_dir):
    copy = tmp_path / "karlo"
    shutil.copytree(karlo_dir, copy)
    config = json.loads((copy / "prior" / "config.json").read_text())
    config["embedding_dim"] += 8
    (copy / "prior" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnclipError, match="prior makes .* text_proj takes"):
        UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "m.yaml", copy, None))


def test_hub_id_without_network_says_what_to_do(tmp_path):
    (tmp_path / "m.yaml").write_text("unclip: someone/not-cached-anywhere\n")
    with pytest.raises(UnclipError, match="HF_HUB_OFFLINE"):
        UnCLIPCascade.from_pretrained(tmp_path / "m.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("upscaler: x\n", "missing 'unclip:'"),
        ("unclip: x\nbogus: 1\n", "unknown key 'bogus'"),
        ("unclip: x\nprior: {steps: 0}\n", "steps must be"),
        ("unclip: x\nprior: {stepz: 3}\n", "unknown key prior.stepz"),
        ("unclip: [x\n", "not valid YAML"),
    ],
)
def test_bad_model_yaml(tmp_path, text, message):
    (tmp_path / "m.yaml").write_text(text)
    with pytest.raises(UnclipError, match=message):
        load_model_config(tmp_path / "m.yaml")


def test_unknown_preset_lists_the_presets():
    with pytest.raises(UnclipError, match="unknown model 'nope'; presets: .*karlo-x4"):
        load_model_config("nope")


def test_public_names_resolve():
    import unclip

    assert set(unclip.__all__) == {*unclip._EXPORTS, "__version__"}
    assert all(getattr(unclip, name) is not None for name in unclip.__all__)
