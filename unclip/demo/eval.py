"""The shapes benchmark (`unclip eval shapes`): generate the evaluation prompts with a cascade, read each image
back with the pixel checker, and report accuracy per attribute, overall and on the held-out combinations.

    from unclip import UnCLIPCascade
    from unclip.demo.eval import evaluate, format_table, write_report
    from unclip.demo.shapes import eval_prompts

    pipe = UnCLIPCascade.from_pretrained("demo")            # or a trained model.yaml
    evaluation = evaluate(pipe, eval_prompts(96), seed=0, size=64, batch_size=16)
    print(format_table(evaluation.summary()))   # rows: overall, seen, held out, each held-out pair, form, style;
                                                # columns: accuracy per attribute and all, the mean edge width (px)
    write_report(evaluation.report(), default=Path("eval-shapes.json"))   # never overwrites: -2, -3 ...

Image k (in prompt order) is made with seed ``seed + k``, as `unclip generate` makes it, whatever the batch size.
Each image is read at the size it was generated (64, 256 or 1024 px). ``edge`` is the mean edge width in pixels
of that size (``unclip.demo.checker``: the band between 20 % and 80 % of the way from background to shape colour,
per pixel of outline; a clean render ≈ 0.5, bicubic 4× from a clean render ≈ 2.5), over the images where a
shape was found: how sharp the last stage draws.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from unclip.demo.checker import Check, check
from unclip.demo.shapes import ATTRIBUTES, EVAL_SEED, FORMS, HELD_OUT, STYLES, Attributes
from unclip.errors import UnclipError

# summary row → which images it counts: all, the seen and held-out pairs, each held-out pair, each form of the
# grammar (which optional parts the prompt says) and each style it is typed in
GROUPS: dict[str, Callable[[Attributes], bool]] = {
    "overall": lambda a: True,
    "seen": lambda a: not a.held_out,
    "held out": lambda a: a.held_out,
    **{f"{colour} {shape}": (lambda a, c=colour, s=shape: (a.colour, a.shape) == (c, s)) for colour, shape in HELD_OUT},
    **{f"says {form}": (lambda a, f=form: a.form == f) for form in FORMS},
    **{f"typed {style}": (lambda a, s=style: a.style == s) for style in STYLES},
}
COLUMNS = (*ATTRIBUTES, "all")
EDGE = "edge"  # the summary's mean edge width column (px)


@dataclass
class Record:
    """One generated image: its prompt, seed, the checker's verdict, and its file when saved."""

    seed: int
    check: Check
    file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.check.expected.caption, "seed": self.seed, "file": self.file, **self.check.to_json()}


@dataclass
class Evaluation:
    records: list[Record]
    settings: dict[str, Any] = field(default_factory=dict)  # model, size, dtype, device, per-stage settings

    def summary(self) -> dict[str, dict[str, Any]]:
        """Group (``GROUPS``) → ``n`` and the fraction right per attribute, of the images whose prompt asked for it
        (position: "in the ..."; size: the size word), and for ``all`` (None when none asked); ``edge``: the mean
        edge width in pixels of the images where a shape was found (None: none)."""
        table = {}
        for name, member in GROUPS.items():
            checks = [r.check for r in self.records if member(r.check.expected)]
            row: dict[str, Any] = {"n": len(checks)}
            for column in COLUMNS:
                asked = [c.all if column == "all" else c.correct[column] for c in checks]
                right = [value for value in asked if value is not None]  # what the prompt did not say: not counted
                row[column] = sum(right) / len(right) if right else None
            widths = [c.detected.edge_width for c in checks if c.detected.shape is not None]
            row[EDGE] = round(sum(widths) / len(widths), 3) if widths else None
            table[name] = row
        return table

    def report(self) -> dict[str, Any]:
        return {
            "benchmark": "shapes",
            "prompt_seed": EVAL_SEED,
            **self.settings,
            "summary": self.summary(),
            "images": [r.to_json() for r in self.records],
        }


def evaluate(
    pipe,
    prompts: list[Attributes],
    *,
    seed: int = 0,
    size: int = 64,
    batch_size: int = 16,
    save: Callable[[list, list[dict[str, Any]]], list[Path]] | None = None,
    progress: bool = True,
    **call_kwargs,
) -> Evaluation:
    """Generate each prompt's caption once (``batch_size`` prompts a call) and check the image against it.

    ``save(images, metadata)`` (e.g. ``unclip.outputs.save_images`` bound to a folder) writes the images;
    each metadata dict then carries the check. ``call_kwargs`` go to the pipeline (steps, guidance, scheduler).
    """
    records: list[Record] = []
    settings: dict[str, Any] = {}
    with tqdm(total=len(prompts), desc="eval shapes", unit="image", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            result = pipe([a.caption for a in batch], seed=seed + start, size=size, **call_kwargs)
            checks = [check(image, a) for image, a in zip(result.images, batch, strict=True)]
            files: list[str | None] = [None] * len(batch)
            if save is not None:
                for meta, verdict in zip(result.metadata, checks, strict=True):
                    meta["check"] = verdict.to_json()
                files = [str(path) for path in save(result.images, result.metadata)]
            records += [
                Record(meta["seed"], verdict, file)
                for meta, verdict, file in zip(result.metadata, checks, files, strict=True)
            ]
            if not settings:
                settings = {"seed": seed, "n": len(prompts)}
                settings.update({k: result.metadata[0][k] for k in ("model", "size", "dtype", "device", "stages")})
            bar.update(len(batch))
    return Evaluation(records, settings)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a fixed-width text table: a row per group, a column per attribute and ``all``."""
    header = ["", "n", *COLUMNS, "edge px"]
    rows = [
        [
            name,
            str(row["n"]),
            *(_percent(row[c]) for c in COLUMNS),
            "-" if row.get(EDGE) is None else f"{row[EDGE]:.2f}",
        ]
        for name, row in summary.items()
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def check_report_path(path: Path) -> Path:
    """Refuse, before any work, a ``--report`` that exists (reports are never overwritten) or cannot be made."""
    if path.exists():
        raise UnclipError(f"report {path} already exists: give another --report (nothing is overwritten)")
    if not path.parent.is_dir():
        raise UnclipError(f"the folder of --report {path} does not exist: create it or choose another path")
    return path


def write_report(report: dict[str, Any], path: Path | None = None, default: Path = Path("eval-shapes.json")) -> Path:
    """Write ``report`` as JSON to ``path`` (which must not exist), or to ``default`` or the first free
    ``<stem>-2.json``, ``<stem>-3.json`` ... beside it. Never overwrites; returns the path written."""
    text = json.dumps(report, indent=2) + "\n"
    candidates = (
        [path] if path is not None else [default] + [default.with_stem(f"{default.stem}-{k}") for k in range(2, 10_000)]
    )
    for candidate in candidates:
        try:
            with open(candidate, "x", encoding="utf-8") as handle:  # exclusive: never overwrite
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            return candidate
        except FileExistsError:
            if path is not None:
                raise UnclipError(
                    f"report {path} already exists: give another --report (nothing is overwritten)"
                ) from None
    raise UnclipError(f"no free report name beside {default}: give --report")
