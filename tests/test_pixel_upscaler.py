"""A pixel-space 256→1024 upsampler as the model config's `upscaler:` (the layout unclip's trainer writes)."""

import json
import runpy
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_model_yaml
from PIL import Image

from unclip import UnCLIPCascade, UnclipError
from unclip.cli import main
from unclip.config import StageSettings
from unclip.loading import detect_upscaler_layout
from unclip.replicas import tiny_pixel_upscaler
from unclip.stages import StageInputs

FAST = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, super_res_num_inference_steps=2)


@pytest.fixture(scope="module")
def pixel_dir(tmp_path_factory):
    return tiny_pixel_upscaler(tmp_path_factory.mktemp("pixel") / "pixel-upscaler")


@pytest.fixture(scope="module")
def pixel_yaml(pixel_dir, karlo_dir):
    # sr1024's noise_level stays at the default 20: the augmentation path runs in every 1024 px test
    return write_model_yaml(pixel_dir.parent / "karlo-pixel.yaml", karlo_dir, pixel_dir, sr1024={"steps": 2})


@pytest.fixture(scope="module")
def pixel_cascade(pixel_yaml):
    pipe = UnCLIPCascade.from_pretrained(pixel_yaml)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def made(pixel_cascade):
    """The 1024 px images several tests compare with: two in a batch (seeds 5, 6) and seed 6 alone."""
    kwargs = dict(size=1024, output_type="np", **FAST)
    batch = pixel_cascade("a red cube", num_images_per_prompt=2, seed=5, **kwargs)
    alone = pixel_cascade("a red cube", seed=6, **kwargs)
    return batch, alone


