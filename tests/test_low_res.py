"""Upsamplers trained on the input they meet: ``data.low_res`` twins (the dataset, the crops, the degradation) and
scripts/make_low_res.py, which makes them with a model's 64→256 stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from unclip import UnclipError
from unclip.outputs import postprocess
from unclip.train.config import load_train_config
from unclip.train.data import CaptionedImages, collate

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def noise_images(folder: Path, n: int, size: int, seed: int) -> list[np.ndarray]:
    """n random RGB images (every crop unique, so it can be found again) as an imagefolder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pictures = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    for i, pixels in enumerate(pictures):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    rows = [json.dumps({"file_name": f"{i}.png", "text": f"picture {i}"}) for i in range(n)]
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return pictures


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1


def test_each_image_comes_with_its_low_res_twin(tmp_path):
    noise_images(tmp_path / "data", 3, 64, seed=0)
    twins = noise_images(tmp_path / "low", 3, 16, seed=1)  # a quarter of the side, named as the images are
    data = CaptionedImages(tmp_path / "data", 64, low_res=tmp_path / "low")
    batch = collate([data[i] for i in range(3)])
    assert batch["low_res_values"].shape == (3, 3, 16, 16) and batch["pixel_values"].shape == (3, 3, 64, 64)
    for i in range(3):
        assert torch.allclose(batch["low_res_values"][i], as_tensor(twins[i]), atol=1e-6)
    assert "low_res_values" not in collate([CaptionedImages(tmp_path / "data", 64)[0]])  # none asked, none given

    (tmp_path / "low" / "2.png").unlink()
    with pytest.raises(UnclipError, match=r"lacks 1 of the 3 low-res twins, the first 2.png: make them with"):
        CaptionedImages(tmp_path / "data", 64, low_res=tmp_path / "low")
    with pytest.raises(UnclipError, match=r"gone is not a folder: make it \(scripts/make_low_res.py\) or leave"):
        CaptionedImages(tmp_path / "data", 64, low_res=tmp_path / "gone")
    with pytest.raises(UnclipError, match="data.low_res is the upsamplers' low-res input; stage prior takes none"):
        load_train_config(None, ["stage=prior", "data.path=d", "data.clip=tiny:32", "data.low_res=x"])
    with pytest.raises(UnclipError, match=r"sr.paired must be in \[0, 1\], got 1.5"):
        load_train_config(None, ["stage=sr256", "data.path=d", "sr.paired=1.5"])


def test_the_upsampler_trains_from_the_same_square_of_the_twin(tmp_path):
    """Each crop's twin is the same square of the low-res picture (crops start on whole low-res pixels); with
    ``sr.paired`` 1 the stage's input is the twin itself, with 0 the crop's own blurred copy, drawn as without
    twins (the same seed, the same blur)."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.architectures import ARCHITECTURES
    from unclip.train.objectives import objective_for

    cascade = UnCLIPCascade.from_pretrained(ARCHITECTURES["tiny"](tmp_path / "init", 0))
    pictures = noise_images(tmp_path / "data", 4, 256, seed=2)
    twins = noise_images(tmp_path / "low", 4, 64, seed=3)
    data = CaptionedImages(tmp_path / "data", 256, low_res=tmp_path / "low")
    batch = collate([data[i] for i in range(4)])

    def objective(paired: float):
        options = ["sr.crop_fraction=0.25", "sr.crop_tries=3", f"sr.paired={paired}", "sr.noise_sigma=[0, 0]"]
        return objective_for(cascade, load_train_config(None, ["stage=sr256", f"data.path={tmp_path}", *options]))

    crops, twin_crops = objective(1).random_crops(batch, torch.Generator().manual_seed(0), torch.device("cpu"), 4, 16)
    assert crops.shape == (4, 3, 64, 64) and twin_crops.shape == (4, 3, 16, 16)
    for i in range(4):
        image = as_tensor(pictures[i])
        found = [
            (y, x)
            for y in range(0, 193)
            for x in range(0, 193)
            if torch.equal(image[:, y : y + 64, x : x + 64], crops[i])
        ]
        assert len(found) == 1, found
        y, x = found[0]
        assert y % 4 == 0 and x % 4 == 0
        assert torch.allclose(twin_crops[i], as_tensor(twins[i])[:, y // 4 : y // 4 + 16, x // 4 : x // 4 + 16])

    low = F.interpolate(crops, size=(16, 16), mode="bicubic", antialias=True).clamp(-1, 1)
    assert torch.equal(objective(1).degrade(low, torch.Generator().manual_seed(5), twin_crops), twin_crops)
    blurred = objective(0).degrade(low, torch.Generator().manual_seed(5))
    assert torch.equal(objective(0).degrade(low, torch.Generator().manual_seed(5), twin_crops), blurred)
    assert not torch.allclose(blurred, twin_crops, atol=0.1)


def test_make_low_res_writes_each_twin_once_through_the_64_to_256_stage(tmp_path):
    from unclip.pipeline import UnCLIPCascade
    from unclip.stages.base import StageInputs
    from unclip.train.architectures import ARCHITECTURES

    model = ARCHITECTURES["tiny"](tmp_path / "model", 0)
    pictures = noise_images(tmp_path / "data", 3, 1024, seed=4)
    command = [sys.executable, str(ROOT / "scripts" / "make_low_res.py"), "--data", str(tmp_path / "data"), "--model",
               str(model), "--out", str(tmp_path / "low"), "--batch-size", "2", "--seed", "7"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "0 of 3 twins already in" in run.stdout
    made = {name: np.asarray(Image.open(tmp_path / "low" / name)) for name in ("0.png", "1.png", "2.png")}
    assert all(m.shape == (256, 256, 3) for m in made.values())

    # image 1, shrunk to 64 px and through the same stage with its seed (7 + its index), is its twin
    pipe = UnCLIPCascade.from_pretrained(model, torch_dtype=torch.float32)
    small = F.interpolate(as_tensor(pictures[1])[None], size=(64, 64), mode="bicubic", antialias=True).clamp(-1, 1)
    plan = pipe.plan(size=256, first_stage="sr256")
    with torch.no_grad():
        twin = pipe.run_stage("sr256", small, StageInputs(generators=[torch.Generator().manual_seed(8)]), plan)
    expected = np.asarray(postprocess(twin, "pil")[0])
    assert np.abs(made["1.png"].astype(int) - expected).max() <= 1
    assert not np.array_equal(made["0.png"], made["1.png"])

    (tmp_path / "low" / "2.png").unlink()  # an interrupted run: only the missing twin is made again
    before = (tmp_path / "low" / "0.png").stat().st_mtime_ns
    again = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
    assert again.returncode == 0 and "2 of 3 twins already in" in again.stdout, again.stderr[-2000:]
    assert (tmp_path / "low" / "0.png").stat().st_mtime_ns == before
    assert np.array_equal(np.asarray(Image.open(tmp_path / "low" / "2.png")), made["2.png"])

    bad = subprocess.run([*command[:3], str(tmp_path / "nowhere"), *command[4:]], capture_output=True, text=True,
                         env=ENV, timeout=600)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("error: data path") and "Traceback" not in bad.stderr
