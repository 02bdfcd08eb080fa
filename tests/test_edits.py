"""DALL·E 2's image manipulations (unclip.edits) on tiny replicas of both Karlo layouts: karlo-v1-alpha with a
CLIP image encoder named in the model YAML, and karlo-v1-alpha-image-variations, which brings its own."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_model_yaml
from PIL import Image

from unclip import UnCLIPCascade
from unclip.cli import main
from unclip.clip_models import load_clip_image_encoder
from unclip.edits import slerp, text_diff_embeddings
from unclip.errors import UnclipError
from unclip.inversion import ddim_invert
from unclip.replicas import tiny_karlo
from unclip.sampling import sample
from unclip.schedulers import make_scheduler

FAST = dict(decoder_num_inference_steps=3, super_res_num_inference_steps=2)


@pytest.fixture(scope="module")
def variations_dir(tmp_path_factory) -> Path:
    return tiny_karlo(tmp_path_factory.mktemp("replicas") / "karlo-v1-alpha-image-variations", image_variations=True)


@pytest.fixture(scope="module")
def variations(variations_dir):
    pipe = UnCLIPCascade.from_pretrained(write_model_yaml(variations_dir.parent / "var.yaml", variations_dir, None))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def karlo_with_clip(karlo_dir, tmp_path_factory):
    """karlo-v1-alpha (text-to-image) plus the CLIP image tower its decoder takes (tiny:32: 32-d like text_proj)."""
    path = write_model_yaml(tmp_path_factory.mktemp("yaml") / "karlo.yaml", karlo_dir, None)
    path.write_text(path.read_text() + "image_encoder: tiny:32\n")
    pipe = UnCLIPCascade.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _same(a, b) -> None:
    """Equal up to float rounding, which the tiny random models amplify in a few pixels at 256 px (see
    test_cascade's batch test): the mean difference and the share of pixels a grey level apart stay tiny."""
    difference = np.abs(np.asarray(a) - np.asarray(b))
    assert difference.mean() < 1e-4 and (difference > 1 / 255).mean() < 1e-3, (difference.mean(), difference.max())


def _picture(colour=(200, 30, 30), size=(80, 60)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.paste((20, 60, 220), (10, 10, 40, 40))
    return image


def _png(tmp_path, name="photo.png", **kw) -> Path:
    path = tmp_path / name
    _picture(**kw).save(path)
    return path


# ------------------------------------------------------------------------------------------------- maths
def test_slerp_ends_norms_and_the_great_circle():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 8, generator=g) * 3, torch.randn(4, 8, generator=g)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    middle = slerp(a, b, 0.5)
    assert torch.allclose(middle.norm(dim=-1), (a.norm(dim=-1) + b.norm(dim=-1)) / 2, atol=1e-5)
    u, v, m = (torch.nn.functional.normalize(x, dim=-1) for x in (a, b, middle))
    assert torch.allclose((u * m).sum(-1), (v * m).sum(-1), atol=1e-5)  # halfway along the arc, by angle
    assert torch.allclose(m, torch.nn.functional.normalize(u + v, dim=-1), atol=1e-5)
    quarter = torch.nn.functional.normalize(slerp(a, b, 0.25), dim=-1)
    omega = torch.arccos((u * v).sum(-1))
    travelled = torch.arccos((u * quarter).sum(-1).clamp(-1, 1))
    assert torch.allclose(travelled, 0.25 * omega, atol=1e-4)  # constant angular speed: a normalised lerp has not
    thetas = torch.tensor([0.0, 0.25, 1.0])
    frames = slerp(a[:1].expand(3, -1), b[:1].expand(3, -1), thetas)
    assert torch.allclose(frames[1], slerp(a[0], b[0], 0.25), atol=1e-5)
    same = slerp(a, a * 2, 0.5)  # parallel: no division by sin 0
    assert torch.isfinite(same).all() and torch.allclose(same, a * 1.5, atol=1e-4)


def test_text_diff_turns_the_image_embedding_towards_the_caption_change():
    g = torch.Generator().manual_seed(1)
    z_i, z_t0, z_t = (torch.randn(16, generator=g) for _ in range(3))
    thetas = torch.linspace(0, 0.5, 5, dtype=torch.float64)
    frames = text_diff_embeddings(z_i * 4, z_t0, z_t, thetas)
    assert torch.allclose(frames[0], z_i * 4, atol=1e-5)
    assert torch.allclose(frames.norm(dim=-1), (z_i * 4).norm().expand(5), atol=1e-4)  # only the direction turns
    z_d = torch.nn.functional.normalize(z_t - z_t0, dim=0)
    towards = torch.nn.functional.cosine_similarity(frames, z_d[None], dim=-1)
    assert (towards.diff() > 0).all()
    angle = torch.arccos(torch.nn.functional.cosine_similarity(z_i, z_d, dim=0)).item()
    assert math.isclose(torch.arccos(towards[-1]).item(), angle * 0.5, abs_tol=1e-4)  # θ of the way along


# ------------------------------------------------------------------------------------------------ layouts
def test_the_image_variations_layout_loads_with_its_own_image_encoder(variations, variations_dir, tmp_path):
    assert variations.prior is None and type(variations.image_encoder).__name__ == "CLIPVisionModelWithProjection"
    assert variations.clip_image_encoder().image_size == 30  # from its feature_extractor, not a default
    with pytest.raises(UnclipError, match="no prior"):
        variations("a red circle", size=64, **FAST)
    variations.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "unclip" / "model_index.json").read_text())
    assert {"image_encoder", "feature_extractor"} <= set(index) and "prior" not in index
    assert index["_class_name"] == "UnCLIPImageVariationPipeline"  # the layout's own pipeline class
    argv = ["generate", "a cat", "--model", str(_var_yaml(variations_dir, tmp_path)), "--out", str(tmp_path / "o")]
    assert main(argv) == 2  # refused before loading, from the folder's model_index.json
    again = UnCLIPCascade.from_pretrained(tmp_path / "saved" / "model.yaml")
    picture = _picture()
    assert torch.equal(again.encode_image(picture), variations.encode_image(picture))


