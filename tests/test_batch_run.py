"""The batch loop (`unclip.batch.run`): batches across prompts, per-image seeds, out-of-memory halving."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import unclip
from unclip.batch.plan import plan
from unclip.batch.prompts import PromptRow
from unclip.batch.run import run_shard, shard
from unclip.batch.store import repair

FAST = dict(prior_num_inference_steps=3, decoder_num_inference_steps=3, size=64)


def _jobs():
    rows = [PromptRow(0, 1, "a cat"), PromptRow(1, 2, "a dog", negative_prompt="blurry"), PromptRow(2, 3, "a fox")]
    return plan(rows, num_images=2, seed=3)


def test_images_are_the_ones_generate_makes_alone(cascade, tmp_path):
    jobs = _jobs()
    calls = []
    summary = run_shard(cascade, jobs, tmp_path, batch_size=4, call_kwargs=FAST, on_images=calls.append)
    assert summary.images == 6 and calls == [4, 2]  # batches across prompts
    lines = repair(tmp_path)
    assert sorted(lines) == [j.file_name for j in jobs]
    for job in (jobs[1], jobs[2], jobs[5]):  # second image of a row, a negative prompt, the last batch
        line = lines[job.file_name]
        assert (line["seed"], line["prompt"], line["row"], line["index"]) == (job.seed, job.prompt, job.row, job.index)
        alone = cascade(job.prompt, negative_prompt=job.negative_prompt, seed=job.seed, output_type="np", **FAST)
        made = np.asarray(Image.open(tmp_path / job.file_name), dtype=int)
        difference = np.abs(made - np.round(alone.images[0] * 255).astype(int))
        # equal up to the float rounding of batched products, amplified by random tiny weights (as in test_cli)
        assert difference.mean() < 0.1 and (difference > 2).mean() < 0.01
    other = np.asarray(Image.open(tmp_path / jobs[0].file_name), dtype=int)
    assert np.abs(other - np.asarray(Image.open(tmp_path / jobs[1].file_name), dtype=int)).mean() > 5
    # the library stamps unclip's version into every image's metadata and PNG text, batch images included
    assert lines[jobs[0].file_name]["version"] == unclip.__version__
    with Image.open(tmp_path / jobs[0].file_name) as image:
        assert f"Version: unclip {unclip.__version__}" in image.text["parameters"]


def test_shards_are_disjoint_and_cover_every_job():
    jobs = _jobs()
    parts = [shard(jobs, rank, 4) for rank in range(4)]
    assert sorted(j.id for part in parts for j in part) == sorted(j.id for j in jobs)
    assert len({j.id for part in parts for j in part}) == len(jobs)


def test_out_of_memory_halves_the_batch(cascade, tmp_path, caplog):
    def small_gpu(prompts, **kwargs):
        if len(prompts) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return cascade(prompts, **kwargs)

    summary = run_shard(small_gpu, _jobs()[:3], tmp_path, batch_size=4, call_kwargs=FAST)
    assert summary.images == 3 and summary.batch_sizes == [4, 2, 1]
    assert "batch size halved to 2" in caplog.text and "batch size halved to 1" in caplog.text
    lines = [json.loads(t) for t in (tmp_path / ".parts" / "metadata-0.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == ["00000-0000", "00000-0001", "00001-0000"]

    def no_gpu(prompts, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_shard(no_gpu, _jobs()[:1], tmp_path / "x", batch_size=1, call_kwargs=FAST)
