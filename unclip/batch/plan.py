"""What a batch run makes: one ``Job`` per image, with a stable id and seed, from the prompt rows.

    from unclip.batch.plan import plan
    jobs = plan(read_prompts("prompts.txt"), num_images=3, seed=0)
    jobs[4].id, jobs[4].seed            # "00001-0001", 10001

Image ``index`` (from 0) of prompt ``row`` (from 0, in file order) has the id ``f"{row:05d}-{index:04d}"`` (its
PNG is ``<id>.png``) and the seed

    row.seed + index                   if the row sets a seed
    seed + SEED_STRIDE * row + index   otherwise (seed: --seed)

so it is remade alone by ``unclip generate PROMPT --seed <that seed>`` with the same settings, and adding
rows at the end of the file (``--append``) leaves every earlier image's id and seed as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from unclip.batch.prompts import PromptRow
from unclip.errors import UnclipError

SEED_STRIDE = 10_000  # the most images one row may ask for


@dataclass(frozen=True)
class Job:
    row: int
    index: int
    prompt: str
    seed: int
    negative_prompt: str | None = None
    steps: int | None = None  # the decoder's; None: the command's or the model's
    guidance: float | None = None
    size: int | None = None

    @property
    def id(self) -> str:
        return f"{self.row:05d}-{self.index:04d}"

    @property
    def file_name(self) -> str:
        return f"{self.id}.png"


def image_seed(row: PromptRow, index: int, seed: int) -> int:
    return row.seed + index if row.seed is not None else seed + SEED_STRIDE * row.row + index


def plan(rows: list[PromptRow], num_images: int, seed: int) -> list[Job]:
    """Every image of the run, row by row; per-row ``num_images``, ``seed``, ``negative_prompt``, ``steps``,
    ``guidance`` and ``size`` override the command's."""
    if not 1 <= num_images <= SEED_STRIDE:
        raise UnclipError(f"--num-images must be between 1 and {SEED_STRIDE}, got {num_images}")
    if seed < 0:
        raise UnclipError(f"--seed must be ≥ 0, got {seed}")
    jobs = []
    for row in rows:
        count = row.num_images if row.num_images is not None else num_images
        if count > SEED_STRIDE:
            raise UnclipError(f"line {row.line}: num_images must be ≤ {SEED_STRIDE}, got {count}")
        for index in range(count):
            jobs.append(
                Job(
                    row=row.row,
                    index=index,
                    prompt=row.prompt,
                    seed=image_seed(row, index, seed),
                    negative_prompt=row.negative_prompt,
                    steps=row.steps,
                    guidance=row.guidance,
                    size=row.size,
                )
            )
    return jobs