def test_an_image_encoder_folder_in_the_yaml_is_read_relative_to_it(karlo_dir, variations_dir, tmp_path):
    path = write_model_yaml(tmp_path / "m.yaml", karlo_dir, None)
    relative = Path(*[".."] * len(tmp_path.parts[1:])) / variations_dir.relative_to("/") / "image_encoder"
    path.write_text(path.read_text() + f"image_encoder: hf:{relative}\n")
    pipe = UnCLIPCascade.from_pretrained(path)
    assert pipe.model_config.image_encoder == f"hf:{variations_dir / 'image_encoder'}"
    direct = load_clip_image_encoder(f"hf:{variations_dir / 'image_encoder'}")
    assert direct.image_size == 30 and direct.mean == tuple(pipe.clip_image_encoder().mean)


def test_a_model_without_an_image_encoder_says_how_to_add_one(cascade):
    with pytest.raises(UnclipError, match="image_encoder: hf:openai/clip-vit-large-patch14"):
        cascade.vary(_picture(), size=64)


def test_an_image_encoder_of_another_width_is_refused(karlo_dir, tmp_path):
    path = write_model_yaml(tmp_path / "m.yaml", karlo_dir, None)
    path.write_text(path.read_text() + "image_encoder: tiny:16\n")
    with pytest.raises(UnclipError, match="16-d embeddings but the decoder takes 32-d"):
        UnCLIPCascade.from_pretrained(path).vary(_picture(), size=64)


def test_a_variations_repo_whose_image_encoder_does_not_fit_is_refused_before_loading(variations_dir, tmp_path):
    import shutil

    broken = shutil.copytree(variations_dir, tmp_path / "broken")
    config = json.loads((broken / "image_encoder" / "config.json").read_text())
    (broken / "image_encoder" / "config.json").write_text(json.dumps({**config, "projection_dim": 48}))
    with pytest.raises(UnclipError, match="image_encoder projects to 48 dims but text_proj takes 32"):
        UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "b.yaml", broken, None))


