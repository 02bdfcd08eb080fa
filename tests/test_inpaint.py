"""Inpainting and outpainting (issue 18): masks, RePaint in the one loop, every stage, the CLI, and the demo."""

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import write_model_yaml
from PIL import Image

from unclip.cli import main
from unclip.errors import UnclipError
from unclip.masks import parse_pad, read_canvas, read_mask
from unclip.repaint import KnownRegion, composite, feather

FAST = {"prior_num_inference_steps": 2, "decoder_num_inference_steps": 3, "super_res_num_inference_steps": 2,
        "upscale_num_inference_steps": 2}  # fmt: skip
PROMPT = "a large yellow circle in the bottom right on a blue background"


def _picture(size: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _quadrant(size: int) -> np.ndarray:
    """White (repaint) in the bottom-right quadrant."""
    mask = np.zeros((size, size), np.uint8)
    mask[size // 2 :, size // 2 :] = 255
    return mask


# ------------------------------------------------------------------------------------------------- masks
def test_masks_white_black_and_rgba_transparency(tmp_path):
    Image.fromarray(_quadrant(8)).save(tmp_path / "grey.png")
    rgba = np.full((8, 8, 4), 255, np.uint8)
    rgba[4:, 4:, 3] = 0  # OpenAI's form: transparent = repaint
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    opaque = rgba.copy()
    opaque[..., 3] = 255
    opaque[..., :3] = _quadrant(8)[..., None]  # an opaque RGBA mask is read by its grey level
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    expected = torch.from_numpy(_quadrant(8) > 0)[None]
    for name in ("grey.png", "rgba.png", "opaque.png"):
        assert torch.equal(read_mask(tmp_path / name), expected), name
    assert torch.equal(read_mask(_quadrant(8) / 255.0), expected)
    # without a mask, the image's own transparent pixels are the region
    Image.fromarray(rgba).save(tmp_path / "photo-with-hole.png")
    assert torch.equal(read_canvas(tmp_path / "photo-with-hole.png").mask, expected)


def test_outpainting_canvas_and_pad():
    picture = _picture(6)
    pixels = torch.from_numpy(np.asarray(picture, np.float32) / 255).permute(2, 0, 1)
    canvas = read_canvas(picture, pad="1,2,3,2")
    assert canvas.rgb.shape == (3, 10, 10) and canvas.kind == "outpaint" and canvas.pad == (1, 2, 3, 2)
    assert torch.equal(canvas.rgb[:, 2:8, 1:7], pixels)  # the picture, where it was put
    assert torch.equal(canvas.rgb[:, 2:8, 0], pixels[:, :, 0])  # the border starts as its edge, stretched
    expected = torch.ones(1, 10, 10, dtype=torch.bool)
    expected[:, 2:8, 1:7] = False
    assert torch.equal(canvas.mask, expected) and canvas.fraction == pytest.approx(0.64)
    assert parse_pad(32) == parse_pad("32") == (32, 32, 32, 32) and parse_pad([0, 0, 8, 0]) == (0, 0, 8, 0)
    # a mask and a border: the mask's region and the border are both repainted
    both = read_canvas(picture, _quadrant(6), pad=2)
    assert both.mask[0, 2:8, 2:8].equal(torch.from_numpy(_quadrant(6) > 0)) and both.mask[0, 0].all()
    described = canvas.describe()
    assert described["edit"] == "outpaint" and described["pad"] == [1, 2, 3, 2] and len(described["mask_sha256"]) == 16
    assert read_canvas(picture, pad=1).describe()["mask_sha256"] != described["mask_sha256"]


# ------------------------------------------------------------------------------------------------ RePaint
def test_feather_is_zero_outside_the_mask_and_one_inside():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    weight = feather(mask, 3)
    assert torch.equal(weight[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert weight[0, 0, 4, 8] == pytest.approx(1 / 3) and weight[0, 0, 5, 8] == pytest.approx(2 / 3)
    assert torch.equal(weight[..., 6:10, 6:10], torch.ones(1, 1, 4, 4))
    whole = torch.ones(1, 1, 8, 8)  # the picture's border is no edge of the mask
    assert torch.equal(feather(whole, 4), whole)
    source, generated = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    mixed = composite(generated, source, mask, 3)
    assert torch.equal(mixed[:, :, mask[0, 0] == 0], source.expand(2, -1, -1, -1)[:, :, mask[0, 0] == 0])
    assert torch.equal(mixed[..., 6:10, 6:10], generated[..., 6:10, 6:10])


def test_known_region_is_the_source_noised_to_the_next_step():
    """Eq. 8: the known region at ᾱ is √ᾱ x_0 + √(1 − ᾱ) ε (its noise drawn from its own generators); at the end,
    x_0 itself. Eq. 9: a jump back scales by √(ᾱ_t / ᾱ_{t−1})."""
    source = torch.full((1, 3, 8, 8), 0.5)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    region = KnownRegion(source, mask, [torch.Generator().manual_seed(0)])
    x = torch.full((1, 3, 8, 8), 7.0)
    noisy = region.replace(x, 0.25)
    noise = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[..., :4], x[..., :4])
    assert torch.allclose(noisy[..., 4:], (0.5 * 0.5 + 0.75**0.5 * noise)[..., 4:])
    assert torch.equal(region.replace(x, None)[..., 4:], source[..., 4:])
    back = KnownRegion(source, mask, [torch.Generator().manual_seed(0)]).jump_back(x, 0.2, 0.8)
    assert torch.allclose(back, 0.5 * x + 0.75**0.5 * noise)


def test_bad_edit_inputs_are_one_line_errors(tmp_path):
    _picture(8).save(tmp_path / "photo.png")
    Image.fromarray(_quadrant(16)).save(tmp_path / "big-mask.png")
    (tmp_path / "not-an-image.png").write_text("hello")
    cases = [
        (
            lambda: read_canvas(tmp_path / "photo.png", tmp_path / "big-mask.png"),
            "the mask is 16×16 but the image is 8×8",
        ),
        (lambda: read_canvas(tmp_path / "not-an-image.png", _quadrant(8)), "cannot be read as an image"),
        (lambda: read_canvas(tmp_path / "missing.png", _quadrant(8)), "does not exist"),
        (lambda: read_canvas(tmp_path / "photo.png"), "nothing to repaint: give a mask"),
        (lambda: read_canvas(Image.new("RGB", (8, 6)), np.ones((6, 8))), "8×6, not square"),
        (lambda: read_canvas(_picture(8), pad=(4, 0, 0, 0)), "12×8, not square: change --pad"),
        (lambda: parse_pad("1,2"), "give PIXELS or LEFT,TOP,RIGHT,BOTTOM"),
        (lambda: parse_pad("0"), "give PIXELS"),
        (lambda: parse_pad("a"), "give PIXELS"),
    ]
    for call, message in cases:
        with pytest.raises(UnclipError, match=message.replace("(", r"\(")) as caught:
            call()
        assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------------------- the whole cascade
def _record_stages(monkeypatch) -> list:
    """Every stage's (name, known region, output) as it samples through the one loop."""
    import unclip.stages.base as base

    calls, real = [], base.sample

    def recording(*args, **kwargs):
        x = real(*args, **kwargs)
        calls.append((kwargs["desc"], kwargs.get("known"), x))
        return x

    monkeypatch.setattr(base, "sample", recording)
    return calls


def test_every_stage_keeps_the_known_region_and_the_picture_keeps_its_pixels(cascade, monkeypatch):
    """Each stage after the prior samples with the mask at its own resolution (the x4 upscaler in its latents) and
    ends on the source there; the final picture is the source's pixels exactly outside the mask."""
    calls = _record_stages(monkeypatch)
    picture, mask = _picture(1024), _quadrant(1024)
    out = cascade.edit(picture, mask, "a cat", seed=0, size=1024, num_images_per_prompt=2, **FAST)
    assert [name for name, _, _ in calls] == ["prior", "decoder", "sr256", "sr1024"]
    sizes = {"decoder": 64, "sr256": 256, "sr1024": 256}  # sr1024: the x4 upscaler's 256² latents
    for name, known, x in calls[1:]:
        assert known is not None, f"{name} ignored the mask"
        assert known.mask.shape == (2, 1, sizes[name], sizes[name]) and x.shape[-1] == sizes[name]
        keep = (known.mask == 0).expand_as(x)
        assert 0.6 < keep.float().mean() < 0.8  # about three quarters kept
        assert torch.equal(x[keep], known.source.expand_as(x)[keep]), name
    for image in out.images:
        kept = _quadrant(1024) == 0
        assert np.array_equal(np.asarray(image)[kept], np.asarray(picture)[kept])
        assert not np.array_equal(np.asarray(image)[~kept], np.asarray(picture)[~kept])
    meta = out.metadata[1]
    assert meta["edit"] == "inpaint" and meta["seed"] == 1 and meta["mask_fraction"] == 0.25 and meta["blend"] == 32


def test_an_empty_mask_gives_the_source_back_and_a_full_one_is_plain_generation(cascade):
    picture = _picture(256, seed=1)
    with pytest.warns(UserWarning, match="repaints nothing"):
        back = cascade.edit(picture, np.zeros((256, 256)), "a cat", seed=2, size=256, **FAST).images[0]
    assert np.array_equal(np.asarray(back), np.asarray(picture))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        whole = cascade.edit(picture, np.ones((256, 256)), "a cat", seed=2, size=256, output_type="pt", **FAST)
    plain = cascade("a cat", seed=2, size=256, output_type="pt", **FAST)
    assert torch.equal(whole.images, plain.images)  # the edit's own noise never disturbs the picture's


def test_resampling_takes_every_step_again_with_a_one_step_sampler(cascade, monkeypatch):
    picture, mask = _picture(64, seed=2), _quadrant(64)
    calls = _record_stages(monkeypatch)
    once = cascade.edit(picture, mask, "a cat", seed=0, size=64, scheduler="ddim", output_type="pt", **FAST)
    twice = cascade.edit(picture, mask, "a cat", seed=0, size=64, scheduler="ddim", resample=2, output_type="pt",
                         **FAST)  # fmt: skip
    assert calls[-1][1].resample == 2 and not torch.equal(once.images, twice.images)
    assert twice.metadata[0]["resample"] == 2
    with pytest.raises(UnclipError, match="decoder: resampling needs a one-step sampler"):
        cascade.edit(picture, mask, "a cat", size=64, resample=2, scheduler={"decoder": "dpmpp"}, **FAST)
    for bad, message in [({"image_weight": 2}, "image_weight must be in"), ({"blend": 0}, "blend must be"),
                         ({"resample": 0}, "resample")]:  # fmt: skip
        with pytest.raises(UnclipError, match=message):
            cascade.edit(picture, mask, "a cat", size=64, **bad)


def test_image_weight_one_decodes_the_pictures_own_embedding(replica_root, tmp_path):
    """With no prior (the image-variations layout), image_weight 1: z_i is the picture's CLIP embedding."""
    from unclip import UnCLIPCascade
    from unclip.replicas import tiny_karlo

    variations = tiny_karlo(tmp_path / "karlo-variations", with_prior=False, image_variations=True)
    pipe = UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "v.yaml", variations, None))
    pipe.set_progress_bar_config(disable=True)
    picture, mask = _picture(64, seed=3), _quadrant(64)
    no_prior = {k: v for k, v in FAST.items() if not k.startswith("prior")}
    out = pipe.edit(picture, mask, "a cat", image_weight=1.0, seed=0, size=64, **no_prior)
    assert out.metadata[0]["image_weight"] == 1.0
    with pytest.raises(UnclipError, match="no prior"):
        pipe.edit(picture, mask, "a cat", image_weight=0.5, size=64, **no_prior)


# -------------------------------------------------------------------------------------------------- CLI
CLI_FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--sr-steps", "2", "--upscale-steps", "2", "--quiet"]


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_the_edit_command(tmp_path, model_yaml, capsys):
    _picture(64).save(tmp_path / "photo.png")
    Image.fromarray(_quadrant(64)).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    common = ["--model", str(model_yaml), "--out", str(out), "--size", "64", *CLI_FAST]
    assert main(["edit", str(tmp_path / "photo.png"), "a cat", "--mask", str(tmp_path / "mask.png"), *common]) == 0
    assert main(["edit", str(tmp_path / "photo.png"), "a cat", "--expand", "16", "--num-images", "2", *common]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(m["edit"], m["seed"]) for m in lines] == [("inpaint", 0), ("outpaint", 0), ("outpaint", 1)]
    assert lines[0]["source"].endswith("photo.png") and lines[1]["pad"] == [16, 16, 16, 16]
    assert "Edit: inpaint" in Image.open(out / lines[0]["file_name"]).text["parameters"]
    # bad input: one line, exit 2, nothing written
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "black.png")
    Image.fromarray(_quadrant(32)).save(tmp_path / "small.png")
    photo = str(tmp_path / "photo.png")
    assert "marks nothing to repaint" in _error(
        capsys, ["edit", photo, "a cat", "--mask", str(tmp_path / "black.png"), *common]
    )
    assert "the mask is 32×32 but the image is 64×64" in _error(
        capsys, ["edit", photo, "a cat", "--mask", str(tmp_path / "small.png"), *common]
    )
    assert "nothing to repaint: give a mask" in _error(capsys, ["edit", photo, "a cat", *common])
    assert "does not exist" in _error(capsys, ["edit", str(tmp_path / "nope.png"), "a cat", "--expand", "8", *common])
    assert "not square: change --pad" in _error(capsys, ["edit", photo, "a cat", "--pad", "8,0,0,0", *common])
    assert len(list(out.glob("*.png"))) == 3


def test_a_pixel_upsampler_keeps_the_known_region_too(karlo_dir, tmp_path, monkeypatch):
    from unclip import UnCLIPCascade
    from unclip.replicas import tiny_pixel_upscaler

    pixel = tiny_pixel_upscaler(tmp_path / "pixel-upscaler")
    pipe = UnCLIPCascade.from_pretrained(write_model_yaml(tmp_path / "p.yaml", karlo_dir, pixel))
    pipe.set_progress_bar_config(disable=True)
    calls = _record_stages(monkeypatch)
    picture, mask = _picture(1024, seed=4), _quadrant(1024)
    out = pipe.edit(picture, mask, "a cat", seed=0, size=1024, **FAST)
    name, known, x = calls[-1]
    assert name == "sr1024" and known is not None and known.mask.shape[-1] == x.shape[-1] == 1024
    keep = (known.mask == 0).expand_as(x)
    assert torch.equal(x[keep], known.source.expand_as(x)[keep])
    assert np.array_equal(np.asarray(out.images[0])[_quadrant(1024) == 0], np.asarray(picture)[_quadrant(1024) == 0])
