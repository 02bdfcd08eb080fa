"""The cascade's behaviour on tiny replicas: batching, sizes, guidance, negative prompts, schedulers."""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from unclip import UnclipError
from unclip.schedulers import SCHEDULERS

FAST = dict(prior_num_inference_steps=4, decoder_num_inference_steps=4, super_res_num_inference_steps=2)


def test_batch_equals_single(cascade):
    """Image k of a batch is the image made alone with seed + k.

    Batched matrix products round differently from single ones (~1e-6), and Karlo's 64→256 upsampler
    starts at t = 999 where x_0 = (x_t − √(1−ᾱ)ε)/√ᾱ amplifies that by 1/√ᾱ_999 ≈ 2·10⁴, in the reference
    pipeline as here; so at 256 px a few pixels in 10⁴ may differ by a grey level, never the picture.
    """
    kwargs = dict(output_type="np", **FAST)
    small_batch = cascade("a red cube", num_images_per_prompt=2, seed=5, size=64, **kwargs).images
    small_alone = cascade("a red cube", seed=6, size=64, **kwargs).images
    assert np.abs(small_batch[1] - small_alone[0]).max() < 1e-4
    batch = cascade("a red cube", num_images_per_prompt=2, seed=5, size=256, **kwargs).images
    alone = cascade("a red cube", seed=6, size=256, **kwargs).images
    difference = np.abs(batch[1] - alone[0])
    assert difference.mean() < 1e-5 and (difference > 1 / 255).mean() < 1e-3
    assert np.abs(batch[0] - batch[1]).mean() > 0.05, "two seeds gave the same image"


def test_batch_across_prompts_equals_single(cascade):
    batch = cascade(["a red cube", "a blue ball"], seed=3, size=64, output_type="np", **FAST)
    alone = cascade("a blue ball", seed=4, size=64, output_type="np", **FAST)
    assert np.abs(batch.images[1] - alone.images[0]).max() < 1e-4
    assert [m["seed"] for m in batch.metadata] == [3, 4]
    assert [m["prompt"] for m in batch.metadata] == ["a red cube", "a blue ball"]


@pytest.mark.parametrize("size", [64, 256])
def test_sizes_and_output_types(cascade, size):
    pil = cascade("a cat", seed=0, size=size, **FAST)
    np_out = cascade("a cat", seed=0, size=size, output_type="np", **FAST)
    pt = cascade("a cat", seed=0, size=size, output_type="pt", **FAST)
    assert isinstance(pil.images[0], Image.Image) and pil.images[0].size == (size, size)
    assert np_out.images.shape == (1, size, size, 3) and pt.images.shape == (1, 3, size, size)
    assert np.allclose(pt.images.permute(0, 2, 3, 1).numpy(), np_out.images)
    assert np.array_equal(np.asarray(pil.images[0]), (np_out.images[0] * 255).round().astype("uint8"))
    assert pil.metadata[0]["size"] == size and set(pil.metadata[0]["stages"]) == (
        {"prior", "decoder"} if size == 64 else {"prior", "decoder", "sr256"}
    )


def _batch_sizes(module):
    seen = []
    module.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("sample", args[0] if args else None).shape[0]),
        with_kwargs=True,
    )
    return seen


def test_guidance_scale_one_skips_the_unconditional_pass(cascade):
    seen = _batch_sizes(cascade.decoder)
    try:
        cascade("a cat", seed=0, size=64, decoder_guidance_scale=1.0, **FAST)
        unguided = list(seen)
        seen.clear()
        cascade("a cat", seed=0, size=64, decoder_guidance_scale=8.0, **FAST)
    finally:
        cascade.decoder._forward_pre_hooks.clear()
    assert set(unguided) == {1} and set(seen) == {2}


def test_negative_prompt_replaces_the_empty_prompt(cascade):
    plain = cascade("a cat", seed=1, size=64, output_type="np", **FAST).images
    empty = cascade("a cat", seed=1, size=64, negative_prompt="", output_type="np", **FAST).images
    negative = cascade("a cat", seed=1, size=64, negative_prompt="blurry", output_type="np", **FAST).images
    assert np.array_equal(plain, empty)
    assert np.abs(plain - negative).max() > 1e-3


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_the_karlo_stages(cascade, name):
    out = cascade("a cat", seed=0, size=256, scheduler=name, output_type="np", **FAST)
    assert np.isfinite(out.images).all() and out.images.std() > 0.01
    assert {s["scheduler"] for s in out.metadata[0]["stages"].values()} == {name}


