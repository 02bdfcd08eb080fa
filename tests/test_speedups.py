"""The GPU speed switches (unclip.speedups) keep the pictures: on CPU, on tiny replicas, each switch against the
default path; the GPU-only checks (no host sync in the step loop, CUDA graphs) are marked ``gpu``.

Tiny random-weight cascades amplify float rounding through four stages (a pixel near a clamp can flip), so the
end-to-end checks bound the mean difference and the share of pixels off by more than 2 grey levels; each
bound is shown to fail for a different seed."""

import dataclasses
from pathlib import Path

import pytest
import torch

from unclip import UnCLIPCascade, UnclipError
from unclip.benchmarking import full_size_cascade
from unclip.guidance import ClassifierFreeGuidance, halves
from unclip.sampling import sample
from unclip.schedulers import make_scheduler
from unclip.speedups import Speedups, memory_format
from unclip.stages import STAGES
from unclip.stages.base import StageInputs

PROMPT = "a corgi playing a trumpet"
FAST = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3, upscale_num_inference_steps=3)
AOT = dict(compile_backend="aot_eager")  # traces as inductor would (fullgraph: no graph breaks), no codegen


@pytest.fixture
def pipe(model_yaml):
    """A cascade of its own: the switches change modules in place."""
    pipe = UnCLIPCascade.from_pretrained(model_yaml)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, size, seed=0, **kwargs):
    return pipe(PROMPT, seed=seed, size=size, output_type="pt", **FAST, **kwargs).images


def assert_same_picture(ours, reference):
    difference = (ours - reference).abs()
    assert torch.isfinite(ours).all() and reference.std() > 0.01
    assert difference.mean() < 2e-3 and (difference > 2 / 255).float().mean() < 0.01, (
        difference.mean(),
        (difference > 2 / 255).float().mean(),
    )


def test_the_same_picture_check_can_fail(pipe):
    with pytest.raises(AssertionError):
        assert_same_picture(images(pipe, 256, seed=1), images(pipe, 256))


@pytest.mark.parametrize(
    "speedups, size",
    [
        (Speedups.none(), 256),
        (Speedups(split_guidance=True), 1024),
        (Speedups(channels_last=False), 1024),  # the default on CPU is channels-last: against channels-first
        (Speedups(compile=STAGES, **AOT), 1024),
    ],
    ids=["host-timesteps-off", "split-guidance", "channels-first", "compile"],
)
def test_each_switch_keeps_the_picture(pipe, speedups, size):
    reference = images(pipe, size)
    pipe.enable_speedups(speedups)
    assert_same_picture(images(pipe, size), reference)
    pipe.enable_speedups(Speedups())  # and back
    assert (images(pipe, size) - reference).abs().max() < 1e-6


def test_host_timesteps_stay_on_the_cpu_and_the_model_gets_its_own_copy(cascade):
    scheduler = make_scheduler("default", cascade.decoder_scheduler)
    seen = []

    def denoiser(x, t, i):
        seen.append((t.device, int(t), i))
        return torch.zeros(x.shape[0], 6, *x.shape[2:])  # ε and the learned variance

    generators = [torch.Generator().manual_seed(0)]
    x_T = torch.randn(1, 3, 8, 8, generator=generators[0])
    sample(denoiser, scheduler, x_T, 4, generators)
    assert scheduler.timesteps.device.type == "cpu"
    assert [(t, i) for _, t, i in seen] == [(int(t), i) for i, t in enumerate(scheduler.timesteps)]
    assert all(device == x_T.device for device, _, _ in seen)


def test_split_guidance_cuts_every_conditioning_tensor_in_two(cascade):
    text = cascade.encode_captions(["a cat", "a dog"], guided_stage=True)
    embeds = torch.randn(2, cascade.text_proj.config.clip_embeddings_dim)
    settings = dataclasses.replace(cascade.model_config.stages["decoder"], guidance=4.0)
    batched = cascade.stages["decoder"].denoiser(cascade, embeds, text, settings)
    uncond, cond = halves(batched.denoiser)
    for name in ("encoder_hidden_states", "time_embeds", "attention_mask"):
        rows = getattr(batched.denoiser, name)
        assert torch.equal(torch.cat([getattr(uncond, name), getattr(cond, name)]), rows) and len(rows) == 4
    x, t = torch.randn(2, 3, 64, 64), torch.tensor(500)
    split = ClassifierFreeGuidance(batched.denoiser, 4.0, 3, split=True)
    assert torch.allclose(split(x, t, 0), batched(x, t, 0), atol=1e-4)


