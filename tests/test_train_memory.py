"""scripts/train_memory.py (the trainer's peak GPU memory per fine-tuning preset) on tiny replicas: its CPU smoke
test. The memory itself is measured on a GPU (docs/benchmarks.md); none is asserted here."""

import json
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_memory.py"


def _main():
    return runpy.run_path(str(SCRIPT))["main"]


def test_each_preset_trains_its_steps_at_each_batch_size(tmp_path, capsys):
    from accelerate import Accelerator

    Accelerator(mixed_precision="no", cpu=True)  # as an earlier in-process run leaves it: each preset gets its own
    report = tmp_path / "memory.json"
    argv = ["--tiny", "--presets", "karlo-decoder-lora", "karlo-sr256", "--batch", "1", "2", "--steps", "2"]
    assert _main()([*argv, "--json", str(report)]) == 0
    rows = json.loads(report.read_text())["rows"]
    got = [(r["preset"], r["stage"], r["lora_rank"], r["batch"], r["steps"], r["mixed_precision"]) for r in rows]
    assert got == [
        ("karlo-decoder-lora", "decoder", 16, 1, 2, "bf16"),
        ("karlo-decoder-lora", "decoder", 16, 2, 2, "bf16"),
        ("karlo-sr256", "sr256", 0, 1, 2, "bf16"),
        ("karlo-sr256", "sr256", 0, 2, 2, "bf16"),
    ]
    assert all(r["peak_memory_gib"] is None and torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    printed = capsys.readouterr().out
    assert "| karlo-decoder-lora | decoder | LoRA r=16 | bf16 | no | 2 |" in printed


def test_the_real_size_run_needs_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real-size run would start")
    assert _main()(["--presets", "karlo-decoder-lora"]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err and "--tiny" in err and "Traceback" not in err


def test_an_unknown_preset_is_one_line_naming_the_presets(capsys):
    assert _main()(["--tiny", "--presets", "karlo-decoder-lora", "karlo-nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown training preset 'karlo-nope'" in err and "karlo-decoder-lora" in err and "Traceback" not in err
