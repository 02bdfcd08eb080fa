"""Read the text side of a shapes cascade back without its decoder: the prior's z_i, classified by its own CLIP.

    python scripts/probe_prior.py --model demo --n 192
    python scripts/probe_prior.py --model runs/demo/prior/model.yaml --n 192 --prior-samples 4 --threads 1

For each of ``unclip eval shapes``'s prompts (``shapes.eval_prompts``: every form of the grammar and the ways it is
typed), the prior draws z_i from the prompt (the model's sampling settings, seed 0 + k as the pipeline's image k),
and each attribute the prompt says is read off z_i zero-shot: the cascade's text tower embeds every caption that
says every part (``clip_zero_shot.all_attributes``: 1,680 classes), and a value's score is the log-sum-exp of
``--logit-scale`` × cosine over the classes with that value (as ``unclip.demo.clip_zero_shot`` scores images).
Two rows per group: ``prior`` (z_i drawn from the prompt) and ``render`` (z_i of a clean render of the prompt's
scene by the cascade's CLIP image tower: what the classifier makes of a right z_i). Where ``render`` is right and
``prior`` wrong, the text side lost the attribute; where both are right and ``unclip eval shapes`` is wrong, the
decoder did. Prints a table per form, held-out pairs apart; ``--report FILE`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from unclip.errors import UnclipError

# the rows of the table: some of ``unclip.demo.eval.GROUPS`` (whose predicates pick the prompts of each)
GROUPS = ("overall", "says size, position", "says size", "says position", "says neither", "held out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probe_prior.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo", help="a preset or model.yaml with a prior (%(default)s)")
    parser.add_argument("--n", type=int, default=192, help="evaluation prompts (%(default)s)")
    parser.add_argument("--prior-samples", type=int, help="best-of-n prior (default: the model config's)")
    parser.add_argument("--logit-scale", type=float, default=100.0, help="CLIP's clamp, as trained (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per prior call (%(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--report", type=Path, help="write the table as JSON here")
    return parser


def classify(z: torch.Tensor, classes_z: torch.Tensor, classes, scale: float) -> list[dict[str, str]]:
    """Each row of ``z`` read as the attributes of its best-scoring value per attribute (marginalised logits)."""
    from unclip.demo.clip_zero_shot import best_values

    logits = scale * torch.nn.functional.normalize(z.float(), dim=-1) @ classes_z.T
    best = best_values(logits, classes)
    return [{name: values[k] for name, values in best.items()} for k in range(len(z))]


def said(attributes) -> list[str]:
    """The attributes a prompt says (size and position only when said)."""
    names = ["colour", "shape", "background"]
    if attributes.size is not None:
        names.append("size")
    if attributes.position != "anywhere":
        names.append("position")
    return names


def table(prompts, readings: dict[str, list[dict[str, str]]]) -> dict[str, dict[str, dict[str, float | int]]]:
    """{row: {group: {attribute: accuracy, "n": prompts}}} over the attributes each prompt says."""
    from unclip.demo.eval import GROUPS as MEMBER
    from unclip.demo.shapes import ATTRIBUTES

    result: dict[str, dict[str, dict[str, float | int]]] = {}
    for row, read in readings.items():
        result[row] = {}
        for group in GROUPS:
            picked = [(a, r) for a, r in zip(prompts, read, strict=True) if MEMBER[group](a)]
            cells: dict[str, float | int] = {"n": len(picked)}
            for name in ATTRIBUTES:
                asked = [r[name] == getattr(a, name) for a, r in picked if name in said(a)]
                if asked:
                    cells[name] = round(sum(asked) / len(asked), 4)
            result[row][group] = cells
    return result


def format_table(result) -> str:
    from unclip.demo.shapes import ATTRIBUTES

    lines = [f"| row | group | n | {' | '.join(ATTRIBUTES)} |", "|---|---|---|" + "---|" * len(ATTRIBUTES)]
    for row, groups in result.items():
        for group, cells in groups.items():
            values = " | ".join(f"{cells[a]:.1%}" if a in cells else "" for a in ATTRIBUTES)
            lines.append(f"| {row} | {group} | {cells['n']} | {values} |")
    return "\n".join(lines)


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    from unclip import UnCLIPCascade
    from unclip.demo import shapes
    from unclip.demo.clip_zero_shot import all_attributes
    from unclip.stages.base import StageInputs

    pipe = UnCLIPCascade.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts = shapes.eval_prompts(args.n)
    classes = all_attributes()
    classes_z = torch.cat(
        [pipe.encode_text([c.caption for c in classes[i : i + 256]]).embeds for i in range(0, len(classes), 256)]
    )
    classes_z = torch.nn.functional.normalize(classes_z.float(), dim=-1)
    plan = pipe.plan(64, stage_args={"prior_samples": args.prior_samples})
    guided = plan.settings["prior"].guidance not in (None, 0, 1)
    drawn = []
    for start in range(0, len(prompts), args.batch_size):
        batch = [a.caption for a in prompts[start : start + args.batch_size]]
        generators = [torch.Generator("cpu").manual_seed(start + k) for k in range(len(batch))]
        text = pipe.encode_text(batch, [""] * len(batch) if guided else None)
        inputs = StageInputs(generators, text, prompts=batch, negatives=[""] * len(batch))
        drawn.append(pipe.run_stage("prior", None, inputs, plan))
    renders = [
        torch.from_numpy(shapes.render(shapes.place(a, np.random.default_rng([0, k])), 256)).permute(2, 0, 1) / 255
        for k, a in enumerate(prompts)
    ]
    rendered = torch.cat([pipe.encode_image(torch.stack(renders[i : i + 64])) for i in range(0, len(renders), 64)])
    readings = {
        "prior": classify(torch.cat(drawn), classes_z, classes, args.logit_scale),
        "render": classify(rendered, classes_z, classes, args.logit_scale),
    }
    return {
        "model": str(args.model),
        "n": len(prompts),
        "prior_samples": plan.settings["prior"].samples,
        "table": table(prompts, readings),
        "prompts": [
            {"caption": a.caption, **{row: read[k] for row, read in readings.items()}} for k, a in enumerate(prompts)
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.n < 1:
            raise UnclipError(f"--n must be at least 1, got {args.n}")
        result = run(args)
    except UnclipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(result["table"]))
    if args.report:
        args.report.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