def test_schedulers_differ_from_default(cascade):
    default = cascade("a cat", seed=0, size=64, output_type="np", **FAST).images
    ddim = cascade("a cat", seed=0, size=64, scheduler={"decoder": "ddim"}, output_type="np", **FAST).images
    assert np.abs(default - ddim).max() > 1e-3


def _spy_on_the_loop(monkeypatch) -> dict:
    """Per stage, what its loop ran: the scheduler class, the steps, the step keywords (η) and the start."""
    import unclip.stages.base as base

    ran, real = {}, base.sample

    def spy(denoiser, scheduler, x_T, num_steps, generators, *, desc="", **kwargs):
        ran[desc] = (type(scheduler).__name__, num_steps, kwargs.get("step_kwargs"), kwargs.get("start", 0))
        return real(denoiser, scheduler, x_T, num_steps, generators, desc=desc, **kwargs)

    monkeypatch.setattr(base, "sample", spy)
    return ran


def test_each_stage_runs_the_scheduler_steps_and_eta_it_is_given_and_records_them(cascade, monkeypatch):
    ran = _spy_on_the_loop(monkeypatch)
    schedulers = {"prior": "ddpm", "decoder": "ddim", "sr256": "unclip", "sr1024": "dpmpp"}
    out = cascade("a cat", seed=0, size=1024, scheduler=schedulers, decoder_eta=0.4, upscale_num_inference_steps=3,
                  output_type="np", **{**FAST, "prior_num_inference_steps": 3})  # fmt: skip
    assert ran == {
        "prior": ("KarloDDPMScheduler", 3, None, 0),
        "decoder": ("DDIMScheduler", 4, {"eta": 0.4}, 0),
        "sr256": ("UnCLIPScheduler", 2, None, 0),
        "sr1024": ("DPMSolverMultistepScheduler", 3, None, 0),
    }
    assert out.images.shape == (1, 1024, 1024, 3) and np.isfinite(out.images).all()
    stages = out.metadata[0]["stages"]
    assert {stage: s["scheduler"] for stage, s in stages.items()} == schedulers
    assert {stage: s["steps"] for stage, s in stages.items()} == {"prior": 3, "decoder": 4, "sr256": 2, "sr1024": 3}
    assert stages["decoder"]["eta"] == 0.4 and all("eta" not in stages[s] for s in ("prior", "sr256", "sr1024"))
    assert "start" not in stages["decoder"], "text-to-image starts the decoder from noise: no start to record"
    assert "guidance" not in stages["sr256"] and "start" not in stages["sr1024"], "the kind takes none"


def test_eta_changes_the_ddim_picture_and_needs_ddim(cascade):
    kwargs = dict(seed=0, size=64, scheduler={"decoder": "ddim"}, output_type="np", **FAST)
    plain = cascade("a cat", **kwargs).images
    assert np.array_equal(plain, cascade("a cat", decoder_eta=0.0, **kwargs).images)
    assert np.abs(plain - cascade("a cat", decoder_eta=1.0, **kwargs).images).max() > 1e-3
    with pytest.raises(UnclipError, match="prior: eta 0.5 needs the ddim scheduler .UnCLIPScheduler has no η."):
        cascade("a cat", prior_eta=0.5, size=64, **FAST)