def _like(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to float rounding amplified at t = 999 (see tests/test_cascade.py::test_batch_equals_single): on
    CPU, where the convolutions run NHWC, oneDNN rounds a batch of two differently from one image, and this tiny
    random upsampler turns that into a few pixels in 10⁴ flipped (mean 3e-5; the demo's: under a grey level)."""
    difference = np.abs(a - b)
    return difference.mean() < 1e-4 and (difference > 1 / 255).mean() < 1e-3


def test_layout_is_detected(pixel_cascade, pixel_dir, x4_dir):
    assert detect_upscaler_layout(str(pixel_dir)) == "pixel" and detect_upscaler_layout(str(x4_dir)) == "x4"
    assert pixel_cascade.upscaler_layout == "pixel" and pixel_cascade.max_size == 1024
    assert type(pixel_cascade.upscaler_unet).__name__ == "UNet2DModel"
    assert pixel_cascade.upscaler_vae is None and pixel_cascade.upscaler_text_encoder is None
    assert pixel_cascade.upscaler_tokenizer is None and pixel_cascade.upscaler_low_res_scheduler is None


def test_generates_1024(made):
    batch, _ = made
    images = batch.images
    assert images.shape == (2, 1024, 1024, 3) and np.isfinite(images).all() and images.std() > 0.01
    assert set(batch.metadata[0]["stages"]) == {"prior", "decoder", "sr256", "sr1024"}
    assert batch.metadata[0]["size"] == 1024 and batch.metadata[0]["stages"]["sr1024"]["steps"] == 2


def test_batch_equals_single(made):
    """Image k of a batch is the image made alone with seed + k (the pixel upsampler also starts at t = 999,
    where batched-vs-single rounding is amplified: a few pixels may differ)."""
    batch, alone = made
    assert _like(batch.images[1], alone.images[0])
    assert np.abs(batch.images[0] - batch.images[1]).mean() > 0.05, "two seeds gave the same image"


def test_input_is_x_t_and_the_upsampled_image_without_guidance(pixel_cascade):
    """The UNet sees [x_t, bicubic(clamp(image))] at 1024, one row per image whatever the guidance scale;
    with noise_level > 0 the low-res half is noise-augmented."""
    image = torch.linspace(-1.5, 1.5, 3 * 256 * 256).reshape(1, 3, 256, 256)  # partly outside [-1, 1]
    inputs = []
    hook = pixel_cascade.upscaler_unet.register_forward_pre_hook(
        lambda module, args, kwargs: inputs.append(kwargs["sample"]), with_kwargs=True
    )
    try:
        for level in (0, 20):
            settings = StageSettings(steps=1, guidance=9.0, scheduler="ddim", noise_level=level)  # 1 step
            given = StageInputs([torch.Generator().manual_seed(0)], prompts=["a cat"], negatives=[""])
            out = pixel_cascade.stages["sr1024"].run(pixel_cascade, image, given, settings)
            assert out.shape == (1, 3, 1024, 1024)
    finally:
        hook.remove()
    expected = F.interpolate(image.clamp(-1, 1), size=[1024, 1024], mode="bicubic", antialias=True)
    clean, augmented = inputs
    assert clean.shape == augmented.shape == (1, 6, 1024, 1024)
    assert torch.allclose(clean[:, 3:], expected, atol=1e-6)
    noise = (augmented[:, 3:] - expected).std().item()
    assert 0.005 < noise < 0.1  # √(1 − ᾱ_20) ≈ 0.03 on the cosine schedule


def test_256_stops_before_the_upscaler(pixel_cascade, cascade):
    calls = []
    hook = pixel_cascade.upscaler_unet.register_forward_pre_hook(lambda *args: calls.append(1))
    try:
        ours = pixel_cascade("a cat", seed=1, size=256, output_type="np", **FAST).images
    finally:
        hook.remove()
    karlo = cascade("a cat", seed=1, size=256, output_type="np", **FAST).images
    assert np.array_equal(ours, karlo) and not calls


def test_settings_are_checked_against_the_pixel_upscaler(pixel_cascade):
    assert pixel_cascade.plan(stage_args={"upscale_noise_level": 400}).settings["sr1024"].noise_level == 400
    with pytest.raises(UnclipError, match="sr1024 noise_level must be ≤ 999"):
        pixel_cascade.plan(stage_args={"upscale_noise_level": 1000})
    with pytest.raises(UnclipError, match="unknown scheduler 'nope'"):
        pixel_cascade.plan(scheduler={"sr1024": "nope"})
    with pytest.raises(
        UnclipError, match=r"upscale_guidance_scale \(--upscale-guidance\): this model's sr1024 \(pixel\)"
    ):
        pixel_cascade.plan(stage_args={"upscale_guidance_scale": 5.0})  # it sees no text: refused, not ignored
    assert "guidance" not in pixel_cascade.plan().metadata()["sr1024"]


def test_save_load_round_trip(tmp_path, pixel_cascade, made):
    pixel_cascade.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "upscaler" / "model_index.json").read_text())
    assert index == {
        "_class_name": "PixelUpscalerPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "UnCLIPScheduler"],
        "_unclip_layout": "pixel",
        "_diffusers_version": diffusers.__version__,
    }
    again = UnCLIPCascade.from_pretrained(tmp_path / "saved" / "model.yaml")
    again.set_progress_bar_config(disable=True)
    assert again.upscaler_layout == "pixel"
    image = again("a red cube", seed=6, size=1024, output_type="np", **FAST).images
    assert np.array_equal(image, made[1].images)


def test_model_cpu_offload_skips_the_missing_x4_components(pixel_yaml, made):
    pipe = UnCLIPCascade.from_pretrained(pixel_yaml)
    pipe.set_progress_bar_config(disable=True)
    pipe.enable_model_cpu_offload(device="cpu")  # the same hooks as on a GPU, without one
    assert hasattr(pipe.upscaler_unet, "_hf_hook") and len(pipe._all_hooks) == 7  # 6 Karlo models + the UNet
    image = pipe("a red cube", seed=6, size=1024, output_type="np", **FAST).images
    assert _like(image[0], made[1].images[0])