def test_channels_last_converts_the_convolutions_and_back(pipe):
    pipe.enable_speedups(Speedups(channels_last=True))
    weight = pipe.decoder.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert pipe.upscaler_vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    pipe.enable_speedups(Speedups(channels_last=False))
    assert pipe.decoder.conv_in.weight.is_contiguous()
    images(pipe, 256)  # a call keeps what was asked for
    assert pipe.decoder.conv_in.weight.is_contiguous() and pipe.super_res_first.conv_in.weight.is_contiguous()


def test_the_default_is_channels_last_on_cpu_only(pipe):
    assert pipe.decoder.conv_in.weight.is_contiguous()  # as loaded
    default = images(pipe, 256)  # each call's plan puts every stage's convolutions in the CPU's faster layout
    for module in (pipe.decoder, pipe.super_res_first, pipe.super_res_last, pipe.upscaler_unet, pipe.upscaler_vae):
        kernels = [p for p in module.parameters() if p.dim() == 4]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)
    pipe.enable_speedups(Speedups(channels_last=True))
    assert torch.equal(images(pipe, 256), default)  # the switch on, bit for bit
    assert memory_format(Speedups(), torch.device("cpu")) == torch.channels_last
    assert memory_format(Speedups(), torch.device("cuda")) == torch.contiguous_format  # no gain measured there
    assert memory_format(Speedups(channels_last=True), torch.device("cuda")) == torch.channels_last


def test_compiled_models_are_used_and_reused(pipe):
    speedups = Speedups(compile=("decoder", "sr256"), **AOT)
    pipe.enable_speedups(speedups)
    compiled = dict(pipe._compiled)
    assert set(compiled) == {"decoder", "super_res_first", "super_res_last"}
    assert pipe.denoising_model("decoder") is compiled["decoder"] and pipe.denoising_model("prior") is pipe.prior
    pipe.enable_speedups(dataclasses.replace(speedups, channels_last=True))  # same compiler: not compiled again
    assert pipe._compiled == compiled
    pipe.enable_speedups(Speedups())
    assert pipe._compiled == {} and pipe.denoising_model("decoder") is pipe.decoder
    pipe.enable_speedups(speedups)  # off and on again: the same compiled models
    assert pipe._compiled == compiled


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_the_vae_decodes_in_the_dtype_asked(pipe, dtype):
    reference = images(pipe, 1024)
    pipe.enable_speedups(Speedups(vae_dtype=dtype))
    out = images(pipe, 1024)
    assert pipe.upscaler_vae.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    difference = (out - reference).abs()
    if dtype == "fp32":  # the default on a float32 cascade
        assert difference.max() < 1e-6
    else:  # bfloat16 keeps 8 bits of mantissa: about a grey level
        assert torch.isfinite(out).all() and 0 < difference.mean() < 1 / 255 and difference.max() < 0.1


def test_vae_tiling_decodes_in_tiles(pipe):
    reference = images(pipe, 1024)
    pipe.enable_speedups(Speedups(vae_tiling=True))
    assert pipe.upscaler_vae.use_tiling
    out = images(pipe, 1024)
    difference = (out - reference).abs()  # the tiles' attention sees less of the picture: pixels move
    assert torch.isfinite(out).all() and 0 < difference.mean() < 0.02
    pipe.enable_speedups(Speedups())
    assert not pipe.upscaler_vae.use_tiling


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(compile=("decoder", "sr512")), "compile: unknown stage 'sr512'; stages: prior, decoder, sr256, sr1024"),
        (dict(vae_dtype="fp16"), "vae_dtype 'fp16' is not one of: fp32, bf16"),
        (dict(compile_mode="fast"), "compile_mode 'fast' is not one of"),
    ],
)
def test_bad_switches_are_named(kwargs, message):
    with pytest.raises(UnclipError, match=message):
        Speedups(**kwargs)


def test_compile_and_offload_are_refused_together(pipe):
    pipe.enable_model_cpu_offload(device="cpu")
    with pytest.raises(UnclipError, match="compile and model CPU offload don't mix"):
        pipe.enable_speedups(Speedups(compile=("decoder",), **AOT))


def test_describe_names_what_differs_from_the_defaults():
    assert Speedups().describe() == "defaults"
    assert Speedups.none().describe() == "host_timesteps=False, channels_last=False"
    described = Speedups(compile=("prior", "decoder"), vae_dtype="bf16", compile_mode="default").describe()
    assert described == "compile=prior+decoder, vae_dtype=bf16, compile_mode=default"
    described = Speedups(compile=("sr1024",), compile_backend="aot_eager", fullgraph=False).describe()
    assert described == "compile=sr1024, compile_backend=aot_eager, fullgraph=False"
    assert Speedups(compile_backend="aot_eager").describe() == "defaults"  # nothing compiled: nothing to say


