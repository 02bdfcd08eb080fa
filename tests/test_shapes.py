"""The offline demo: the procedural shapes dataset (`unclip data shapes`), the pixel checker, and
`unclip eval shapes` end to end on the tiny random-weight Karlo replica."""

import json
import time
from collections import Counter

import numpy as np
import pytest
from conftest import write_model_yaml
from PIL import Image
from test_cli import _error

from unclip import UnclipError
from unclip.cli import main
from unclip.demo.checker import check, detect
from unclip.demo.eval import GROUPS
from unclip.demo.shapes import (
    ATTRIBUTES,
    COLOURS,
    FORMS,
    GEOMETRY,
    HELD_OUT,
    MARGIN,
    PALETTE,
    POSITIONS,
    SHAPES,
    STYLES,
    Attributes,
    Scene,
    coverage,
    eval_prompts,
    place,
    render,
    sample_scene,
)
from unclip.demo.shapes import captions as captions_of

# ------------------------------------------------------------------------------------------------ dataset


def test_captions():
    a = Attributes("circle", "red", "blue", "large", "top left")
    assert a.caption == "a large red circle in the top left on a blue background"
    assert Attributes("square", "orange", "black", "small", "center").caption == (
        "a small orange square in the center on a black background"
    )
    assert Attributes("triangle", "white", "orange", "small", "anywhere").caption == (
        "a small white triangle on an orange background"
    )


def test_an_image_has_every_caption_of_the_grammar_true_of_it():
    anchored = Attributes("square", "orange", "orange", "large", "top left")
    assert captions_of(anchored) == [
        "a large orange square in the top left on an orange background",
        "a large orange square on an orange background",
        "an orange square in the top left on an orange background",
        "an orange square on an orange background",
        *(f"{c}." for c in captions_of(anchored)[:4]),
    ]
    anywhere = captions_of(Attributes("circle", "red", "blue", "small", "anywhere"))  # no position to say
    assert anywhere == [
        "a small red circle on a blue background",
        "a red circle on a blue background",
        "a small red circle on a blue background.",
        "a red circle on a blue background.",
    ]


def test_training_attributes_skip_the_held_out_pairs_and_cover_the_rest():
    scenes = [sample_scene(0, i) for i in range(3000)]
    pairs = Counter((s.attributes.colour, s.attributes.shape) for s in scenes)
    assert not set(pairs) & set(HELD_OUT)
    assert len(pairs) == len(COLOURS) * len(SHAPES) - len(HELD_OUT)
    assert {s.attributes.position for s in scenes} == set(POSITIONS)
    assert {s.attributes.size for s in scenes} == {"small", "large"}
    assert all(s.attributes.background != s.attributes.colour for s in scenes)
    assert sample_scene(0, 5) == sample_scene(0, 5) != sample_scene(1, 5)


def test_shapes_stay_inside_with_the_margin():
    for i in range(2000):
        scene = sample_scene(3, i)
        left, top, right, bottom = GEOMETRY[scene.attributes.shape].extents(scene.area)
        assert scene.x - left >= MARGIN - 1e-9 and scene.x + right <= 1 - MARGIN + 1e-9
        assert scene.y - top >= MARGIN - 1e-9 and scene.y + bottom <= 1 - MARGIN + 1e-9


