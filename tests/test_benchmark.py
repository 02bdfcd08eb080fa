"""The speed harness (scripts/benchmark.py, unclip.benchmarking) on tiny replicas: its CPU smoke test.
GPU numbers come from the same code on a GPU; none are asserted here."""

import json
import runpy
import tempfile
from pathlib import Path

import pytest
import torch

from unclip import UnCLIPCascade
from unclip.benchmarking import PRESETS, StageClock, call_kwargs, full_size_cascade, image_difference

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
STAGES = {"text", "prior", "decoder", "sr256", "sr1024"}


def _main():
    return runpy.run_path(str(SCRIPT))["main"]


def test_the_smoke_run_times_counts_and_compares_every_stage(tmp_path, capsys):
    report = tmp_path / "bench.json"
    argv = ["--tiny", "--preset", "smoke", "--runs", "1", "--warmup", "0", "--json", str(report)]
    assert _main()([*argv, "--speedups", "off", "split_guidance"]) == 0
    result = json.loads(report.read_text())
    assert [row["speedups"] for row in result["rows"]] == ["off", "split_guidance"]
    for row in result["rows"]:
        assert set(row["stages_s"]) == set(row["tflop"]) == STAGES
        assert all(t > 0 for t in row["stages_s"].values()) and sum(row["stages_s"].values()) <= row["total_s"] * 1.05
        assert all(f > 0 for f in row["tflop"].values()) and row["tflop"]["sr1024"] > row["tflop"]["decoder"]
        assert row["diffusers_s"] > 0 and row["speedup"] == pytest.approx(row["diffusers_s"] / row["total_s"])
        assert not row["vs_diffusers"]["nan"]
    # the same seed, the same picture as the diffusers chain (fp32 on CPU: as tests/test_parity.py) in its NCHW
    # layout; the CPU's NHWC default moves float rounding only (bounded as in tests/test_speedups.py)
    off, nhwc = (row["vs_diffusers"] for row in result["rows"])
    assert off["max_abs_diff"] < 1e-3 and nhwc["mean_abs_diff"] < 2e-3 and nhwc["max_abs_diff"] < 2 / 255
    assert result["rows"][1]["switches"] == "split_guidance=True"
    assert result["weights"] == "tiny replicas" and result["torch"] == torch.__version__
    printed = capsys.readouterr().out
    assert "| tiny replicas | smoke | float32 | off (host_timesteps=False, channels_last=False) | 1 |" in printed
    assert f"results: {report}" in printed


def test_the_image_difference_sees_a_change_and_nans():
    a = torch.rand(1, 3, 8, 8)
    assert image_difference(a, a) == {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "nan": False}
    b = a.clone()
    b[0, 0, 0, 0] += 0.5
    assert image_difference(b, a)["max_abs_diff"] == pytest.approx(0.5)
    b[0, 0, 0, 1] = float("nan")
    assert image_difference(b, a)["nan"] and image_difference(b, a)["max_abs_diff"] == float("inf")


def test_flops_are_counted_per_stage_and_scale_with_steps(cascade):
    settings = PRESETS["smoke"]()
    counts = []
    for steps in (2, 4):
        kwargs = {**call_kwargs(settings), "decoder_num_inference_steps": steps}
        with StageClock(cascade, count_flops=True) as counter:
            cascade("a cat", seed=0, size=256, **kwargs)
        counts.append(dict(counter.flops))
    assert counts[1]["decoder"] == pytest.approx(2 * counts[0]["decoder"], rel=0.01)  # one UNet pass a step
    assert counts[1]["sr256"] == counts[0]["sr256"] and "sr1024" not in counts[0]  # 256 px: no x4 stage
    assert "run_decoder" not in vars(cascade)  # the wrappers are gone once the clock is left


def test_replicas_built_from_configs_have_the_loaded_sizes(replica_root, cascade, tmp_path, monkeypatch):
    """full_size_cascade builds what the configs say; on the tiny replicas' configs, the tiny replicas' sizes. The
    tokenizer's files are written to a temporary folder that is gone once it is built (it used to stay in /tmp)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    built = full_size_cascade(replica_root, torch.float32, "cpu")
    assert list(tmp_path.iterdir()) == []
    assert built.tokenizer("a cat").input_ids == cascade.tokenizer("a cat").input_ids
    for name, module in cascade.components.items():
        if isinstance(module, torch.nn.Module):
            count = sum(p.numel() for p in module.parameters())
            assert sum(p.numel() for p in getattr(built, name).parameters()) == count, name
    assert built.tokenizer.pad_token == cascade.tokenizer.pad_token == "!" and built.max_noise_level == 350


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "full-size replicas need a CUDA GPU"),
        (["--tiny", "--json", "{existing}"], "exists: give a new --json file"),
        (["--tiny", "--model", "demo"], "give --tiny or --model, not both"),
        (["--model", "x"], "unknown model 'x'"),
        (["--model", "demo", "--preset", "smoke"], "add --no-diffusers"),
        (["--tiny", "--speedups", "faster"], "unknown speed-up preset 'faster'; choose from: off, default"),
        (["--tiny", "--offload", "--speedups", "default", "graphs"], "--offload and the compiling --speedups"),
    ],
)
def test_mistakes_are_one_line(argv, message, tmp_path, capsys):
    if torch.cuda.is_available() and not argv:
        pytest.skip("a GPU is here: the full-size run would start")
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    assert _main()([a.format(existing=existing) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_full_size_replicas_need_the_configs_folder(tmp_path):
    from unclip.errors import UnclipError

    with pytest.raises(UnclipError, match="no model_index.json: give --configs"):
        full_size_cascade(tmp_path, torch.float32, "cpu")


def test_loading_a_real_model_goes_through_from_config(model_yaml):
    args = runpy.run_path(str(SCRIPT))["parse_args"](["--model", str(model_yaml)])
    pipe, weights = runpy.run_path(str(SCRIPT))["load"](args, torch.device("cpu"), torch.float32)
    assert isinstance(pipe, UnCLIPCascade) and weights == str(model_yaml) and pipe.upscaler_layout == "x4"
