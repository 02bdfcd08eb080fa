"""`unclip generate` as a user runs it: PNGs with parameters, metadata.jsonl, and one-line errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_model_yaml
from PIL import Image

from unclip.cli import main

FAST = ["--prior-steps", "3", "--decoder-steps", "3", "--sr-steps", "2", "--upscale-steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def user_yaml(tmp_path_factory, karlo_dir, x4_dir):
    """A user's copy of configs/karlo-x4.yaml with local folders, living elsewhere."""
    return write_model_yaml(tmp_path_factory.mktemp("user") / "my-karlo-x4.yaml", karlo_dir, x4_dir)


@pytest.mark.parametrize("size", ["64", "256", "1024"])
def test_generate_writes_pngs_with_metadata(tmp_path, user_yaml, size, capsys):
    out = tmp_path / "out"
    argv = ["generate", "a corgi playing a trumpet", "--model", str(user_yaml), "--out", str(out), "--seed", "3"]
    assert main(argv + ["--num-images", "2", "--size", size, *FAST]) == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000-3.png", "00001-4.png"]
    image = Image.open(files[1])
    assert image.size == (int(size), int(size))
    parameters = image.text["parameters"]
    assert parameters.startswith("a corgi playing a trumpet\n") and "Seed: 4" in parameters
    assert f"Size: {size}x{size}" in parameters
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(m["file_name"], m["seed"], m["size"]) for m in lines] == [
        ("00000-3.png", 3, int(size)),
        ("00001-4.png", 4, int(size)),
    ]
    assert str(files[0]) in capsys.readouterr().out


def test_speedups_are_applied_and_recorded(tmp_path, user_yaml):
    out = tmp_path / "out"
    argv = ["generate", "a cat", "--model", str(user_yaml), "--out", str(out), "--size", "64", *FAST]
    assert main(argv) == 0 and main([*argv, "--speedups", "split_guidance"]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert "speedups" not in lines[0] and lines[1]["speedups"] == "split_guidance=True"
    default, split = (np.asarray(Image.open(out / line["file_name"]), dtype=int) for line in lines)
    assert np.abs(default - split).mean() < 0.5  # the same picture, up to float rounding


def test_never_overwrites_and_images_remake_alone(tmp_path, user_yaml):
    out = tmp_path / "out"
    base = ["generate", "a cat", "--model", str(user_yaml), "--out", str(out), "--size", "64", *FAST]
    assert main(base + ["--seed", "0", "--num-images", "2"]) == 0
    first = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert main(base + ["--seed", "1"]) == 0  # image 1 of the first run, made alone
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["00000-0.png", "00001-1.png", "00002-1.png"]
    assert all((out / name).read_bytes() == data for name, data in first.items())
    batched, alone = (np.asarray(Image.open(out / name), dtype=int) for name in ("00001-1.png", "00002-1.png"))
    # Equal up to float rounding (see test_batch_equals_single), which random tiny weights can amplify to a
    # few grey levels in a few pixels; another seed's image would differ everywhere, by ~100 levels.
    difference = np.abs(batched - alone)
    assert difference.max() <= 4 and difference.mean() < 0.1 and (difference > 0).mean() < 0.05
    assert np.abs(batched - np.asarray(Image.open(out / "00000-0.png"), dtype=int)).mean() > 5
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 3


def test_two_prompts_number_seeds_across_the_run(tmp_path, user_yaml):
    out = tmp_path / "out"
    argv = ["generate", "a cat", "a dog", "--model", str(user_yaml), "--out", str(out), "--size", "64", "--seed", "10"]
    assert main(argv + ["--num-images", "2", *FAST]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(m["prompt"], m["seed"]) for m in lines] == [("a cat", 10), ("a cat", 11), ("a dog", 12), ("a dog", 13)]


def _error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--size", "512"], "invalid choice"),
        (["--prior-steps", "0"], "--prior-steps: must be a whole number ≥ 1, got 0"),
        (["--decoder-steps", "1"], "decoder: the UnCLIP scheduler needs steps ≥ 2"),
        (["--decoder-guidance", "-2"], "--decoder-guidance: must be a number ≥ 0"),
        (["--scheduler", "euler-magic"], "unknown scheduler 'euler-magic'"),
        (["--scheduler", "vae=ddim"], "unknown stage 'vae'"),
        (["--dtype", "fp16", "--device", "cpu"], "fp16 needs a CUDA GPU"),
        (["--attention", "xformers", "--device", "cpu"], "xformers"),
        (["--offload", "--device", "cpu"], "needs --device cuda"),
        (["--offload", "--speedups", "graphs"], "--offload and --speedups graphs (it compiles models) don't mix"),
        (["--speedups", "turbo"], "invalid choice: 'turbo'"),
    ],
)
def test_bad_flags(tmp_path, user_yaml, capsys, extra, message):
    err = _error(capsys, ["generate", "a cat", "--model", str(user_yaml), "--out", str(tmp_path / "o"), *FAST, *extra])
    assert message in err


def test_bad_inputs(tmp_path, user_yaml, karlo_dir, capsys):
    out = ["--out", str(tmp_path / "o")]
    assert "prompt is empty" in _error(capsys, ["generate", "  ", "--model", str(user_yaml), *out])
    assert "unknown model 'nope'" in _error(capsys, ["generate", "a cat", "--model", "nope", *out])
    assert "does not exist" in _error(capsys, ["generate", "a cat", "--model", str(tmp_path / "missing.yaml"), *out])
    (tmp_path / "empty").mkdir()
    bad_layout = write_model_yaml(tmp_path / "bad.yaml", tmp_path / "empty", None)
    assert "no model_index.json" in _error(capsys, ["generate", "a cat", "--model", str(bad_layout), *out])
    (tmp_path / "a-file").write_text("")
    assert "not writable" in _error(
        capsys, ["generate", "a cat", "--model", str(user_yaml), "--out", str(tmp_path / "a-file" / "o")]
    )
    (tmp_path / "hub.yaml").write_text("unclip: kakaobrain/karlo-v1-alpha\n")
    assert "HF_HUB_OFFLINE" in _error(capsys, ["generate", "a cat", "--model", str(tmp_path / "hub.yaml"), *out])
    karlo_only = write_model_yaml(tmp_path / "k.yaml", karlo_dir, None)
    assert "needs an upscaler" in _error(
        capsys, ["generate", "a cat", "--model", str(karlo_only), "--size", "1024", *out]
    )


def test_long_prompt_warns_once(tmp_path, user_yaml, capsys):
    argv = [
        "generate",
        "a very " * 60 + "long prompt",
        "--model",
        str(user_yaml),
        "--out",
        str(tmp_path),
        "--size",
        "64",
    ]
    assert main(argv + FAST) == 0
    err = capsys.readouterr().err
    assert err.count("warning: prompt truncated") == 1


def test_the_real_command_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "unclip.cli", "generate", "a cat", "--model", "nope", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown model 'nope'") and "Traceback" not in done.stderr


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = capsys.readouterr().out
    assert "(default: demo)" in text and "Karlo's: 25" in text and "(default: sdpa)" in text