@pytest.mark.parametrize("shape", SHAPES)
def test_render_is_antialiased_with_the_right_area_and_centroid(shape):
    scene = Scene(Attributes(shape, "white", "black", "large", "anywhere"), 0.43, 0.56, 0.08)
    image = render(scene, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    cover = (image[..., 0].astype(float) - PALETTE["black"][0]) / (PALETTE["white"][0] - PALETTE["black"][0])
    assert ((cover > 0.05) & (cover < 0.95)).sum() > 50  # soft edges
    assert cover.sum() / 256**2 == pytest.approx(0.08, rel=2e-3)
    ys, xs = np.mgrid[0:256, 0:256] + 0.5
    assert (cover * xs).sum() / cover.sum() / 256 == pytest.approx(0.43, abs=1e-3)
    assert (cover * ys).sum() / cover.sum() / 256 == pytest.approx(0.56, abs=1e-3)
    # the lookup-table blend is the exact one, up to rounding
    dy, dx = (np.arange(256) + 0.5 - 0.56 * 256)[:, None], (np.arange(256) + 0.5 - 0.43 * 256)[None, :]
    exact = np.rint(15 + coverage(shape, dx, dy, 0.08 * 256**2)[..., None] * (250 - 15))
    assert np.abs(exact - image).max() <= 1


def test_render_1024_is_fast():
    scenes = [
        place(Attributes(s, "red", "blue", "large", "center"), np.random.default_rng(i)) for i, s in enumerate(SHAPES)
    ]
    times = []
    for scene in scenes * 5:
        start = time.perf_counter()
        render(scene, 1024)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.05, times


def _write(tmp_path, name, *extra):
    out = tmp_path / name
    assert main(["data", "shapes", str(out), "--n", "12", "--size", "64", "--seed", "4", "--quiet", *extra]) == 0
    return out


def test_dataset_is_an_imagefolder_the_trainer_reads_and_ignores_workers(tmp_path, capsys):
    from unclip.train.data import CaptionedImages

    one = _write(tmp_path, "one", "--workers", "0")
    assert str(one / "metadata.jsonl") in capsys.readouterr().out
    two = _write(tmp_path, "two", "--workers", "2")
    files = sorted(p.name for p in one.iterdir())
    assert files == sorted(p.name for p in two.iterdir()) and len(files) == 13
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)

    rows = [json.loads(line) for line in (one / "metadata.jsonl").read_text().splitlines()]
    data = CaptionedImages(one, resolution=64)
    assert len(data) == 12 and data.texts == [r["text"][0] for r in rows]
    for i, row in enumerate(rows):
        attributes = Attributes(**{k: row[k] for k in ("shape", "colour", "background", "size", "position")})
        assert attributes == sample_scene(4, i).attributes and row["text"] == captions_of(attributes)
        assert data[i]["captions"] == tuple(row["text"]) and data[i]["text"] == attributes.caption
        assert Image.open(one / row["file_name"]).size == (64, 64)
        assert check(np.asarray(Image.open(one / row["file_name"])), attributes).all
    assert data[0]["pixel_values"].shape == (3, 64, 64)


def test_dataset_refuses_a_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert "is not empty: give a new folder" in _error(capsys, ["data", "shapes", str(out), "--n", "2"])
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert "is a file" in _error(capsys, ["data", "shapes", str(out / "notes.txt"), "--n", "2"])
    assert "must be ≥ 32" in _error(capsys, ["data", "shapes", str(tmp_path / "new"), "--n", "2", "--size", "8"])


def test_eval_prompts_cover_everything_and_hold_the_held_out_pairs():
    first = eval_prompts(8, forms=False)
    assert [(a.colour, a.shape) for a in first[:3]] == list(HELD_OUT)
    assert {a.colour for a in first} == set(COLOURS) and {a.shape for a in first} == set(SHAPES)
    assert {a.position for a in first} == set(POSITIONS) and {a.size for a in first} == {"small", "large"}
    prompts = eval_prompts(48, forms=False)
    assert prompts[:8] == first and eval_prompts(48, forms=False) == prompts
    assert len({(a.colour, a.shape) for a in prompts[:24]}) == 24
    assert Counter(a.held_out for a in prompts)[True] == 6
    assert all(a.background != a.colour for a in prompts)
    assert {a.background for a in prompts} == set(COLOURS)