def test_cli_writes_a_1024_png(tmp_path, pixel_yaml):
    argv = ["generate", "a cat", "--model", str(pixel_yaml), "--out", str(tmp_path), "--size", "1024", "--quiet"]
    assert main(argv + ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2", "--upscale-steps", "2"]) == 0
    (png,) = tmp_path.glob("*.png")
    assert Image.open(png).size == (1024, 1024)
    assert np.asarray(Image.open(png)).std() > 2  # not a flat picture


def test_cli_refuses_a_setting_the_pixel_upsampler_lacks_before_loading(tmp_path, pixel_yaml, monkeypatch, capsys):
    from unclip.pipeline import UnCLIPCascade

    def never(*args, **kwargs):
        raise AssertionError("loaded a model for a command that was bound to fail")

    monkeypatch.setattr(UnCLIPCascade, "from_pretrained", never)
    argv = ["generate", "a cat", "--model", str(pixel_yaml), "--out", str(tmp_path / "o"), "--upscale-guidance", "5"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--upscale-guidance): this model's sr1024 (pixel) takes no guidance" in err


def test_a_folder_of_neither_layout_is_refused(tmp_path, karlo_dir):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "model_index.json").write_text('{"_class_name": "Something", "text_encoder": ["x", "y"]}')
    yaml_file = write_model_yaml(tmp_path / "odd.yaml", karlo_dir, tmp_path / "odd")
    with pytest.raises(UnclipError, match="odd is no known layout") as error:
        UnCLIPCascade.from_pretrained(yaml_file)
    assert "\n" not in str(error.value) and "x4" in str(error.value) and "pixel" in str(error.value)


def test_start_runs_the_late_steps_from_the_noised_low_res_image(pixel_cascade, cascade):
    """SDEdit for the upsamplers: only the timesteps ≤ start run, from x_t = √ᾱ_t low_res + √(1−ᾱ_t) x_T."""
    from unclip.sampling import sample
    from unclip.schedulers import make_scheduler

    scheduler = make_scheduler("ddim", pixel_cascade.super_res_scheduler)
    init = torch.rand(1, 3, 8, 8) * 2 - 1
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    seen = []

    def oracle(x, t, i):  # the exact ε for init: the sampler must then return init
        seen.append((int(t), i))
        a = scheduler.alphas_cumprod[int(t)]
        return (x - a.sqrt() * init) / (1 - a).sqrt()

    out = sample(oracle, scheduler, x_T, 6, [torch.Generator()], init=init, start=500)
    assert seen and all(t <= 500 for t, _ in seen) and len(seen) < 6  # only the late steps
    assert [i for _, i in seen] == list(range(6 - len(seen), 6))  # numbered as in the full schedule
    assert (out - init).abs().max() < 0.05  # (DDIM ends at ᾱ_0 < 1, not at x_0 exactly)
    with pytest.raises(UnclipError, match="start 10 is below every one of its 2 timesteps"):
        sample(oracle, scheduler, x_T, 2, [torch.Generator()], init=init, start=10)
    # through the cascade: a 256 px image from 64 px with the 64→256 stage started late, and the checks
    kwargs = dict(seed=0, size=256, output_type="np", **FAST)
    late = pixel_cascade("a cat", super_res_start=600, **{**kwargs, "super_res_num_inference_steps": 4}).images
    assert late.shape == (1, 256, 256, 3) and np.isfinite(late).all()
    assert pixel_cascade("a cat", **kwargs).metadata[0]["stages"]["sr256"]["start"] == 0
    with pytest.raises(UnclipError, match=r"this model's sr1024 \(x4\) takes no start"):
        cascade("a cat", seed=0, size=1024, upscale_start=100)
    with pytest.raises(UnclipError, match=r"sr256: start 10 is below every one of its 2 timesteps \("):
        pixel_cascade.plan(scheduler={"sr256": "ddim"}, stage_args={"super_res_start": 10,
                                                                     "super_res_num_inference_steps": 2})  # fmt: skip
    with pytest.raises(UnclipError, match="unknown argument 'prior_start'"):
        pixel_cascade.plan(stage_args={"prior_start": 5})
    inverted = pixel_cascade.plan(stage_args={"decoder_start": 500}, first_stage="decoder", inverted=True)
    assert inverted.settings["decoder"].start == 500  # the edits' inversion depth
    with pytest.raises(UnclipError, match="the decoder's start is where a DDIM inversion stops"):
        pixel_cascade.plan(stage_args={"decoder_start": 500})  # text-to-image starts from noise


