"""The offline demo: its architecture around a trained CLIP text tower, and the shipped model (`--model demo`)."""

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from unclip import UnCLIPCascade
from unclip.errors import UnclipError
from unclip.replicas import KARLO_TEXT_ENCODER, _save_tokenizer
from unclip.train.architectures import ARCHITECTURES
from unclip.train.config import load_train_config

EXPORT = Path(__file__).resolve().parents[1] / "scripts" / "export_demo.py"


def _text_tower(folder, hidden=32, projection=32):
    config = CLIPTextConfig(**{**KARLO_TEXT_ENCODER, "hidden_size": hidden, "projection_dim": projection})
    CLIPTextModelWithProjection(config).save_pretrained(folder / "text_encoder")
    _save_tokenizer(folder / "tokenizer", pad_token="!")
    return folder


def test_demo_architecture_builds_around_a_text_tower(tmp_path):
    clip = _text_tower(tmp_path / "clip")
    model_yaml = ARCHITECTURES["demo"](tmp_path / "init", 0, text_encoder=clip)
    pipe = UnCLIPCascade.from_pretrained(model_yaml)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.prior.config.embedding_dim == 32 and pipe.text_proj.config.clip_embeddings_dim == 32
    assert pipe.upscaler_layout == "pixel" and pipe.max_size == 1024
    steps = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, super_res_num_inference_steps=2)
    out = pipe("a small red circle on a blue background", seed=0, size=256, output_type="np", **steps)
    assert out.images.shape == (1, 256, 256, 3) and np.isfinite(out.images).all()


def test_demo_architecture_without_a_text_tower_uses_an_untrained_demo_clip(tmp_path):
    pipe = UnCLIPCascade.from_pretrained(ARCHITECTURES["demo"](tmp_path / "init", 0, text_encoder=None))
    assert (tmp_path / "init" / "clip" / "image_encoder").is_dir()
    assert pipe.text_encoder.config.projection_dim == pipe.prior.config.embedding_dim == 128
    # …which is only good for the upsamplers: the text stages refuse it
    for stage in ("prior", "decoder"):
        with pytest.raises(UnclipError, match="needs text_encoder=FOLDER"):
            load_train_config(None, [f"stage={stage}", "architecture=demo", "data.path=d", "data.clip=hf:c"])
    assert load_train_config(None, ["stage=sr256", "architecture=demo", "data.path=d"]).text_encoder is None