def test_eval_prompts_ask_in_every_form_and_style_of_the_grammar():
    prompts = eval_prompts(96)
    plain = eval_prompts(96, forms=False)
    assert eval_prompts(24) == prompts[:24] and [a.colour for a in prompts] == [a.colour for a in plain]
    for round_ in range(4):
        assert {a.form for a in prompts[24 * round_ : 24 * (round_ + 1)]} == set(FORMS)
        assert {a.style for a in prompts[24 * round_ : 24 * (round_ + 1)]} == set(STYLES)
    for pair in HELD_OUT:
        assert {a.form for a in prompts if (a.colour, a.shape) == pair} == set(FORMS), pair
    captions = {a.caption for a in prompts}
    assert all(a.caption.split()[0].lower() in ("a", "an") for a in prompts)
    assert any(c.startswith("an orange") or " an orange background" in c for c in captions)  # "an" as English wants
    assert any(c.startswith("A ") for c in captions) and any(c.endswith(".") for c in captions)
    assert any("  " in c for c in captions)
    said = Attributes("square", "orange", "white", None, "anywhere", style="capital")
    assert said.caption == "An orange square on a white background" and said.form == "neither"
    assert Attributes("circle", "red", "orange", "small", "center", "full stop").caption == (
        "a small red circle in the center on an orange background."
    )


# ------------------------------------------------------------------------------------------------ checker

ACCURACY_RUNS = {64: 500, 256: 100, 1024: 12}


@pytest.mark.parametrize("size", ACCURACY_RUNS)
def test_checker_reads_clean_renders(size):
    n = ACCURACY_RUNS[size]
    wrong = Counter()
    for i in range(n):
        scene = sample_scene(size, i)
        result = check(render(scene, size), scene.attributes)
        wrong.update(name for name in ATTRIBUTES if result.correct[name] is False)
    assert not wrong, f"{size} px: {dict(wrong)} wrong of {n}"


def test_edge_width_is_half_a_pixel_on_a_clean_render_and_grows_with_blur_and_speckle():
    from PIL import ImageFilter

    rng = np.random.default_rng(0)
    scenes = [place(a, rng) for a in eval_prompts(12, forms=False)]
    clean = [detect(render(scene, 1024)).edge_width for scene in scenes]
    assert 0.3 < np.mean(clean) < 0.7
    bicubic = [detect(Image.fromarray(render(s, 256)).resize((1024, 1024), Image.BICUBIC)).edge_width for s in scenes]
    assert 2.0 < np.mean(bicubic) < 3.0  # a 4× bicubic edge spans about 2.5 px of the bigger picture
    blurred = [detect(Image.fromarray(render(s, 256)).filter(ImageFilter.GaussianBlur(2))).edge_width for s in scenes]
    assert np.mean(blurred) > 2.5  # σ = 2 px: the 20-80 % band of a Gaussian edge is 1.7 σ wide
    square = render(place(Attributes("square", "red", "orange", "large", "center"), rng), 256)
    speckled = np.clip(square + np.random.default_rng(1).normal(0, 12, square.shape), 0, 255).astype(np.uint8)
    found = detect(speckled)  # still read right, but the flat colours are no longer flat
    assert (found.colour, found.shape, found.background) == ("red", "square", "orange")
    assert found.edge_width > 4 * detect(square).edge_width


def test_checker_reads_the_held_out_pairs():
    prompts = eval_prompts(48)
    for i, attributes in enumerate(prompts):
        assert check(render(place(attributes, np.random.default_rng(i)), 64), attributes).all, attributes


def test_checker_flags_wrong_attributes():
    red_circle = Attributes("circle", "red", "white", "large", "top left")
    image = render(place(red_circle, np.random.default_rng(0)), 128)
    assert check(image, red_circle).all
    wrong = check(image, Attributes("square", "blue", "black", "small", "bottom right"))
    assert wrong.correct == dict.fromkeys(ATTRIBUTES, False) and not wrong.all
    assert wrong.detected.shape == "circle" and wrong.detected.colour == "red"
    assert wrong.detected.position == "top left" and wrong.detected.background == "white"
    anywhere = check(image, Attributes("triangle", "red", "white", "large", "anywhere"))
    assert anywhere.correct == {"colour": True, "shape": False, "position": None, "background": True, "size": True}
    unsized = check(image, Attributes("circle", "red", "white", None, "top left"))
    assert unsized.correct["size"] is None and unsized.all  # what the caption does not say is not asked


