"""CLIP reranking (unclip.rerank): candidates scored by an open_clip model built in-process, the best kept."""

import json

import numpy as np
import pytest
import torch
from conftest import write_model_yaml

from unclip.cli import main
from unclip.demo.clip import create_clip, tokenize
from unclip.demo.clip_export import save_open_clip
from unclip.errors import UnclipError
from unclip.rerank import ClipReranker

FAST = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2, super_res_num_inference_steps=2)


@pytest.fixture(scope="module")
def user_yaml(tmp_path_factory, karlo_dir):
    return write_model_yaml(tmp_path_factory.mktemp("user") / "karlo.yaml", karlo_dir, None)


@pytest.fixture(scope="module")
def reranker():
    return ClipReranker.from_model(create_clip(seed=0), tokenize, "tiny")


def test_the_kept_images_are_the_best_candidates_best_first(cascade, reranker):
    prompts = ["a red circle", "a blue square"]
    everything = cascade(prompts, num_images_per_prompt=4, seed=3, size=64, output_type="pt", **FAST)
    scores = reranker.score(everything.images, [m["prompt"] for m in everything.metadata])
    out = cascade(prompts, num_images_per_prompt=4, seed=3, size=64, output_type="pt", rerank=reranker, keep=2, **FAST)
    assert len(out.images) == 4 and [m["prompt"] for m in out.metadata] == [prompts[0]] * 2 + [prompts[1]] * 2
    for first in (0, 4):
        best = torch.argsort(scores[first : first + 4], descending=True)[:2] + first
        kept = out.metadata[first // 2 : first // 2 + 2]
        assert [m["index"] for m in kept] == best.tolist() and [m["rank"] for m in kept] == [0, 1]
        assert [m["clip_score"] for m in kept] == [round(float(scores[k]), 4) for k in best]
        for m, k in zip(kept, best, strict=True):
            assert torch.allclose(out.images[out.metadata.index(m)], everything.images[k], atol=1e-5)
    assert {m["candidates"] for m in out.metadata} == {4} and {m["rerank"] for m in out.metadata} == {"tiny"}


def test_scores_follow_the_text(reranker):
    """The score is a cosine of the model's own embeddings: it changes with the text and stays in [-1, 1]."""
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    a = reranker.score(images, ["a red circle", "a red circle"])
    b = reranker.score(images, ["a blue square", "a blue square"])
    assert a.shape == (2,) and (a.abs() <= 1).all() and not torch.allclose(a, b)
    with pytest.raises(UnclipError, match="one text per image"):
        reranker.score(images, ["a"])


def test_rerank_arguments_are_checked(cascade, reranker):
    with pytest.raises(UnclipError, match=r"keep \(--keep\) needs rerank"):
        cascade("a cat", keep=1, size=64)
    with pytest.raises(UnclipError, match="keep 3 > num_images_per_prompt 2"):
        cascade("a cat", num_images_per_prompt=2, rerank=reranker, keep=3, size=64)
    one = cascade("a cat", num_images_per_prompt=2, rerank=reranker, size=64, output_type="np", seed=0, **FAST)
    assert one.images.shape[0] == 1 and one.metadata[0]["rank"] == 0  # keep defaults to 1


def test_cli_rerank_with_a_local_open_clip_folder(tmp_path, user_yaml, capsys):
    folder = save_open_clip(create_clip(seed=0), tmp_path / "clip")
    out = tmp_path / "out"
    argv = ["generate", "a red circle", "a cat", "--model", str(user_yaml), "--out", str(out), "--size", "64"]
    steps = ["--prior-steps", "2", "--decoder-steps", "2", "--quiet"]
    assert main([*argv, "--num-images", "3", "--rerank", f"local-dir:{folder}", "--keep", "2", *steps]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(list(out.glob("*.png"))) == 4 and [m["rank"] for m in lines] == [0, 1, 0, 1]
    assert all(m["candidates"] == 3 and m["rerank"] == f"local-dir:{folder}" for m in lines)
    assert lines[0]["clip_score"] >= lines[1]["clip_score"] and lines[2]["clip_score"] >= lines[3]["clip_score"]
    assert np.isfinite([m["clip_score"] for m in lines]).all()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep", "2"], "keep (--keep) needs rerank (--rerank MODEL/PRETRAINED)"),
        (["--rerank", "ViT-B-32/openai", "--keep", "3"], "keep 3 > num_images_per_prompt 2 (--keep > --num-images)"),
        (["--rerank", "NoSuchModel/x"], "open_clip has no model NoSuchModel"),
        (["--rerank", "ViT-B-32/openai"], "HF_HUB_OFFLINE is set"),
    ],
)
def test_cli_rerank_mistakes_are_one_line(extra, message, tmp_path, user_yaml, capsys):
    argv = ["generate", "a cat", "--model", str(user_yaml), "--out", str(tmp_path / "o"), "--num-images", "2"]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main([*argv, "--size", "64", "--quiet", *extra]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not list(tmp_path.glob("o/*.png"))
