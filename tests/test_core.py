"""The pure core, without a model: the sampling loop, guidance, the scheduler registry, the settings table and
its names, and the resolution of a request into a plan."""

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UnCLIPScheduler

from unclip.config import ModelConfig, karlo_defaults
from unclip.errors import UnclipError
from unclip.guidance import ClassifierFreeGuidance, guided, uses_guidance
from unclip.plan import KEYWORDS, LABELS, NAMES, check_keep, check_size, resolve
from unclip.sampling import first_step, image_generators, sample
from unclip.schedulers import SCHEDULERS, KarloDDPMScheduler, make_scheduler, uses_learned_variance
from unclip.settings import SETTINGS, StageSettings
from unclip.stages import KINDS, STAGES, defaults, first_of, offload_order, settings_of

KARLO = UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon")
X4 = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", beta_start=0.0001, beta_end=0.02)


# ------------------------------------------------------------------------------------ the sampling loop
def _x0_scheduler():
    """DDIM over Karlo's schedule that reads the model output as x_0 (prediction_type "sample")."""
    return make_scheduler("ddim", UnCLIPScheduler(prediction_type="sample", clip_sample=False))


def test_a_denoiser_that_knows_x0_is_sampled_to_x0():
    target = torch.linspace(-0.5, 0.5, 12).reshape(1, 3, 2, 2)
    generators = [torch.Generator().manual_seed(0)]
    x_T = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    out = sample(lambda x, t, i: target.expand_as(x), _x0_scheduler(), x_T, 5, generators)
    assert torch.allclose(out, target, atol=1e-5)
    wrong = sample(lambda x, t, i: -target.expand_as(x), _x0_scheduler(), x_T, 5, generators)
    assert not torch.allclose(wrong, target, atol=1e-2)


def test_the_loop_gives_each_step_its_index_and_timestep_and_start_skips_the_early_ones():
    seen = []

    def denoiser(x, t, i):
        seen.append((i, int(t)))
        return torch.zeros_like(x)

    scheduler = _x0_scheduler()
    x_T = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    sample(denoiser, scheduler, x_T, 5, [torch.Generator()])
    full = list(seen)
    assert [i for i, _ in full] == [0, 1, 2, 3, 4] and [t for _, t in full] == scheduler.timesteps.tolist()
    seen.clear()
    sample(denoiser, _x0_scheduler(), x_T, 5, [torch.Generator()], init=torch.zeros_like(x_T), start=500)
    assert seen == [(i, t) for i, t in full if t <= 500], "SDEdit runs only the steps at t ≤ start, at their index"


@pytest.mark.parametrize("name", ["default", "ddpm"])
def test_quiet_steps_give_the_last_noisy_steps_the_posterior_variance(name):
    """The steps that add noise are those at t > 0 (UnCLIP's and ddpm's last step, t = 0, adds none): the last N of
    them get v = −1 in place of the model's variance channels (learned_range: β̃); the others the model's own."""
    scheduler = make_scheduler(name, KARLO)
    given = []
    step = scheduler.step
    scheduler.step = lambda out, t, x, **kw: given.append((int(t), out[:, 3:].clone())) or step(out, t, x, **kw)
    x_T = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    sample(lambda x, t, i: torch.full((1, 6, 2, 2), 0.5), scheduler, x_T, 6, [torch.Generator()], quiet_steps=2)
    assert [t for t, _ in given] == scheduler.timesteps.tolist() and given[-1][0] == 0
    quiet = [t for t, v in given if torch.equal(v, -torch.ones_like(v))]
    assert quiet == [t for t, _ in given[-3:-1]]  # the last two before t = 0
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for t, v in given if t not in quiet)


def test_host_and_device_timesteps_give_the_same_sample():
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))

    def run(host):
        generators = [torch.Generator().manual_seed(k) for k in range(2)]
        denoiser = lambda x, t, i: torch.cat([0.1 * x, torch.zeros_like(x)], dim=1)  # noqa: E731 (ε, variance)
        return sample(denoiser, make_scheduler("default", KARLO), x_T, 4, generators, host_timesteps=host)

    assert torch.equal(run(True), run(False))


def test_a_start_below_every_timestep_names_them():
    with pytest.raises(UnclipError, match=r"sr256: start 3 is below every one of its 2 timesteps \(999, 499\)"):
        first_step(torch.tensor([999, 499]), 3, 2, "sr256")
    assert first_step(torch.tensor([999, 499, 0]), 600, 3) == 1