def test_checker_takes_pil_float_rgba_and_non_square_images():
    attributes = Attributes("triangle", "yellow", "purple", "large", "center")
    pixels = render(place(attributes, np.random.default_rng(1)), 96)
    found = detect(pixels)
    assert detect(Image.fromarray(pixels)) == found
    assert detect(pixels.astype(np.float32) / 255) == found
    assert detect(np.concatenate([pixels, np.full((96, 96, 1), 255, np.uint8)], axis=-1)) == found
    wide = np.concatenate([pixels, np.broadcast_to(pixels[:, :1], (96, 48, 3))], axis=1)  # background added right
    assert detect(wide).shape == "triangle" and detect(wide).position == "left"
    with pytest.raises(UnclipError, match="RGB image"):
        detect(np.zeros((3, 64, 64), np.uint8))


def test_checker_without_a_shape():
    blank = np.broadcast_to(np.asarray(PALETTE["green"], np.uint8), (64, 64, 3))
    found = detect(blank)
    assert found.background == "green" and found.colour is None and found.shape is None
    result = check(blank, Attributes("circle", "red", "green", "small", "center"))
    assert result.correct == {"colour": False, "shape": False, "position": False, "background": True, "size": False}


# ------------------------------------------------------------------------------------------------ eval

FAST = ["--prior-steps", "2", "--decoder-steps", "2", "--prior-guidance", "1", "--decoder-guidance", "1", "--quiet"]