def test_the_upsampler_probe_measures_bicubic_and_the_stage_on_known_inputs(tmp_path, pixel_yaml, pixel_dir):
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "probe_upsampler.py"))["main"]
    out = tmp_path / "probe.json"
    argv = ["--model", str(pixel_yaml), "--upscaler", str(pixel_dir), "--n", "1", "--settings", "1000:1"]
    assert main([*argv, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["input"], r["setting"]) for r in rows] == [
        ("clean", "at 256 px"), ("clean", "bicubic"), ("clean", "1000:1"),
        ("decoded", "at 256 px"), ("decoded", "bicubic"), ("decoded", "1000:1"),
    ]  # fmt: skip
    # the clean 256 px render itself: read back right, an anti-aliased edge (about 0.5 px) on flat colours
    assert rows[0]["all"] == 1.0 and 0.2 < rows[0]["edge"] < 1.0 and rows[0]["corner_std"] == 0
    # bicubic from it: read back right, edges about 2.5 px at 1024 px, flat corners
    assert rows[1]["all"] == 1.0 and 2.0 < rows[1]["edge"] < 3.0 and rows[1]["corner_std"] == 0
    # a random upsampler's one step from pure noise draws noise, which the corners show
    assert rows[2]["corner_std"] > 20 and all(r["seconds"] > 0 for r in rows)
    # "blurred": the clean render under σ 0.75 px, edges as wide as the demo's 64→256 stage leaves them
    assert main([*argv, "--inputs", "blurred", "--json", str(out)]) == 0
    (at_256, blurred, _) = json.loads(out.read_text())
    assert rows[0]["edge"] + 0.25 < at_256["edge"] < 2.0, at_256  # σ 0.75 px widens the edge at 256 px
    assert blurred["input"] == "blurred" and blurred["all"] == 1.0, blurred
    assert rows[1]["edge"] + 1 < blurred["edge"] < 6.0, blurred


def test_pad_mirrors_the_input_past_each_border_and_crops_the_output(pixel_cascade, cascade):
    """pad: the UNet sees [x_t, low-res] mirrored pad pixels past each border (rounded up to a multiple of its
    downsampling factor, 2 for the tiny replica's two levels) and its output is cropped back to 1024."""
    image = torch.linspace(-1, 1, 3 * 256 * 256).reshape(1, 3, 256, 256)
    unet = pixel_cascade.upscaler_unet
    inputs, outputs = [], []
    hooks = [
        unet.register_forward_pre_hook(lambda module, args, kwargs: inputs.append(kwargs["sample"]), with_kwargs=True),
        unet.register_forward_hook(lambda module, args, output: outputs.append(output.sample)),
    ]
    try:
        for pad in (0, 7):
            settings = StageSettings(steps=1, scheduler="ddim", pad=pad)
            out = pixel_cascade.stages["sr1024"].run(
                pixel_cascade, image, StageInputs([torch.Generator().manual_seed(0)]), settings
            )
            assert out.shape == (1, 3, 1024, 1024)
    finally:
        for hook in hooks:
            hook.remove()
    plain, padded = inputs
    assert padded.shape == (1, 6, 1040, 1040)  # 7 → 8 pixels each side
    assert torch.equal(padded[..., 8:-8, 8:-8], plain)  # the same x_T and low-res inside
    assert torch.equal(padded[..., :8, 8:-8], plain[..., 1:9, :].flip(-2))  # and their mirror outside
    # DDIM from t = 999 in one step: the output is the prediction from the cropped UNet output alone
    assert not torch.equal(outputs[1][..., 8:-8, 8:-8], outputs[0])  # the border now sees the mirror
    assert pixel_cascade.plan(stage_args={"upscale_pad": 16}).metadata()["sr1024"]["pad"] == 16
    with pytest.raises(UnclipError, match="sr1024 pad must be below the upsampler's size 1024, got 1024"):
        pixel_cascade.plan(stage_args={"upscale_pad": 1024})
    with pytest.raises(UnclipError, match=r"upscale_pad \(--upscale-pad\): this model's sr1024 \(x4\) takes no pad"):
        cascade.plan(stage_args={"upscale_pad": 16})
