"""Same seed, same picture: unclip against diffusers' reference classes, in fp32 on CPU.

The reference is built from the same folders with diffusers' own classes: UnCLIPPipeline (deprecated, so
its text projection comes from diffusers' deprecated package here, in the test only) followed by
StableDiffusionUpscalePipeline fed the float 256 px output and the same generator. Ours runs in the reference's
NCHW layout: on CPU unclip's default is NHWC, which moves float rounding only (tests/test_speedups.py bounds it).
"""

import numpy as np
import pytest
import torch
from diffusers import (
    PriorTransformer,
    StableDiffusionUpscalePipeline,
    UnCLIPPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel as ReferenceTextProj
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from unclip.speedups import Speedups

PROMPT = "a corgi playing a trumpet"
TOLERANCE = 1e-3


def reference_unclip(karlo) -> UnCLIPPipeline:
    pipe = UnCLIPPipeline(
        prior=PriorTransformer.from_pretrained(karlo / "prior"),
        decoder=UNet2DConditionModel.from_pretrained(karlo / "decoder"),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(karlo / "text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(karlo / "tokenizer"),
        text_proj=ReferenceTextProj.from_pretrained(karlo / "text_proj"),
        super_res_first=UNet2DModel.from_pretrained(karlo / "super_res_first"),
        super_res_last=UNet2DModel.from_pretrained(karlo / "super_res_last"),
        prior_scheduler=UnCLIPScheduler.from_pretrained(karlo / "prior_scheduler"),
        decoder_scheduler=UnCLIPScheduler.from_pretrained(karlo / "decoder_scheduler"),
        super_res_scheduler=UnCLIPScheduler.from_pretrained(karlo / "super_res_scheduler"),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_upscaler(x4) -> StableDiffusionUpscalePipeline:
    pipe = StableDiffusionUpscalePipeline.from_pretrained(x4)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def nchw(cascade):
    """The session's cascade in the reference's memory format for these tests, then back to the default."""
    cascade.enable_speedups(Speedups(channels_last=False))
    yield
    cascade.enable_speedups(Speedups())


def assert_close(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert reference.std() > 0.01, "the reference image is flat: the comparison would prove nothing"
    assert np.abs(ours - reference).max() < TOLERANCE


def test_256_matches_unclip_pipeline(cascade, karlo_dir):
    reference = reference_unclip(karlo_dir)(PROMPT, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    ours = cascade(PROMPT, seed=0, size=256, output_type="np")
    assert_close(ours.images, reference.images)


def test_1024_matches_unclip_then_x4_upscaler(cascade, karlo_dir, x4_dir):
    generator = torch.Generator("cpu").manual_seed(7)
    low_res = reference_unclip(karlo_dir)(PROMPT, generator=generator, output_type="np").images
    reference = reference_upscaler(x4_dir)(
        PROMPT, image=low_res, generator=generator, num_inference_steps=10, output_type="np"
    ).images
    ours = cascade(PROMPT, seed=7, size=1024, upscale_num_inference_steps=10, output_type="np").images
    assert ours.shape == (1, 1024, 1024, 3)
    assert_close(ours, reference)


def test_a_changed_setting_breaks_parity(cascade, karlo_dir):
    """The parity check can fail: one guidance scale off and the pictures differ."""
    reference = reference_unclip(karlo_dir)(PROMPT, generator=torch.Generator("cpu").manual_seed(0), output_type="np")
    ours = cascade(PROMPT, seed=0, size=256, decoder_guidance_scale=7.0, output_type="np")
    with pytest.raises(AssertionError):
        assert_close(ours.images, reference.images)