def test_eval_shapes_end_to_end(tmp_path, karlo_dir, capsys, monkeypatch):
    model = write_model_yaml(tmp_path / "karlo-local.yaml", karlo_dir, None)
    out = tmp_path / "eval"
    base = ["eval", "shapes", "--model", str(model), "--size", "64", *FAST]
    assert main([*base, "--n", "3", "--batch-size", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for row in GROUPS:
        assert f"\n{row} " in printed
    header = ["n", "colour", "shape", "position", "background", "size", "all", "edge", "px"]
    assert printed.splitlines()[0].split() == header
    assert f"report: {out / 'report.json'}" in printed

    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 3 and report["size"] == 64 and report["stages"]["decoder"]["steps"] == 2
    assert set(report["summary"]) == set(GROUPS) and report["summary"]["overall"]["n"] == 3
    assert report["summary"]["held out"]["n"] == 3  # the held-out pairs come first
    found = [i["detected"]["edge_width"] for i in report["images"] if i["detected"]["shape"] is not None]
    edge = report["summary"]["overall"]["edge"]
    assert edge == (round(sum(found) / len(found), 3) if found else None)
    assert [image["seed"] for image in report["images"]] == [0, 1, 2]
    assert [image["prompt"] for image in report["images"]] == [a.caption for a in eval_prompts(3)]
    assert report["prompts"] == "every form" and report["summary"]["says size, position"]["n"] == 1
    for image in report["images"]:
        assert set(image["correct"]) == set(ATTRIBUTES) and Image.open(image["file"]).size == (64, 64)
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [line["check"]["expected"]["colour"] for line in lines] == [c for c, _ in HELD_OUT]

    # never overwrites: new image numbers and report-2.json in the same folder; eval-shapes.json without --out
    earlier = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([*base, "--n", "1", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {*earlier, "00003-0.png", "report-2.json"}
    assert all((out / name).read_bytes() == data for name, data in earlier.items() if name != "metadata.jsonl")
    monkeypatch.chdir(tmp_path)
    assert main([*base, "--n", "1", "--plain"]) == 0
    plain = json.loads((tmp_path / "eval-shapes.json").read_text())
    assert plain["summary"]["overall"]["n"] == 1 and plain["prompts"] == "plain"
    assert plain["images"][0]["prompt"] == eval_prompts(1, forms=False)[0].caption
    capsys.readouterr()
    assert "already exists" in _error(capsys, [*base, "--report", str(out / "report.json")])


def test_eval_shapes_bad_flags(tmp_path, karlo_dir, capsys):
    model = write_model_yaml(tmp_path / "k.yaml", karlo_dir, None)
    assert "needs an upscaler" in _error(capsys, ["eval", "shapes", "--model", str(model), "--size", "1024"])
    assert "--seed must be ≥ 0" in _error(capsys, ["eval", "shapes", "--model", str(model), "--seed", "-1"])
    assert "invalid choice" in _error(capsys, ["eval", "shapes", "--model", str(model), "--size", "128"])
    assert "--n: must be ≥ 1, got 0" in _error(capsys, ["eval", "shapes", "--n", "0"])  # --model: demo by default
    assert "unknown model 'nope'" in _error(capsys, ["eval", "shapes", "--model", "nope"])


def test_checker_survives_any_image():
    rng = np.random.default_rng(0)
    for i in range(40):
        height, width = rng.integers(8, 100, 2)
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        found = detect(noise if i % 2 else noise.astype(np.float32) / 255)
        assert found.background in COLOURS and (found.shape is None or found.shape in SHAPES)


def test_an_outline_is_a_dark_band_inside_the_edge_and_nothing_else(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from unclip.cli import main
    from unclip.demo.shapes import OUTLINE, PALETTE, render, sample_scene

    scene = sample_scene(0, 5)
    plain, outlined = render(scene, 256).astype(int), render(scene, 256, 0.03).astype(int)
    changed = np.abs(plain - outlined).sum(axis=2) > 0
    dark = np.abs(outlined - np.asarray(OUTLINE)).sum(axis=2) <= 3
    colour = np.abs(plain - np.asarray(PALETTE[scene.attributes.colour])).sum(axis=2) <= 3
    assert dark.sum() > 0.1 * colour.sum()  # a band ~8 px wide around the shape
    background = (plain == np.asarray(PALETTE[scene.attributes.background])).all(axis=2)
    assert (changed & background).sum() < 0.01 * background.sum()  # the background stays (but for the edge's AA)
    argv = ["data", "shapes", str(tmp_path / "o"), "--n", "2", "--size", "64", "--outline", "0.03", "--quiet"]
    assert main(argv) == 0
    row = json.loads((tmp_path / "o" / "metadata.jsonl").read_text().splitlines()[0])
    assert row["outline"] == 0.03 and row["clip_file_name"] == "plain/00000.png"
    twin, styled = (np.asarray(Image.open(tmp_path / "o" / name)) for name in (row["clip_file_name"], row["file_name"]))
    assert np.array_equal(twin, render(sample_scene(0, 0), 64)) and not np.array_equal(twin, styled)


def test_the_checker_reads_the_dark_band_of_an_outline_and_none_on_a_plain_render():
    from PIL import Image

    from unclip.demo.checker import dark_band
    from unclip.demo.shapes import render, sample_scene

    scenes = [sample_scene(0, i) for i in range(40)]
    scenes = [s for s in scenes if "black" not in (s.attributes.colour, s.attributes.background)][:12]
    plain = [dark_band(render(s, 64)) for s in scenes]
    outlined = [dark_band(render(s, 64, 0.03)) for s in scenes]
    downscaled = [dark_band(Image.fromarray(render(s, 256, 0.03)).resize((64, 64), Image.BICUBIC)) for s in scenes]
    assert max(plain) == 0.0 and min(outlined) > 0.4 and min(downscaled) > 0.4, (plain, outlined, downscaled)
    assert dark_band(np.full((64, 64, 3), 128, np.uint8)) == 0.0  # nothing but background