def test_image_generators_are_one_per_image_from_the_seed():
    generators, seeds = image_generators(7, None, 3)
    assert seeds == [7, 8, 9] and [g.initial_seed() for g in generators] == [7, 8, 9]
    with pytest.raises(UnclipError, match="seed must be a whole number"):
        image_generators(-1, None, 1)
    with pytest.raises(UnclipError, match="got 1 generators for 2 images"):
        image_generators(None, [torch.Generator()], 2)


# --------------------------------------------------------------------------------------------- guidance
def _conditional_denoiser(x, t, i):
    """Rows 0..B-1 are unconditional (output 1), B..2B-1 conditional (output 3); channel 3 is a 'variance'."""
    half = x.shape[0] // 2
    out = torch.cat([torch.full_like(x[:half], 1.0), torch.full_like(x[half:], 3.0)])
    return torch.cat([out, out[:, :1] * 10], dim=1)


def test_guidance_is_uncond_plus_scale_times_the_difference_on_the_guided_channels():
    x = torch.zeros(2, 3, 2, 2)
    out = ClassifierFreeGuidance(_conditional_denoiser, 4.0, guided_channels=3)(x, torch.tensor(5), 0)
    assert out.shape == (2, 4, 2, 2)
    assert torch.all(out[:, :3] == 1 + 4 * (3 - 1)), "ε̃ = ε(∅) + s (ε(c) − ε(∅)) (Ho & Salimans eq. 6)"
    assert torch.all(out[:, 3] == 30), "the learned variance comes from the conditional half"


def test_split_guidance_equals_batched_and_scale_one_is_the_plain_denoiser():
    from unclip.stages.pixel import ConcatDenoiser

    unet = lambda sample, timestep: type("O", (), {"sample": sample[:, :3] * 2 + sample[:, 3:]})  # noqa: E731
    denoiser = ConcatDenoiser(unet, torch.cat([torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)]))
    x = torch.randn(1, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    batched = guided(denoiser, 3.0)(x, torch.tensor(1), 0)
    split = guided(denoiser, 3.0, split=True)(x, torch.tensor(1), 0)
    assert torch.allclose(batched, split) and torch.allclose(batched, 2 * x + 3.0)
    assert guided(denoiser, 1.0) is denoiser and not uses_guidance(1.0) and uses_guidance(1.5)


# ------------------------------------------------------------------------------------- the schedulers
@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_keeps_the_stage_s_noise_schedule_and_prediction(name):
    scheduler = make_scheduler(name, KARLO)
    reference = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(scheduler.alphas_cumprod, reference.alphas_cumprod)
    assert scheduler.config.prediction_type == "epsilon"
    expected = {"default": UnCLIPScheduler, "unclip": UnCLIPScheduler, "ddpm": KarloDDPMScheduler,
                "ddim": DDIMScheduler, "dpmpp": DPMSolverMultistepScheduler}  # fmt: skip
    assert type(scheduler) is expected[name]
    assert uses_learned_variance(scheduler) == (name in ("default", "unclip", "ddpm"))


def test_ddpm_over_karlo_s_stages_takes_unclip_s_steps_and_adds_no_noise_at_the_last():
    """Before, its timesteps ended at t = 39 (diffusers' "trailing") and the last step added noise of the learned
    variance: speckle. Now the same steps as UnCLIPScheduler, each the same x_{t-1} from the same draw."""
    unclip, ddpm = make_scheduler("default", KARLO), make_scheduler("ddpm", KARLO)
    unclip.set_timesteps(25)
    ddpm.set_timesteps(25)
    assert ddpm.timesteps.tolist() == unclip.timesteps.tolist() and ddpm.timesteps[-1] == 0
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g).clamp(-1, 1)
    steps = unclip.timesteps.tolist()
    for i in (0, 12, 23, 24):
        following = steps[i + 1] if i + 1 < len(steps) else None
        a = unclip.step(out, steps[i], x, prev_timestep=following, generator=torch.Generator().manual_seed(1))
        b = ddpm.step(out, steps[i], x, generator=torch.Generator().manual_seed(1))
        assert torch.allclose(a.prev_sample, b.prev_sample, atol=1e-3), steps[i]
    last = [ddpm.step(out, 0, x, generator=torch.Generator().manual_seed(s)).prev_sample for s in (1, 2)]
    assert torch.equal(*last)  # no draw at t = 0
    x4 = make_scheduler("ddpm", X4)
    assert type(x4) is DDPMScheduler  # the x4's own spacing: it was trained with scaled_linear, not Karlo's


