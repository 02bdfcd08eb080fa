"""CLIP score and Fréchet distance (issue 19), offline: on the demo's own CLIP and shape renders."""

import json

import numpy as np
import pytest
from PIL import Image

from unclip.cli import main
from unclip.demo.shapes import write_dataset


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """Two sets of 24 shape renders at 64 px (different seeds), with their captions in metadata.jsonl."""
    root = tmp_path_factory.mktemp("renders")
    for seed in (0, 1):
        write_dataset(root / f"seed{seed}", 24, seed=seed, size=64, progress=False)
    return root


def _last_json(capsys) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    return json.loads(out[-1])


def test_images_score_higher_with_their_own_prompts(renders, tmp_path, capsys):
    assert main(["eval", "clip-score", str(renders / "seed0"), "--model", "demo"]) == 0
    own = _last_json(capsys)
    assert own["n"] == 24 and own["skipped"] == 0 and 0 < own["clip_score"] <= 1
    assert own["clip_score_x100"] == pytest.approx(100 * own["clip_score"], abs=0.01)
    rows = [json.loads(line) for line in (renders / "seed0" / "metadata.jsonl").read_text().splitlines()]
    captions = [row["text"][0] for row in sorted(rows, key=lambda row: row["file_name"])]
    shuffled = tmp_path / "shuffled.txt"
    shuffled.write_text("\n".join(captions[7:] + captions[:7]) + "\n")
    assert main(["eval", "clip-score", str(renders / "seed0"), "--prompts", str(shuffled)]) == 0
    assert _last_json(capsys)["clip_score"] < own["clip_score"] - 0.2


def test_renders_are_closer_to_renders_than_to_noise(renders, tmp_path, capsys):
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"{i:05d}.png")
    (noise / "00099.png").write_bytes(b"not a png")  # unreadable: skipped and counted
    assert main(["eval", "fd", str(renders / "seed0"), str(renders / "seed1"), "--features", "demo"]) == 0
    same = _last_json(capsys)
    assert main(["eval", "fd", str(renders / "seed0"), str(noise), "--features", "demo"]) == 0
    captured = capsys.readouterr()
    far = json.loads(captured.out.strip().splitlines()[-1])
    assert same["n_real"] == same["n_fake"] == 24 and far["n_fake"] == 24 and far["skipped"] == 1
    assert 0 <= same["fd"] < far["fd"] / 2, (same, far)
    assert "estimate is biased and unstable" in captured.err  # 24 images a side: said


def test_bad_metric_inputs_are_one_line_errors(renders, tmp_path, capsys):
    def error(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    bare = tmp_path / "bare"
    bare.mkdir()
    Image.new("RGB", (8, 8)).save(bare / "a.png")
    assert "no metadata.jsonl: give the prompts with --prompts" in error(["eval", "clip-score", str(bare)])
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert "has 2 prompts for 1 images" in error(
        ["eval", "clip-score", str(bare), "--prompts", str(tmp_path / "two.txt")]
    )
    missing = tmp_path / "pt_inception.pth"
    assert "no such weights file" in error(["eval", "fd", str(bare), str(bare), "--features", f"inception:{missing}"])
    assert "has no images" in error(["eval", "fd", str(tmp_path / "two.txt").replace("two.txt", ""), str(bare)])


def _fake_coco(root, renders) -> tuple:
    """MS-COCO's layout, tiny: val2014/COCO_val2014_<id>.jpg (not square, as COCO's) and
    annotations/captions_val2014.json with two captions an image; the renders' captions."""
    images, notes = root / "val2014", []
    images.mkdir(parents=True)
    (root / "annotations").mkdir()
    rows = [json.loads(line) for line in (renders / "seed1" / "metadata.jsonl").read_text().splitlines()]
    entries = []
    for image_id, row in enumerate(sorted(rows, key=lambda row: row["file_name"])[:10], start=1):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        with Image.open(renders / "seed1" / row["file_name"]) as picture:
            picture.convert("RGB").crop((0, 0, 64, 52)).save(images / name, quality=95)
        entries.append({"id": image_id, "file_name": name, "width": 64, "height": 52})
        for caption in row["text"][:2]:
            notes.append({"id": len(notes) + 100, "image_id": image_id, "caption": f" {caption}\n"})
    captions = root / "annotations" / "captions_val2014.json"
    captions.write_text(json.dumps({"images": entries, "annotations": notes}))
    return captions, images


def test_coco_protocol_end_to_end_on_a_tiny_fake_coco(renders, tmp_path, capsys):
    captions, images = _fake_coco(tmp_path / "coco", renders)
    out = tmp_path / "eval"
    argv = ["eval", "coco", "--captions", str(captions), "--images", str(images), "--model", "demo", "--n", "6",
            "--out", str(out), "--size", "64", "--seed", "3", "--quiet", "--decoder-steps", "8"]  # fmt: skip
    assert main(argv) == 0
    result = _last_json(capsys)
    assert result["n"] == result["n_fake"] == result["n_real"] == 6 and result["size"] == 64
    assert result["fd"] > 0 and 0 < result["clip_score"] <= 1 and result["real_missing"] == 0
    assert "CLIP image features of model demo" in result["features"]
    sample = [json.loads(line) for line in (out / "sample.jsonl").read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert len({row["image_id"] for row in sample}) == 6 and prompts == [row["caption"] for row in sample]
    assert all(p == p.strip() and "\n" not in p for p in prompts)  # captions tidied
    made = sorted(p.name for p in (out / "images").glob("*.png"))
    assert len(made) == 6 and json.loads((out / "coco.json").read_text())["fd"] == result["fd"]
    with Image.open(out / "images" / made[0]) as first:
        assert first.size == (64, 64)

    # Resumable: the same command makes nothing again and scores the same; a missing real image is counted.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    (images / sample[0]["file_name"]).unlink()
    assert main(argv) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert "made 0 images" in captured.err and "6 of 6 were already done" in captured.err
    assert before == {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    assert again["n_real"] == 5 and again["real_missing"] == 1 and again["clip_score"] == result["clip_score"]

    # Another draw in the same folder is refused; so is an --n the file cannot give.
    def error(extra) -> str:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        return err

    assert "holds a sample of other captions, --n or --seed" in error(["--seed", "4"])
    assert "--n 11: the captions file has 10 captioned images" in error(["--n", "11"])
    assert "no such folder" in error(["--images", str(tmp_path / "nowhere")])
    (tmp_path / "bad.json").write_text("{}")
    assert "is not a COCO captions file" in error(["--captions", str(tmp_path / "bad.json")])