def test_export_joins_upsamplers_trained_apart(tmp_path):
    clip = _text_tower(tmp_path / "clip")
    text_run = ARCHITECTURES["demo"](tmp_path / "a", 0, text_encoder=clip)
    upsampler_run = ARCHITECTURES["demo"](tmp_path / "b", 1, text_encoder=clip)
    export = runpy.run_path(str(EXPORT))["export"]
    export(str(text_run), None, tmp_path / "out", force=False, upsamplers=str(upsampler_run))
    a, b, out = (UnCLIPCascade.from_pretrained(p) for p in (text_run, upsampler_run, tmp_path / "out" / "model.yaml"))
    weights = load_file(tmp_path / "out" / "unclip" / "decoder" / "diffusion_pytorch_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float16}
    configs = list((tmp_path / "out").rglob("config.json"))
    assert len(configs) >= 6 and not [c for c in configs if str(tmp_path) in c.read_text()]  # no machine paths

    def same(x, y):
        return all(torch.equal(p.half(), q) for p, q in zip(x.parameters(), y.parameters(), strict=True))

    assert same(a.decoder, out.decoder) and same(a.prior, out.prior) and not same(b.decoder, out.decoder)
    for name in ("super_res_first", "super_res_last", "upscaler_unet"):
        assert same(getattr(b, name), getattr(out, name)) and not same(getattr(a, name), getattr(out, name))
    # --upscaler: the 256→1024 upscaler alone from a third run (here the text run's), the 64→256 ones still b's
    export(str(text_run), None, tmp_path / "out2", force=False, upsamplers=str(upsampler_run), upscaler=str(text_run))
    out2 = UnCLIPCascade.from_pretrained(tmp_path / "out2" / "model.yaml")
    assert same(b.super_res_first, out2.super_res_first) and same(b.super_res_last, out2.super_res_last)
    assert same(a.upscaler_unet, out2.upscaler_unet) and not same(b.upscaler_unet, out2.upscaler_unet)


def test_export_keeps_the_upsamplers_of_the_export_it_replaces(tmp_path):
    """A retrained text side shipped with the upsamplers already shipped: --upsamplers OUT/model.yaml, --force."""
    clip = _text_tower(tmp_path / "clip")
    first, second = (
        ARCHITECTURES["demo"](tmp_path / name, seed, text_encoder=clip) for name, seed in [("a", 0), ("b", 1)]
    )
    export = runpy.run_path(str(EXPORT))["export"]
    out = tmp_path / "out"
    export(str(first), None, out, force=False)
    shipped = UnCLIPCascade.from_pretrained(out / "model.yaml")
    export(str(second), None, out, force=True, upsamplers=str(out / "model.yaml"))
    new, b = UnCLIPCascade.from_pretrained(out / "model.yaml"), UnCLIPCascade.from_pretrained(second)

    def same(x, y):
        return all(torch.equal(p.half(), q.half()) for p, q in zip(x.parameters(), y.parameters(), strict=True))

    assert same(b.decoder, new.decoder) and not same(shipped.decoder, new.decoder)
    for name in ("super_res_first", "super_res_last", "upscaler_unet"):
        assert same(getattr(shipped, name), getattr(new, name)) and not same(getattr(b, name), getattr(new, name))
    # an export that fails leaves the one it would have replaced as it was
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    with pytest.raises(UnclipError, match="has no image_encoder/"):
        export(str(first), tmp_path / "nothing", out, force=True, upsamplers=str(out / "model.yaml"))
    assert {f: f.read_bytes() for f in out.rglob("*") if f.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "clip", "out"]


def test_demo_architecture_refuses_a_missing_or_mismatched_text_tower(tmp_path):
    with pytest.raises(UnclipError, match="no text_encoder/"):
        ARCHITECTURES["demo"](tmp_path / "b", 0, text_encoder=tmp_path / "nowhere")
    clip = _text_tower(tmp_path / "clip", hidden=32, projection=16)
    with pytest.raises(UnclipError, match="must equal its projection width"):
        ARCHITECTURES["demo"](tmp_path / "c", 0, text_encoder=clip)


# ------------------------------------------------------------------------------------- the shipped demo
DEMO = Path(__file__).resolve().parents[1] / "models" / "demo"
MAIN_PROMPT = "a large red circle in the top left on a blue background"


def test_demo_preset_loads_the_shipped_model_offline():
    size = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert size <= 40 * 2**20, f"the demo is {size / 2**20:.1f} MiB, over its 40 MiB budget"
    pipe = UnCLIPCascade.from_pretrained("demo")
    assert pipe.model_config.name == "demo" and pipe.upscaler_layout == "pixel" and pipe.max_size == 1024
    assert Path(pipe.model_config.unclip) == DEMO / "unclip"
    assert pipe.decoder.dtype == torch.float32  # fp16 on disk, fp32 on a CPU by default
    from unclip.config import load_model_config

    shipped = load_model_config(DEMO / "model.yaml")
    assert shipped.stages == pipe.model_config.stages  # one set of settings
    assert shipped.image_encoder == pipe.model_config.image_encoder == f"hf:{DEMO / 'clip' / 'image_encoder'}"


def test_the_readme_main_command_writes_its_picture_offline(tmp_path):
    """The README's main command, offline on a CPU: a 1024 px PNG of a large red circle in the top left on a
    blue background, every attribute read back from the pixels by the shapes checker."""
    from PIL import Image

    from unclip.cli import main
    from unclip.demo.checker import check
    from unclip.demo.shapes import Attributes

    out = tmp_path / "out"
    assert main(["generate", MAIN_PROMPT, "--model", "demo", "--size", "1024", "--seed", "0", "--out", str(out)]) == 0
    (png,) = out.glob("*.png")
    image = Image.open(png)
    assert image.size == (1024, 1024) and "Model: demo" in image.text["parameters"]
    expected = Attributes(shape="circle", colour="red", background="blue", size="large", position="top left")
    result = check(image, expected)
    assert result.all and set(result.correct) == {"colour", "shape", "background", "size", "position"}, result
    assert 0.05 < result.detected.area < 0.5  # one shape, not noise or an empty picture


SIZELESS = [  # the grammar's size word is optional (issue 16): prompts without it, as people type them
    ("a white square on a green background", dict(shape="square", colour="white", background="green")),
    (
        "A yellow circle in the top right on a purple background.",
        dict(shape="circle", colour="yellow", background="purple", position="top right"),
    ),
]


@pytest.mark.parametrize("prompt, attributes", SIZELESS, ids=["no-size-no-position", "no-size-capital-full-stop"])
def test_a_prompt_without_the_size_word_is_read_back_right(demo, prompt, attributes):
    from unclip.demo.checker import check
    from unclip.demo.shapes import Attributes

    expected = Attributes(**{"size": None, "position": "anywhere", **attributes})
    result = check(demo(prompt, seed=0, size=64).images[0], expected)
    assert result.all, result


# ------------------------------------------------------------------------------ the paper's edits, on the demo
def _rendered(attributes, seed=0):
    """A clean shapes picture, as the dataset draws it (what a user's own image of the grammar looks like)."""
    import numpy as np

    from unclip.demo.shapes import place, render

    pixels = render(place(attributes, np.random.default_rng(seed)), 256)
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def demo():
    pipe = UnCLIPCascade.from_pretrained("demo")
    pipe.set_progress_bar_config(disable=True)
    return pipe


EDITED = [("circle", "red", "blue", "top left")]  # the README's picture, for the command test


def test_inverted_variations_of_demo_pictures_keep_their_shape_and_colour(demo):
    """Issue 5's "a variation keeps its shape and colour", read back from the pixels by the shapes checker, on
    8 pictures of the evaluation's attributes, 2 variations each (η = 0.5, the demo's inversion start: 600).
    Measured 2026-12-05 with issue 16's decoder (inversion and sampling unguided, the default for inverted
    edits): colour, background, position 100 %, shape 93.8 % (from timestep 800: colour 93.8 %, shape 75 %; on
    2026-11-30's decoder guided at 3 instead, background 19 %); on 2026-12-06's (fine-tuned onto the jittered CLIP)
    all four 100 %. η = 0 gives each picture back up to the decoder's texture."""
    import numpy as np

    from unclip.demo.checker import check
    from unclip.demo.shapes import eval_prompts

    cases = [_attributes(a.shape, a.colour, a.background, a.position) for a in eval_prompts(24, forms=False)]
    cases = [a for a in cases if a.position != "anywhere"][:8]
    kept = []
    for attributes in cases:
        picture = _rendered(attributes)
        for image in demo.vary(picture, invert=True, eta=0.5, num_images_per_prompt=2, seed=0, size=64).images:
            correct = check(image, attributes).correct
            kept.append([correct[name] for name in ("colour", "shape", "background", "position")])
    colour, shape, background, position = np.mean(kept, axis=0)
    assert colour >= 0.95 and background >= 0.95 and position >= 0.9 and shape >= 0.8, np.mean(kept, axis=0)
    picture = _rendered(cases[0])
    again = demo.vary(picture, invert=True, eta=0.0, seed=0, size=64, output_type="pt").images[0]
    small = torch.nn.functional.interpolate(picture[None], size=64, mode="area")[0]
    # η = 0: the picture through inversion and back, up to the small decoder's texture on flat colours (measured
    # 0.04-0.06; another picture of the grammar is ≥ 0.2 away)
    assert (again - small).abs().mean() < 0.08


def test_the_edit_commands_run_on_the_demo(tmp_path):
    from PIL import Image

    from unclip.cli import main

    photo = tmp_path / "photo.png"
    Image.fromarray((_rendered(_attributes(*EDITED[0])) * 255).round().byte().permute(1, 2, 0).numpy()).save(photo)
    out = tmp_path / "out"
    common = ["--out", str(out), "--size", "64", "--quiet"]
    assert main(["vary", str(photo), "--num-images", "2", *common]) == 0
    assert main(["interpolate", str(photo), "a small green square in the center on a white background",
                 "--frames", "3", "--gif", *common]) == 0  # fmt: skip
    assert main(["diff", str(photo), "--from", "a red circle", "--to", "a red square", "--frames", "2", *common]) == 0
    assert len(list(out.glob("*.png"))) == 2 + 3 + 2 and len(list(out.glob("*.gif"))) == 1


def _attributes(shape, colour, background, position):
    from unclip.demo.shapes import Attributes

    return Attributes(shape=shape, colour=colour, background=background, size="large", position=position)


# ------------------------------------------------------------------------------------ inpainting, outpainting
def _scene(size, shape="square", colour="red", background="blue", position="top left"):
    from unclip.demo.shapes import ANCHORS, Attributes, Scene, render

    x, y = ANCHORS[position]
    return render(Scene(Attributes(shape, colour, background, "large", position), x, y, 0.08), size)


def test_inpainting_puts_a_new_shape_in_the_masked_quadrant_and_keeps_the_old_one(demo):
    """Issue 18: a red square at the top left on blue, the bottom-right quadrant masked, "a large yellow circle in
    the bottom right on a blue background": each half read back by the shapes checker (the other half painted
    over with the background). Measured 2026-12-01 on the shipped demo: 6 of 6 seeds at 64 px, 3 of 3 at 256."""
    from unclip.demo.checker import detect
    from unclip.demo.shapes import PALETTE

    source, blue = _scene(64), np.asarray(PALETTE["blue"], np.uint8)
    mask = np.zeros((64, 64))
    mask[32:, 32:] = 1
    prompt = "a large yellow circle in the bottom right on a blue background"
    for image in demo.edit(source, mask, prompt, num_images_per_prompt=2, seed=0, size=64).images:
        pixels = np.asarray(image).copy()
        assert np.array_equal(pixels[mask == 0], source[mask == 0])  # the red square untouched, to the pixel
        old, new = pixels.copy(), pixels.copy()
        old[32:, 32:], new[:32, :32] = blue, blue
        found = [(d.colour, d.shape, d.position, d.background) for d in (detect(old), detect(new))]
        assert found == [("red", "square", "top left", "blue"), ("yellow", "circle", "bottom right", "blue")]


def test_outpainting_extends_the_background(demo):
    """A 48 px picture on a 64 px canvas (8 px of new border): the border comes out the picture's background."""
    from unclip.demo.checker import detect, nearest_colour
    from unclip.demo.shapes import COLOURS

    source = _scene(48, shape="circle", colour="yellow", background="green", position="center")
    out = demo.edit(source, prompt="a large yellow circle on a green background", pad=8, seed=0, size=64)
    for image in out.images:
        pixels = np.asarray(image)
        border = np.ones((64, 64), bool)
        border[8:56, 8:56] = False
        names = np.asarray(COLOURS)[nearest_colour(pixels[border].astype(np.float32))]
        assert (names == "green").mean() > 0.9, dict(zip(*np.unique(names, return_counts=True), strict=True))
        assert (detect(pixels).colour, detect(pixels).shape) == ("yellow", "circle")