# --------------------------------------------------------------------------------------------- variations
@pytest.mark.parametrize("which", ["variations", "karlo_with_clip"])
def test_variations_of_each_image_differ_and_are_reproducible(which, request):
    pipe = request.getfixturevalue(which)
    pictures = [_picture(), _picture(colour=(30, 200, 30))]
    out = pipe.vary(pictures, num_images_per_prompt=2, seed=5, size=256, output_type="np", **FAST)
    assert out.images.shape == (4, 256, 256, 3) and np.isfinite(out.images).all()
    assert [m["seed"] for m in out.metadata] == [5, 6, 7, 8]
    assert {m["edit"] for m in out.metadata} == {"variation"} and "prior" not in out.metadata[0]["stages"]
    assert np.abs(out.images[0] - out.images[1]).mean() > 1e-3  # fresh noise per variation
    again = pipe.vary(pictures[1], num_images_per_prompt=2, seed=7, size=256, output_type="np", **FAST)
    _same(again.images, out.images[2:])  # image k: seed + k, alone or batched


def test_the_prompt_feeds_the_decoder_caption(variations):
    plain = variations.vary(_picture(), seed=0, size=64, output_type="np", **FAST)
    steered = variations.vary(_picture(), prompt="a blue square", seed=0, size=64, output_type="np", **FAST)
    assert steered.metadata[0]["prompt"] == "a blue square"
    assert np.abs(plain.images - steered.images).mean() > 1e-4


def test_ddim_inversion_recovers_the_noise_of_a_ddim_sample(variations):
    """For data ~ N(μ, σ² I) the optimal ε is known in closed form, ε(x_t) = √(1−ᾱ)(x_t − √ᾱ μ) / (ᾱσ² + 1 − ᾱ),
    and the DDIM ODE is smooth: sampling x_0 from x_T (η = 0) and inverting x_0 must give x_T back, all the way
    to T or to a start, up to the step error. (Random tiny decoders have no such ODE: their x̂_0 explodes.)"""
    scheduler = make_scheduler("ddim", variations.decoder_scheduler)
    scheduler.register_to_config(clip_sample=False)  # the ODE itself: clipping x̂_0 is not invertible
    alphas = scheduler.alphas_cumprod.double()
    mu, var = 0.3, 0.25

    def optimal(x, t, i):
        a = alphas[int(t)]
        return ((1 - a).sqrt() * (x.double() - a.sqrt() * mu) / (a * var + 1 - a)).float()

    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (50, 200):  # DDIM inversion's ε(x_s) ≈ ε(x_t) is first order: 4× the steps, ~¼ the error
        x_0 = sample(optimal, scheduler, x_T, steps, [torch.Generator()])
        assert (x_0 - mu).std() < 0.7  # a sample of the data, not of the noise
        errors[steps] = (ddim_invert(optimal, scheduler, x_0, steps) - x_T).abs().mean()
        back = sample(optimal, scheduler, ddim_invert(optimal, scheduler, x_0, steps), steps, [torch.Generator()])
        assert (back - x_0).abs().mean() < 1.5 / steps
    assert errors[50] < 0.06 and errors[200] < errors[50] / 3
    x_0 = sample(optimal, scheduler, x_T, 50, [torch.Generator()])
    x_s = ddim_invert(optimal, scheduler, x_0, 50, start=600)  # stops at the last timestep ≤ 600
    back = sample(optimal, scheduler, x_s, 50, [torch.Generator()], start=600)
    assert (back - x_0).abs().mean() < 1.5 / 50 and (x_s - x_0).abs().mean() > 0.1  # x_s is noised
    wrong = ddim_invert(lambda x, t, i: optimal(x, t, i) * 1.2, scheduler, x_0, 50)  # it can fail
    assert (wrong - x_T).abs().mean() > 0.05
    with pytest.raises(UnclipError, match="below every one of its 50 DDIM timesteps"):
        ddim_invert(optimal, scheduler, x_0, 50, start=5)