def test_schedulers_over_the_x4_stage_keep_v_prediction_and_unclip_is_refused():
    for name in ("default", "ddpm", "ddim", "dpmpp"):
        scheduler = make_scheduler(name, X4)
        assert scheduler.config.prediction_type == "v_prediction"
        assert torch.allclose(scheduler.alphas_cumprod, X4.alphas_cumprod)
    with pytest.raises(UnclipError, match="needs the squaredcos_cap_v2 schedule"):
        make_scheduler("unclip", X4)
    with pytest.raises(UnclipError, match="unknown scheduler 'euler'"):
        make_scheduler("euler", X4)


# ------------------------------------------------------------------------- the settings table and names
def test_every_stage_setting_pair_has_its_names_and_they_are_unique():
    expected = [(stage, s) for stage in STAGES for s in settings_of(stage)]
    assert [(n.stage, n.setting) for n in NAMES] == expected
    assert len({n.keyword for n in NAMES}) == len(NAMES)
    flags = [f for n in NAMES for f in n.flags]
    assert len(set(flags)) == len(flags)
    assert len(set(LABELS.values())) == len(LABELS)
    # diffusers' names where they exist, and the CLI's established flags
    assert KEYWORDS["decoder_num_inference_steps"].flags[0] == "--decoder-steps"
    assert KEYWORDS["super_res_num_inference_steps"].flags[0] == "--sr-steps"
    assert "--noise-level" in KEYWORDS["upscale_noise_level"].flags
    assert "--invert-start" in KEYWORDS["decoder_start"].flags
    assert {"prior_eta", "decoder_eta", "super_res_eta", "upscale_eta"} <= set(KEYWORDS)
    assert LABELS["decoder", "steps"] == "Steps" and LABELS["prior", "guidance"] == "Prior CFG scale"


def test_the_table_checks_each_value_once():
    assert SETTINGS["steps"].problem(0) and SETTINGS["steps"].problem(2.5) and not SETTINGS["steps"].problem(3)
    assert SETTINGS["eta"].problem(1.5) and SETTINGS["eta"].problem(float("nan")) and not SETTINGS["eta"].problem(1)
    assert SETTINGS["guidance"].problem(-1) and not SETTINGS["guidance"].problem(0)
    assert SETTINGS["scheduler"].problem("euler") and not SETTINGS["scheduler"].problem("dpmpp")
    assert StageSettings(steps=3, eta=2.0).problem() == "eta must be in [0, 1], got 2.0"


def test_the_registry_describes_every_kind():
    assert STAGES == ("prior", "decoder", "sr256", "sr1024")
    assert {kind.name for kind in KINDS.values()} == set(STAGES)
    for kind in KINDS.values():
        assert set(kind.models) <= set(kind.components) and set(kind.conv_models) <= set(kind.components)
        assert set(kind.settings) <= set(SETTINGS) and kind.defaults.problem() is None
    order = offload_order().split("->")
    assert order[:2] == ["image_encoder", "text_encoder"]
    assert all(name in order for kind in KINDS.values() for name in kind.components)
    assert defaults() == karlo_defaults() and defaults()["sr1024"] == KINDS["x4"].defaults


# -------------------------------------------------------------------------------------------- resolution
CONFIG = ModelConfig(unclip="karlo", upscaler="x4")