def test_quiet_steps_change_only_the_pictures_of_a_learned_variance(cascade):
    """decoder_quiet_steps=N: the last N steps that add noise add β̃ (v = −1), not the learned variance; the tiny
    Karlo decoder learns its variance (6 channels), so the picture changes; DDIM has none to replace."""
    kwargs = dict(seed=0, size=64, output_type="np", **FAST)
    plain = cascade("a cat", **kwargs)
    assert np.array_equal(plain.images, cascade("a cat", decoder_quiet_steps=0, **kwargs).images)
    quiet = cascade("a cat", decoder_quiet_steps=1, **kwargs)
    assert np.abs(plain.images - quiet.images).max() > 1e-3
    assert quiet.metadata[0]["stages"]["decoder"]["quiet_steps"] == 1
    ddim = dict(kwargs, scheduler={"decoder": "ddim"})  # no learned variance: nothing to replace, nothing recorded
    quiet_ddim = cascade("a cat", decoder_quiet_steps=1, **ddim)
    assert np.array_equal(cascade("a cat", **ddim).images, quiet_ddim.images)
    assert "quiet_steps" not in quiet_ddim.metadata[0]["stages"]["decoder"]
    with pytest.raises(UnclipError, match="unknown .*prior_quiet_steps|prior_quiet_steps"):
        cascade("a cat", prior_quiet_steps=1, **kwargs)


def test_unclip_scheduler_refused_for_the_x4_stage(cascade):
    with pytest.raises(UnclipError, match="sr1024: scheduler .unclip. needs the squaredcos"):
        cascade("a cat", seed=0, size=1024, scheduler={"sr1024": "unclip"}, **FAST)


def test_noise_levels_change_the_upsampler_input(cascade):
    base = cascade("a cat", seed=0, size=256, output_type="np", **FAST).images
    noised = cascade("a cat", seed=0, size=256, super_res_noise_level=300, output_type="np", **FAST).images
    assert np.abs(base - noised).max() > 1e-3
    with pytest.raises(UnclipError, match="350"):
        cascade("a cat", seed=0, size=1024, upscale_noise_level=351)


def test_nan_names_the_stage(cascade, monkeypatch):
    original = cascade.decoder.forward

    def poisoned(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sample.fill_(float("nan"))
        return out

    monkeypatch.setattr(cascade.decoder, "forward", poisoned)
    with pytest.raises(UnclipError, match="stage decoder produced NaN/inf values in float32: its weights or its inp"):
        cascade("a cat", seed=0, size=64, **FAST)  # no advice to run in float32: it is float32 already


def test_the_nan_advice_fits_the_dtype():
    from unclip.stages import check_finite

    nan = torch.full((2,), float("nan"))
    for dtype, advice in [(torch.float16, "bfloat16 or float32"), (torch.bfloat16, "bfloat16: run it in float32"),
                          (torch.float32, "its weights or its input are not finite")]:  # fmt: skip
        with pytest.raises(UnclipError, match=advice):
            check_finite("sr256", nan.to(dtype))
    assert check_finite("sr256", torch.ones(2)) is not None


def test_long_prompt_is_truncated_with_a_warning(cascade, caplog):
    with caplog.at_level(logging.WARNING, logger="unclip"):
        cascade("a very " * 60 + "long prompt", seed=0, size=64, **FAST)
    assert "truncated" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(prompt="a cat", size=512), "64, 256 or 1024"),
        (dict(prompt="a cat", prior_num_inference_steps=0), "steps"),
        (dict(prompt="a cat", decoder_guidance_scale=-1.0), "guidance"),
        (dict(prompt="a cat", scheduler="euler-magic"), "unknown scheduler"),
        (dict(prompt="a cat", output_type="jpg"), "output_type"),
    ],
)
def test_bad_arguments(cascade, kwargs, message):
    with pytest.raises(UnclipError, match=message):
        cascade(**kwargs)


def test_float16_on_cpu_is_refused(model_yaml):
    from unclip import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(model_yaml, torch_dtype=torch.float16)
    assert pipe.upscaler_vae.dtype == torch.float32, "the x4 VAE overflows in fp16: it must stay fp32"
    assert pipe.decoder.dtype == torch.float16
    with pytest.raises(UnclipError, match="float16 needs a GPU"):
        pipe("a cat", size=64)