def test_inverted_variations_are_recorded_and_eta_controls_the_spread(variations):
    kwargs = dict(invert=True, seed=0, size=64, output_type="np", decoder_num_inference_steps=10)
    close = variations.vary(_picture(), eta=0.0, num_images_per_prompt=2, **kwargs)
    far = variations.vary(_picture(), eta=1.0, num_images_per_prompt=2, **kwargs)
    meta = close.metadata[0]
    assert meta["invert"] is True and meta["stages"]["decoder"]["eta"] == 0.0
    assert meta["stages"]["decoder"]["scheduler"] == "ddim" and far.metadata[0]["stages"]["decoder"]["eta"] == 1.0
    assert meta["stages"]["decoder"]["guidance"] == 1.0  # inverted edits run unguided unless asked
    guided = variations.vary(_picture(), eta=0.0, decoder_guidance_scale=5.0, **kwargs)
    assert guided.metadata[0]["stages"]["decoder"]["guidance"] == 5.0
    assert np.abs(guided.images[0] - close.images[0]).mean() > 1e-3
    np.testing.assert_allclose(close.images[0], close.images[1], atol=1e-5)  # η = 0: deterministic
    assert np.abs(far.images[0] - far.images[1]).mean() > np.abs(close.images[0] - close.images[1]).mean() + 1e-3
    with pytest.raises(UnclipError, match="eta must be in"):
        variations.vary(_picture(), invert=True, eta=1.5, size=64)


# ---------------------------------------------------------------------------------- interpolation, diffs
def test_interpolation_ends_are_the_variations_of_its_ends(karlo_with_clip):
    a, b = _picture(), _picture(colour=(240, 240, 20))
    out = karlo_with_clip.interpolate(a, b, frames=4, seed=3, size=64, output_type="np", **FAST)
    assert [m["theta"] for m in out.metadata] == [0.0, 0.3333, 0.6667, 1.0]
    assert {m["seed"] for m in out.metadata} == {3}
    ends = [karlo_with_clip.vary(x, seed=3, size=64, output_type="np", **FAST).images[0] for x in (a, b)]
    _same(out.images[0], ends[0])
    _same(out.images[-1], ends[1])
    steps = [np.abs(out.images[k + 1] - out.images[k]).mean() for k in range(3)]
    assert min(steps) > 0


def test_interpolation_holds_the_noise_fixed_and_takes_prompts(karlo_with_clip, variations):
    same = karlo_with_clip.interpolate(_picture(), _picture(), frames=3, seed=1, size=64, output_type="np", **FAST)
    _same(same.images[0], same.images[2])  # one embedding, one noise
    mixed = karlo_with_clip.interpolate(
        "a red circle", _picture(), frames=2, seed=1, size=64, output_type="np", prior_num_inference_steps=2, **FAST
    )
    assert mixed.metadata[0]["from"] == "a red circle" and "prior" in mixed.metadata[0]["stages"]
    with pytest.raises(UnclipError, match="no prior"):  # a prompt end needs a prior: the variations layout has none
        variations.interpolate("a cat", _picture(), frames=2, size=64)


def test_text_diff_frames_start_at_the_image(variations):
    picture = _picture()
    kwargs = dict(frames=3, max_theta=0.4, size=64, output_type="np", decoder_num_inference_steps=10)
    out = variations.text_diff(picture, "a red square", "a green square", invert=True, seed=0, **kwargs)
    assert [m["theta"] for m in out.metadata] == [0.0, 0.2, 0.4] and out.metadata[0]["edit"] == "text_diff"
    reconstruction = variations.vary(
        picture, invert=True, eta=0.0, seed=0, size=64, output_type="np", decoder_num_inference_steps=10
    )
    # the same up to rounding, which a random decoder's inverted noise (values ~10⁴) amplifies: far below the
    # change the text diff makes
    change = np.abs(out.images[2] - out.images[0]).mean()
    assert np.abs(out.images[0] - reconstruction.images[0]).mean() < min(2e-3, change / 10)
    assert change > np.abs(out.images[1] - out.images[0]).mean() > 0
    free = variations.text_diff(picture, "a red square", "a green square", invert=False, seed=0, **kwargs)
    plain = variations.vary(picture, seed=0, size=64, output_type="np", decoder_num_inference_steps=10)
    _same(free.images[0], plain.images[0])
    with pytest.raises(UnclipError, match="max_theta must be in"):
        variations.text_diff(picture, "a", "b", max_theta=0)
    with pytest.raises(UnclipError, match="to_prompt is empty"):
        variations.text_diff(picture, "a", " ")