def test_resolve_applies_keywords_over_the_model_config_and_picks_the_stages():
    plan = resolve(CONFIG, size=256, stage_args={"decoder_num_inference_steps": 9, "prior_guidance_scale": None})
    assert plan.stages == ("prior", "decoder", "sr256") and plan.size == 256
    assert plan.settings["decoder"].steps == 9 and plan.settings["prior"] == CONFIG.stages["prior"]
    assert resolve(CONFIG).stages == STAGES and resolve(CONFIG, size=64).stages == ("prior", "decoder")
    assert resolve(CONFIG, first_stage="decoder", size=64).stages == ("decoder",)
    plan = resolve(CONFIG, scheduler={"sr1024": "dpmpp"}, stage_args={"upscale_eta": 0.5})
    assert plan.settings["sr1024"].scheduler == "dpmpp" and plan.settings["prior"].scheduler == "default"
    assert plan.settings["sr1024"].eta == 0.5
    assert plan.metadata()["decoder"] == {n: getattr(CONFIG.stages["decoder"], n) for n in settings_of("decoder")}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(size=512), "size must be one of 64, 256 or 1024, got 512"),
        (dict(stage_args={"decoder_steps": 3}), "unknown argument 'decoder_steps'; per-stage arguments: prior_num"),
        (dict(stage_args={"decoder_num_inference_steps": 0}), "decoder steps must be a whole number ≥ 1, got 0"),
        (dict(stage_args={"super_res_eta": 2}), r"sr256 eta must be in \[0, 1\], got 2"),
        (dict(scheduler={"sr512": "ddim"}), "unknown stage 'sr512' in scheduler"),
        (dict(scheduler="euler"), "unknown scheduler 'euler'; choose one of: default, unclip"),
        (dict(stage_args={"decoder_start": 500}), r"decoder_start \(--decoder-start\): the decoder's start is where"),
        (dict(first_stage="decoder", stage_args={"prior_num_inference_steps": 5}), "so no prior runs"),
    ],
)
def test_resolve_refuses_with_one_line_naming_the_setting(kwargs, message):
    with pytest.raises(UnclipError, match=message):
        resolve(CONFIG, **kwargs)


def test_a_setting_the_model_s_kind_does_not_take_is_refused_once_the_kinds_are_known():
    kinds = {stage: first_of(stage) for stage in STAGES} | {"sr1024": KINDS["pixel"]}
    assert resolve(CONFIG, stage_args={"upscale_guidance_scale": 3.0}).settings["sr1024"].guidance == 3.0
    with pytest.raises(UnclipError, match=r"this model's sr1024 \(pixel\) takes no guidance"):
        resolve(CONFIG, stage_args={"upscale_guidance_scale": 3.0}, kinds=kinds)
    no_upscaler = {stage: first_of(stage) for stage in ("prior", "decoder", "sr256")}
    with pytest.raises(UnclipError, match="size 1024 needs an upscaler"):
        resolve(CONFIG, size=1024, kinds=no_upscaler)


def test_size_and_rerank_checks():
    assert check_size(None, 256) == 256 and check_size(64, 1024) == 64
    with pytest.raises(UnclipError, match="ends at 256"):
        check_size(1024, 256)
    assert check_keep(None, True, 3) == 1 and check_keep(None, False, 3) is None
    with pytest.raises(UnclipError, match=r"keep \(--keep\) needs rerank"):
        check_keep(2, False, 3)
    with pytest.raises(UnclipError, match="keep 4 > num_images_per_prompt 3"):
        check_keep(4, True, 3)


def test_stage_settings_stay_a_plain_dataclass():
    s = dataclasses.replace(karlo_defaults()["decoder"], eta=0.3)
    assert dataclasses.asdict(s)["eta"] == 0.3 and StageSettings(5).guidance == 1.0


def test_the_prior_s_best_of_n_is_a_setting_a_model_config_sets():
    from unclip.config import load_model_config, model_config_from_dict

    assert load_model_config("demo").stages["prior"].samples == 2  # the demo samples as DALL·E 2 does
    assert resolve(CONFIG).settings["prior"].samples == 1  # Karlo's presets: one draw
    plan = resolve(CONFIG, stage_args={"prior_samples": 3})
    assert plan.settings["prior"].samples == 3 and plan.metadata()["prior"]["samples"] == 3
    assert KEYWORDS["prior_samples"].flags == ("--prior-samples",) and LABELS[("prior", "samples")] == "Prior samples"
    config = model_config_from_dict({"unclip": "karlo", "prior": {"samples": 4}})
    assert config.stages["prior"].samples == 4 and config.stages["decoder"].samples == 1
    with pytest.raises(UnclipError, match="prior samples must be a whole number ≥ 1, got 0"):
        model_config_from_dict({"unclip": "karlo", "prior": {"samples": 0}})
    with pytest.raises(UnclipError, match="unknown key decoder.samples"):  # only the prior draws z_i
        model_config_from_dict({"unclip": "karlo", "decoder": {"samples": 2}})
