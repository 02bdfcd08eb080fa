"""The batch loop of one process: its shard of the unfinished jobs, in batches across prompts.

    from unclip.batch.run import run_shard
    summary = run_shard(pipe, todo, out, batch_size=8, rank=0, world=1)

Jobs that share their stage settings (size, decoder steps and guidance) are batched together, whatever their
prompt, up to ``batch_size`` images a call; each image gets its own ``torch.Generator("cpu").manual_seed(seed)``,
so it is the image ``unclip generate PROMPT --seed SEED`` makes (up to the float rounding of batched matrix
products). A CUDA out-of-memory error halves the batch and retries (logged); at 1 image it is raised.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import torch

from unclip.batch.plan import Job
from unclip.batch.store import append_line, write_image

logger = logging.getLogger(__name__)


@dataclass
class ShardSummary:
    images: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)  # after each out-of-memory halving


def shard(todo: list[Job], rank: int, world: int) -> list[Job]:
    """Process ``rank``'s jobs: every ``world``-th, so shards are disjoint and balanced."""
    return todo[rank::world]


def _settings(job: Job) -> tuple:
    return (job.size, job.steps, job.guidance)


def _chunks(jobs: list[Job], batch_size: int):
    """Consecutive jobs with equal settings, ``batch_size`` at most a chunk (order kept)."""
    for _, same in groupby(jobs, key=_settings):
        same = list(same)
        for start in range(0, len(same), batch_size):
            yield same[start : start + batch_size]


def generate(pipe, jobs: list[Job], call_kwargs: dict[str, Any], stamp=None):
    """One cascade call for ``jobs`` (equal settings): their images and metadata lines (plus ``stamp(job)``)."""
    first = jobs[0]
    kwargs = dict(call_kwargs)
    if first.size is not None:
        kwargs["size"] = first.size
    if first.steps is not None:
        kwargs["decoder_num_inference_steps"] = first.steps
    if first.guidance is not None:
        kwargs["decoder_guidance_scale"] = first.guidance
    default_negative = kwargs.pop("negative_prompt", None)
    result = pipe(
        [j.prompt for j in jobs],
        negative_prompt=[j.negative_prompt if j.negative_prompt is not None else default_negative for j in jobs],
        generator=[torch.Generator("cpu").manual_seed(j.seed) for j in jobs],
        **kwargs,
    )
    lines = []
    for job, meta in zip(jobs, result.metadata, strict=True):
        meta = {**meta, "seed": job.seed, "index": job.index}
        extra = stamp(job) if stamp is not None else {}
        lines.append({"file_name": job.file_name, "id": job.id, "row": job.row, "text": job.prompt, **meta, **extra})
    return result.images, lines


def run_shard(
    pipe,
    jobs: list[Job],
    out: Path,
    *,
    batch_size: int,
    rank: int = 0,
    call_kwargs: dict[str, Any] | None = None,
    on_images=None,
    stamp=None,
) -> ShardSummary:
    """Make and write ``jobs`` (this process's shard); ``on_images(n)`` after each batch is written;
    ``stamp(job)``: more keys for the job's metadata line."""
    summary = ShardSummary(batch_sizes=[batch_size])
    start = time.perf_counter()
    pending = list(jobs)
    while pending:
        chunk = next(_chunks(pending, batch_size))
        try:
            images, lines = generate(pipe, chunk, call_kwargs or {}, stamp)
        except torch.cuda.OutOfMemoryError:
            if batch_size == 1:
                raise
            batch_size = max(1, batch_size // 2)
            summary.batch_sizes.append(batch_size)
            logger.warning("CUDA out of memory: batch size halved to %d, retrying", batch_size)
            torch.cuda.empty_cache()
            continue
        for image, line in zip(images, lines, strict=True):
            write_image(out, line["id"], image, line)
            append_line(out, rank, line)
        pending = pending[len(chunk) :]  # a chunk is always the head of what is pending
        summary.images += len(chunk)
        if on_images is not None:
            on_images(len(chunk))
    summary.seconds = time.perf_counter() - start
    return summary
