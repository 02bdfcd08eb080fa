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