def test_bfloat16_runs_on_cpu_to_1024(model_yaml, cascade):
    """bf16 is the half precision a CPU takes (fp16 is refused): every stage runs in it, close to fp32."""
    from unclip import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(model_yaml, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(seed=0, size=1024, upscale_num_inference_steps=2, output_type="np", **FAST)
    out = pipe("a cat", **kwargs)
    assert out.images.shape == (1, 1024, 1024, 3) and np.isfinite(out.images).all()
    assert out.metadata[0]["dtype"] == "bfloat16" and pipe.upscaler_vae.dtype == torch.bfloat16
    reference = cascade("a cat", **kwargs).images
    # bf16 rounding through four random stages: 0.018 measured; another seed is 0.17 away
    assert np.abs(out.images - reference).mean() < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_gpu_has_no_nan(model_yaml, dtype):
    from unclip import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(model_yaml, torch_dtype=dtype).to("cuda")
    out = pipe("a cat", seed=0, size=1024, upscale_num_inference_steps=5, output_type="np", **FAST)
    assert np.isfinite(out.images).all()


def test_best_of_n_prior_keeps_the_sample_closest_to_the_text(cascade):
    """DALL·E 2 §2.2: n embeddings per image (draw 0 from the image's generator, draw j from a fork); the kept
    one has the highest dot product (of unit vectors) with z_t."""
    from unclip.config import StageSettings
    from unclip.sampling import fork_generator
    from unclip.stages import StageInputs
    from unclip.text import clip_similarity

    s = StageSettings(steps=3, guidance=4.0, scheduler="default")
    text = cascade.encode_text(["a cat", "a dog"], ["", ""])

    def gens(repeat=1):
        images = [torch.Generator().manual_seed(seed) for seed in (1, 2)]
        return [g if j == 0 else fork_generator(g, j) for g in images for j in range(repeat)]

    prior = cascade.stages["prior"]
    with torch.no_grad():
        best = prior.run(cascade, None, StageInputs(gens(), text), dataclasses.replace(s, samples=3))
        candidates = prior.run(cascade, None, StageInputs(gens(3), text.repeat(3)), s).view(2, 3, -1)
        single = prior.run(cascade, None, StageInputs(gens(), text), s)
    assert torch.allclose(single, candidates[:, 0], atol=1e-5)  # the first draw is the plain sample
    scores = clip_similarity(candidates, text.prompt_embeds()[:, None])
    assert torch.equal(best, candidates[torch.arange(2), scores.argmax(dim=1)])
    assert (candidates[:, 0] - candidates[:, 1]).abs().max() > 1e-3  # distinct draws to choose from
    out = cascade("a cat", seed=1, size=64, prior_samples=3, **FAST)
    assert out.metadata[0]["stages"]["prior"]["samples"] == 3
    assert out.metadata[0]["prior_score"] == pytest.approx(scores[0].max().item(), abs=1e-3)
    # draw 0 is the plain sample, from the same generator state: where it wins, the picture is the one
    # prior_samples=1 makes (the decoder's noise is untouched), up to the rounding of a 3-row prior batch
    won = [seed for seed in range(8) if cascade("a cat", seed=seed, size=64, prior_samples=3, **FAST).metadata[0][
        "prior_score"] == cascade("a cat", seed=seed, size=64, **FAST).metadata[0]["prior_score"]]  # fmt: skip
    assert won, "draw 0 never won in 8 seeds"
    plain = cascade("a cat", seed=won[0], size=64, output_type="np", **FAST).images
    best_of = cascade("a cat", seed=won[0], size=64, prior_samples=3, output_type="np", **FAST).images
    # random tiny weights amplify the rounding (see test_cli) to a few grey levels in a few pixels; the CPU's
    # kernels decide how many (4.1 levels in 0.2 % of the values on an AMD EPYC)
    difference = np.abs(best_of - plain)
    assert difference.max() < 8 / 255 and difference.mean() < 1e-3 and (difference > 1 / 255).mean() < 0.01
    other = cascade("a cat", seed=won[0] + 1, size=64, output_type="np", **FAST).images
    assert np.abs(other - plain).mean() > 0.05
    with pytest.raises(UnclipError, match="prior samples must be a whole number ≥ 1, got 0"):
        cascade("a cat", prior_samples=0)
    # one generator for the whole batch (diffusers' form): every candidate drawn from it in turn, reproducibly
    one = [cascade(["a cat", "a dog"], generator=torch.Generator().manual_seed(5), size=64, prior_samples=2,
                   output_type="np", **FAST).images for _ in range(2)]  # fmt: skip
    assert np.array_equal(one[0], one[1])
