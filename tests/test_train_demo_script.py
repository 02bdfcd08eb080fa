"""`scripts/train_demo.sh export` skips only when models/demo is what it last exported from the same runs.

The script runs as written in a scratch tree whose scripts/export_demo.py is a stand-in that records each call and
writes a whole export; the runs are a few small files. What is checked is the step's freshness test, which once
compared mtimes and so skipped after `git checkout -- models/demo` (the shipped files newer than every run).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the decoder phase the export reads, as the script names it
DECODER = re.search(r"^DECODER=(\S+)", (ROOT / "scripts" / "train_demo.sh").read_text(), re.M).group(1)

FAKE_EXPORT = """
import sys
from pathlib import Path

args = sys.argv[1:]
out = Path(args[args.index("--out") + 1])
with open("calls.txt", "a") as calls:
    calls.write(" ".join(args) + "\\n")
source = Path(args[0]).parent
out.mkdir(parents=True, exist_ok=True)
(out / "decoder.safetensors").write_bytes((source / "weights.safetensors").read_bytes())
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    if shutil.which("bash") is None or shutil.which("sha256sum") is None:
        pytest.skip("needs bash and sha256sum (coreutils)")
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "train_demo.sh", tmp_path / "scripts" / "train_demo.sh")
    (tmp_path / "scripts" / "export_demo.py").write_text(FAKE_EXPORT)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "demo.yaml").write_text("unclip: ../models/demo/unclip\n")
    run = tmp_path / "runs" / "demo" / DECODER
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.yaml").write_text("unclip: unclip\n")
    (run / "weights.safetensors").write_bytes(b"decoder run, first")
    (tmp_path / "runs" / "demo" / "clip").mkdir()
    (tmp_path / "runs" / "demo" / "clip" / "clip.safetensors").write_bytes(b"clip")
    shipped = tmp_path / "models" / "demo"
    shipped.mkdir(parents=True)
    (shipped / "model.yaml").write_text("unclip: unclip  # shipped\n")
    (shipped / "decoder.safetensors").write_bytes(b"shipped decoder")
    return tmp_path


def export(tree: Path) -> int:
    """Run the step; how many times the export ran in all."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", "scripts/train_demo.sh", "export"], cwd=tree, env=env, check=True, capture_output=True)
    calls = tree / "calls.txt"
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_export_reruns_after_a_checkout_and_skips_when_fresh(tree: Path):
    assert export(tree) == 1
    shipped = tree / "models" / "demo"
    assert (shipped / "decoder.safetensors").read_bytes() == b"decoder run, first"
    assert (shipped / "model.yaml").read_text() == "unclip: unclip\n"  # the demo's settings, made relative
    assert "--upsamplers models/demo/model.yaml" in (tree / "calls.txt").read_text()  # no upsampler runs here
    assert export(tree) == 1  # nothing changed: skipped
    # `git checkout -- models/demo`: the shipped files come back, newer than every run
    (shipped / "decoder.safetensors").write_bytes(b"shipped decoder")
    assert export(tree) == 2
    assert (shipped / "decoder.safetensors").read_bytes() == b"decoder run, first"
    assert export(tree) == 2


def test_export_reruns_for_a_changed_run_older_than_the_export(tree: Path):
    assert export(tree) == 1
    weights = tree / "runs" / "demo" / DECODER / "weights.safetensors"
    weights.write_bytes(b"decoder run, second")
    os.utime(weights, (0, 0))  # older than models/demo: an mtime test would call the export fresh
    (tree / "runs" / "demo" / DECODER / "checkpoints" / "state.bin").write_bytes(b"a checkpoint")  # not read
    assert export(tree) == 2
    assert (tree / "models" / "demo" / "decoder.safetensors").read_bytes() == b"decoder run, second"
    (tree / "runs" / "demo" / DECODER / "checkpoints" / "state.bin").write_bytes(b"the next checkpoint")
    assert export(tree) == 2  # the export does not read checkpoints: still fresh


def test_export_without_a_decoder_run_keeps_the_shipped_demo(tree: Path):
    shutil.rmtree(tree / "runs" / "demo" / DECODER)
    assert export(tree) == 0
    assert (tree / "models" / "demo" / "decoder.safetensors").read_bytes() == b"shipped decoder"
