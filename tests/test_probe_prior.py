"""scripts/probe_prior.py: the text side of the shipped demo read back from z_i, per form of the grammar."""

import json
import runpy
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "probe_prior.py"


def test_the_prior_probe_reads_z_i_per_form_and_clean_renders_right(tmp_path, capsys):
    main = runpy.run_path(str(SCRIPT))["main"]
    out = tmp_path / "probe.json"
    assert main(["--model", "demo", "--n", "8", "--threads", "1", "--report", str(out)]) == 0
    report = json.loads(out.read_text())
    forms = [g for g in report["table"]["prior"] if g.startswith("says ")]
    assert sum(report["table"]["prior"][g]["n"] for g in forms) == 8 == report["table"]["prior"]["overall"]["n"]
    # the classifier itself: a clean render's z_i reads back its background and place, and its colour but for one
    # (the demo of 2026-12-05 on all 192 prompts: colour 99.0 %, position and background 100 %)
    render = report["table"]["render"]["overall"]
    assert render["background"] == render["position"] == 1.0 and render["colour"] >= 7 / 8, render
    # only what a prompt says is scored: neither size nor position of the forms that leave them out
    assert "size" not in report["table"]["prior"]["says position"]
    assert "position" not in report["table"]["prior"]["says size"]
    assert len(report["prompts"]) == 8 and set(report["prompts"][0]) == {"caption", "prior", "render"}
    assert "| prior | overall | 8 |" in capsys.readouterr().out
    assert main(["--n", "0"]) == 2
    assert "--n must be at least 1" in capsys.readouterr().err
