"""Stable ids and seeds of a batch run (`unclip.batch.plan`)."""

import pytest

from unclip.batch.plan import SEED_STRIDE, plan
from unclip.batch.prompts import PromptRow
from unclip.errors import UnclipError


def test_ids_and_seeds_follow_row_and_index():
    rows = [PromptRow(0, 2, "a cat"), PromptRow(1, 3, "a dog", seed=77, num_images=2), PromptRow(2, 5, "a fox")]
    jobs = plan(rows, num_images=3, seed=5)
    assert [(j.id, j.seed) for j in jobs] == [
        ("00000-0000", 5),
        ("00000-0001", 6),
        ("00000-0002", 7),
        ("00001-0000", 77),
        ("00001-0001", 78),
        ("00002-0000", 5 + 2 * SEED_STRIDE),
        ("00002-0001", 5 + 2 * SEED_STRIDE + 1),
        ("00002-0002", 5 + 2 * SEED_STRIDE + 2),
    ]
    assert jobs[0].file_name == "00000-0000.png" and jobs[3].prompt == "a dog"


def test_appending_rows_keeps_earlier_ids_and_seeds():
    rows = [PromptRow(0, 1, "a cat"), PromptRow(1, 2, "a dog")]
    before = plan(rows, num_images=2, seed=0)
    after = plan([*rows, PromptRow(2, 3, "a fox")], num_images=2, seed=0)
    assert after[: len(before)] == before


def test_overrides_reach_the_jobs():
    (job,) = plan([PromptRow(0, 1, "a cat", negative_prompt="dog", steps=9, guidance=2.5, size=256)], 1, 0)
    assert (job.negative_prompt, job.steps, job.guidance, job.size) == ("dog", 9, 2.5, 256)


def test_limits():
    with pytest.raises(UnclipError, match="--num-images must be between 1 and"):
        plan([PromptRow(0, 1, "a")], num_images=SEED_STRIDE + 1, seed=0)
    with pytest.raises(UnclipError, match="line 4: num_images must be ≤"):
        plan([PromptRow(0, 4, "a", num_images=SEED_STRIDE + 1)], num_images=1, seed=0)
    with pytest.raises(UnclipError, match="--seed must be ≥ 0"):
        plan([PromptRow(0, 1, "a")], num_images=1, seed=-1)