def test_an_embedding_without_a_direction_is_refused_before_any_stage_runs(variations, monkeypatch):
    """slerp and the text diff divide by the embeddings' norms: a zero or non-finite one would make NaN frames
    and then blame the decoder ("produced NaN ... run it in float32"). It is refused, named, up front."""
    picture = _picture()
    with pytest.raises(UnclipError, match="from_prompt and to_prompt have the same CLIP embedding"):
        variations.text_diff(picture, "a red square", "a red square", frames=2, size=64)
    ran = []
    monkeypatch.setattr(variations, "decode", lambda *args: ran.append(1))
    real = variations.encode_image
    monkeypatch.setattr(variations, "encode_image", lambda image: real(image) * 0)
    with pytest.raises(UnclipError, match="interpolation end image: a CLIP embedding of zero length"):
        variations.interpolate(picture, _picture(colour=(0, 250, 0)), frames=2, size=64)
    with pytest.raises(UnclipError, match="image encoder: a CLIP embedding of zero length"):
        variations.text_diff(picture, "a red square", "a blue square", frames=2, size=64)
    monkeypatch.setattr(variations, "encode_image", lambda image: real(image) * float("nan"))
    with pytest.raises(UnclipError, match="stage interpolation end image produced NaN"):
        variations.interpolate(picture, _picture(colour=(0, 250, 0)), frames=2, size=64)
    assert not ran


# ---------------------------------------------------------------------------------------------------- CLI
def _var_yaml(variations_dir, tmp_path) -> Path:
    return write_model_yaml(
        tmp_path / "var.yaml", variations_dir, None, decoder={"steps": 3, "guidance": 2.0}, sr256={"steps": 2}
    )


def test_cli_vary_interpolate_and_diff_write_their_frames(variations_dir, tmp_path, capsys):
    model, photo = _var_yaml(variations_dir, tmp_path), _png(tmp_path)
    other = _png(tmp_path, "other.png", colour=(20, 200, 20))
    out = tmp_path / "out"
    common = ["--model", str(model), "--out", str(out), "--quiet"]
    assert main(["vary", str(photo), "--num-images", "2", "--size", "64", *common]) == 0
    assert main(["vary", str(photo), "--invert", "--eta", "0.2", "--invert-start", "600", *common]) == 0
    assert main(["interpolate", str(photo), str(other), "--frames", "3", "--gif", "--size", "64", *common]) == 0
    assert main(["diff", str(photo), "--from", "a red", "--to", "a green", "--frames", "2", "--gif", *common]) == 0
    printed = capsys.readouterr().out.split()
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2 + 1 + 3 + 2 and len(list(out.glob("*.gif"))) == 2
    assert all(str(p) in printed for p in pngs)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [m["edit"] for m in lines] == ["variation"] * 3 + ["interpolation"] * 3 + ["text_diff"] * 2
    assert lines[2]["stages"]["decoder"]["start"] == 600 and lines[2]["invert"] is True
    assert lines[3]["from"] == str(photo) and Image.open(pngs[-1]).size == (256, 256)
    gif = Image.open(sorted(out.glob("*.gif"))[0])
    assert gif.n_frames == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["vary", "missing.png"], "image missing.png does not exist"),
        (["interpolate", "missing.png", "a red circle"], "a prompt does not end in .png"),
        (["diff", "{photo}", "--from", "a", "--to", "b", "--max-theta", "1.5"], "--max-theta must be in"),
        (["vary", "{photo}", "--invert", "--eta", "2"], "argument --eta: must be in [0, 1], got 2.0"),
        (["vary", "{photo}", "--prior-samples", "2"], "--prior-samples): this call starts from an image embedding"),
        (
            ["diff", "{photo}", "--from", "a", "--to", "b", "--prior-steps", "5"],
            "--prior-steps): this call starts from an image embedding, so no prior runs",
        ),
        (["vary", "{photo}", "--invert", "--invert-start", "3"], "below every one of its"),
        (["vary", "{photo}", "--model", "{karlo}"], "has no CLIP image encoder"),
    ],
)
def test_cli_edit_mistakes_are_one_line(argv, message, variations_dir, karlo_dir, tmp_path, capsys):
    photo = _png(tmp_path)
    karlo = write_model_yaml(tmp_path / "karlo.yaml", karlo_dir, None)
    argv = [a.format(photo=photo, karlo=karlo) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(_var_yaml(variations_dir, tmp_path))]
    with pytest.raises(SystemExit) as exit_info:  # argparse exits itself; main returns 2 after an UnclipError
        raise SystemExit(main([*argv, "--out", str(tmp_path / "o"), "--size", "64", "--quiet"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("o/*.png"))