@pytest.mark.gpu
def test_the_step_loop_never_waits_for_the_gpu(model_yaml):
    """With DDIM at η = 0 (no step noise to copy from the CPU generators) the decoder's loop makes no host
    sync: CUDA's sync debug mode raises on any."""
    pipe = UnCLIPCascade.from_pretrained(model_yaml, torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    text = pipe.encode_captions([PROMPT], guided_stage=True)
    embeds = torch.randn(1, pipe.text_proj.config.clip_embeddings_dim, device="cuda", dtype=torch.float16)
    settings = dataclasses.replace(pipe.model_config.stages["decoder"], scheduler="ddim", steps=4)
    generators = [torch.Generator().manual_seed(0)]
    x_T = torch.randn(1, 3, 64, 64, generator=generators[0]).to("cuda", torch.float16)
    inputs = StageInputs(generators, text=text, decoder_noise=x_T)
    torch.cuda.set_sync_debug_mode("error")
    try:
        pipe.stages["decoder"].run(pipe, embeds, inputs, settings)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    pipe.enable_speedups(Speedups.none())
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError, match="synchroniz"):  # the reference way syncs: the check can fail
            pipe.stages["decoder"].run(pipe, embeds, inputs, settings)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_graphs_keep_the_picture(model_yaml):
    """CUDA graphs replay inductor's kernels: against the same kernels run without graphs (compile_mode default)
    the picture must not move, on the call that records and on the one that replays. (Against eager fp16 it
    does, by inductor's own rounding, amplified by the tiny random cascade: on an H200, 2026-12-04, mean 0.008.)"""
    pipe = UnCLIPCascade.from_pretrained(model_yaml, torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    compiled = ("prior", "decoder", "sr256")
    pipe.enable_speedups(Speedups(compile=compiled, compile_mode="default"))
    reference = images(pipe, 256)
    pipe.enable_speedups(Speedups(compile=compiled))  # reduce-overhead: the same kernels, in CUDA graphs
    for _ in range(2):  # the first call records the graphs, the second replays them
        assert_same_picture(images(pipe, 256), reference)


CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pretrained-configs"


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_every_denoising_model_traces_as_one_graph(size, replica_root):
    """CUDA graphs need each model's forward as one graph: dynamo traces it with fullgraph (any graph break
    raises), on the meta device (no memory, no weights), called as the stages call it. ``full``: the real repos'
    configs, where ../shared has them."""
    if size == "full" and not (CONFIGS / "karlo-v1-alpha").is_dir():
        pytest.skip("the real repos' configs are not beside this checkout")
    pipe = full_size_cascade(replica_root if size == "tiny" else CONFIGS, torch.float16, "meta")

    def meta(*shape, dtype=torch.float16):
        return torch.empty(*shape, device="meta", dtype=dtype)

    t, mask = torch.tensor(500, device="meta"), torch.ones(2, 81, dtype=torch.bool, device="meta")
    embedding, context = pipe.prior.config.embedding_dim, pipe.decoder.config.cross_attention_dim
    text_width = pipe.text_encoder.config.hidden_size
    calls = {
        "prior": lambda f: f(
            meta(2, embedding), timestep=t, proj_embedding=meta(2, embedding),
            encoder_hidden_states=meta(2, 77, text_width), attention_mask=mask[:, :77],
        ).predicted_image_embedding,
        "decoder": lambda f: f(
            sample=meta(2, 3, 64, 64), timestep=t, encoder_hidden_states=meta(2, 81, context),
            class_labels=meta(2, pipe.decoder.config.block_out_channels[0] * 4), attention_mask=mask,
        ).sample,
        "super_res_first": lambda f: f(sample=meta(1, 6, 256, 256), timestep=t).sample,
        "upscaler_unet": lambda f: f(
            meta(2, 7, 256, 256), t, encoder_hidden_states=meta(2, 77, pipe.upscaler_text_encoder.config.hidden_size),
            class_labels=torch.tensor([20, 20], device="meta"),
        ).sample,
    }  # fmt: skip
    for name, call in calls.items():
        module = getattr(pipe, name)
        out = call(torch.compile(module, backend="eager", fullgraph=True, dynamic=False))
        assert out.shape == call(module).shape, name

    def branches_on_data(x):  # what UnCLIPScheduler.step does with device timesteps: a graph break
        return x + 1 if x.sum() > 0 else x - 1

    with pytest.raises(Exception, match="(?i)data-dependent|graph break|unsupported"):  # the check can fail
        torch.compile(branches_on_data, backend="eager", fullgraph=True)(torch.ones(2))
