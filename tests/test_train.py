"""The trainer: configs and overrides, every tiny preset in 2 CPU processes, exact resumption, losses that
go down, corrupt images skipped, and a result that `unclip generate` loads."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from unclip import UnclipError
from unclip.cli import main as cli_main
from unclip.train.config import load_train_config, valid_keys

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40)}
SHAPES = ("circle", "square")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def make_dataset(folder: Path, n: int = 25, corrupt: int = 1, size: int = 64) -> Path:
    """n captioned images of coloured shapes as an imagefolder; the last ``corrupt`` of them unreadable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    lines = []
    for i in range(n):
        colour, background = rng.choice(names, 2, replace=False)
        shape = SHAPES[i % 2]
        image = Image.new("RGB", (size, size), COLOURS[background])
        box = [size // 4, size // 4, 3 * size // 4, 3 * size // 4]
        draw = ImageDraw.Draw(image)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        name = f"{i:03d}.png"
        if i >= n - corrupt:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
        else:
            image.save(folder / name)
        lines.append(json.dumps({"file_name": name, "text": f"a {colour} {shape} on a {background} background"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "shapes")


def read_log(output: Path) -> dict[int, dict]:
    """Per step, its loss line (the last: a resumed run logs the steps after its checkpoint again), with the
    validation line of that step merged in."""
    log: dict[int, dict] = {}
    for line in map(json.loads, (output / "train_log.jsonl").read_text().splitlines()):
        log[line["step"]] = {**log.get(line["step"], {}), **line}
    return log


def launch(args: list[str], processes: int = 1, timeout: int = 600) -> subprocess.CompletedProcess:
    if processes > 1:
        # --multi_gpu is accelerate's torchrun launcher; without a GPU the trainer runs its processes on CPU
        # (gloo). `--cpu --num_processes N` would start a single process (accelerate needs mpirun for more).
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "unclip.train"]
    else:
        cmd = [sys.executable, "-m", "unclip.train"]
    return subprocess.run(cmd + args, capture_output=True, text=True, env=ENV, timeout=timeout)


# ------------------------------------------------------------------------------------------ configs
def test_unknown_key_is_one_line_listing_the_valid_keys():
    with pytest.raises(UnclipError) as info:
        load_train_config(None, ["data.path=x", "data.clip=tiny:32", "optim.learning_rate=1"])
    message = str(info.value)
    assert "unknown config key 'optim.learning_rate'" in message and "optim.lr" in message and "\n" not in message


def test_overrides_are_typed_and_nested(tmp_path):
    preset = Path(__file__).parent.parent / "configs" / "train" / "tiny-decoder.yaml"
    config = load_train_config(
        preset, ["data.path=d", "optim.lr=3e-5", "max_steps=7", "resume=latest", "ema.enabled=false"]
    )
    assert (config.stage, config.max_steps, config.optim.lr, config.resume, config.ema.enabled) == (
        "decoder", 7, 3e-5, "latest", False,
    )  # fmt: skip
    with pytest.raises(UnclipError, match="max_steps: expected int"):
        load_train_config(preset, ["data.path=d", "max_steps=many"])
    with pytest.raises(UnclipError, match="stage must be one of"):
        load_train_config(preset, ["data.path=d", "stage=vae"])
    with pytest.raises(UnclipError, match="data.path is required"):
        load_train_config(preset, [])
    assert {"stage", "data.path", "output_dir", "max_steps", "resume", "init_from"} <= set(valid_keys())


@pytest.mark.parametrize(
    "preset", sorted((Path(__file__).parent.parent / "configs" / "train").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_train_config_loads(preset):
    """Each configs/train preset is read and validated (a misspelt key in a demo phase would otherwise fail hours
    into scripts/train_demo.sh); data.path only where the preset leaves it for the user."""
    config = load_train_config(preset, ["data.path=d"])
    assert config.stage and config.max_steps >= 1


def test_cli_errors_are_one_line_exit_2(tmp_path):
    done = launch(["--config", "tiny-decoder", "data.path=nowhere", "foo=1"])
    assert done.returncode == 2 and done.stderr.startswith("error: unknown config key 'foo'")
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1
    done = launch(["--config", "tiny-decoder", f"data.path={tmp_path / 'missing'}", f"output_dir={tmp_path / 'o'}"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------- training noise
def test_pyramid_noise_has_unit_variance_and_noisy_low_frequencies():
    from unclip.train.objectives import pyramid_noise

    like = torch.zeros(64, 3, 64, 64)
    white = pyramid_noise(torch.Generator().manual_seed(0), like, 0.0)
    assert torch.equal(white, torch.randn(like.shape, generator=torch.Generator().manual_seed(0)))
    noise = pyramid_noise(torch.Generator().manual_seed(0), like, 0.8)
    assert abs(noise.var().item() - 1) < 0.05  # each pixel still N(0, 1): x_T needs no change at sampling
    # the per-image, per-channel mean (a flat picture's colour) is ~13× noisier than white noise's σ = 1/64
    assert white.mean((2, 3)).std().item() < 0.03 < 0.1 < noise.mean((2, 3)).std().item()
    neighbours = (noise[..., 1:, :] * noise[..., :-1, :]).mean().item()
    assert neighbours > 0.3 and abs((white[..., 1:, :] * white[..., :-1, :]).mean().item()) < 0.02
    again = pyramid_noise(torch.Generator().manual_seed(0), like, 0.8)
    assert torch.equal(noise, again)  # a function of the generator only: resumed runs repeat themselves


def test_decoder_trains_on_pyramid_noise_when_asked(cascade):
    from unclip.train.objectives import OBJECTIVES, Frozen

    batch = {"pixel_values": torch.zeros(16, 3, 64, 64), "text": ["a red circle"] * 16}
    spread = {}
    for discount in (0.0, 0.8):
        config = load_train_config(None, ["data.path=d", "data.clip=tiny:32", f"decoder.pyramid_noise={discount}"])
        objective = OBJECTIVES["decoder"](cascade, config)
        frozen = Frozen(cascade, clip=lambda pixels: torch.zeros(pixels.shape[0], 32))
        inputs = objective.prepare(batch, frozen, torch.Generator().manual_seed(0), torch.device("cpu"))
        spread[discount] = inputs["noise"].mean((2, 3)).std().item()
    assert spread[0.0] < 0.05 < 0.1 < spread[0.8], spread
    with pytest.raises(UnclipError, match=r"decoder.pyramid_noise must be in \[0, 1\)"):
        load_train_config(None, ["data.path=d", "decoder.pyramid_noise=1.5"])


def test_decoder_edge_weight_weighs_the_epsilon_error_at_edges_up(cascade):
    """``decoder.edge_weight=λ``: the ε error of each pixel weighed 1 + λ × x_0's local contrast, as sr.edge_weight."""
    from unclip.train.objectives import OBJECTIVES, Frozen

    x0 = -torch.ones(2, 3, 64, 64)
    x0[..., 32:] = 1  # a vertical black-white edge between columns 31 and 32
    batch = {"pixel_values": x0, "text": ["a white square"] * 2}
    frozen = Frozen(cascade, clip=lambda pixels: torch.zeros(pixels.shape[0], 32))

    def loss(weight: float, columns: slice) -> torch.Tensor:
        config = load_train_config(None, ["data.path=d", "data.clip=tiny:32", f"decoder.edge_weight={weight}"])
        objective = OBJECTIVES["decoder"](cascade, config)
        inputs = objective.prepare(batch, frozen, torch.Generator().manual_seed(0), torch.device("cpu"))
        assert (inputs["pixel_weight"] is None) == (weight == 0)
        inputs["noise"] = inputs["noise"].clone()
        inputs["noise"][..., columns] += 10  # an error far larger than the prediction's own, on four columns
        with torch.no_grad():
            return objective(**inputs)

    flat, at_edge = slice(4, 8), slice(30, 34)
    assert torch.allclose(loss(0, flat), loss(0, at_edge), rtol=0.1)  # uniform: the same anywhere
    assert (loss(4, at_edge) > 2 * loss(4, flat)).all()  # weighed: more at the edge
    with pytest.raises(UnclipError, match="decoder.edge_weight must be ≥ 0"):
        load_train_config(None, ["data.path=d", "decoder.edge_weight=-1"])


def test_decoder_contrast_ref_weighs_near_colour_pairs_up(cascade):
    """``decoder.contrast_ref=c_ref``: each image's loss × (c_ref / c)², c its colour range (``colour_range``), when
    c < c_ref: an orange-on-red image's error weighed up; a black-on-white one's as before; 0: every image alike."""
    from unclip.demo.shapes import PALETTE
    from unclip.train.objectives import OBJECTIVES, Frozen
    from unclip.train.weights import colour_range

    def picture(shape: str, background: str) -> torch.Tensor:
        x0 = torch.tensor(PALETTE[background], dtype=torch.float32).view(3, 1, 1).expand(3, 64, 64).clone()
        x0[:, 16:48, 16:48] = torch.tensor(PALETTE[shape], dtype=torch.float32).view(3, 1, 1)
        return x0 / 127.5 - 1

    x0 = torch.stack([picture("orange", "red"), picture("black", "white")])
    assert colour_range(x0).tolist() == pytest.approx([0.216, 0.922], abs=1e-3)
    batch = {"pixel_values": x0, "text": ["an orange square", "a black square"]}
    frozen = Frozen(cascade, clip=lambda pixels: torch.zeros(pixels.shape[0], 32))

    def loss(reference: float) -> torch.Tensor:
        config = load_train_config(None, ["data.path=d", "data.clip=tiny:32", f"decoder.contrast_ref={reference}"])
        objective = OBJECTIVES["decoder"](cascade, config)
        inputs = objective.prepare(batch, frozen, torch.Generator().manual_seed(0), torch.device("cpu"))
        inputs["noise"] = inputs["noise"].clone() + 10  # the same error, far larger than the prediction's, on both
        with torch.no_grad():
            return objective(**inputs)

    uniform, weighed = loss(0), loss(0.5)
    assert weighed / uniform == pytest.approx([(0.5 / 0.216) ** 2, 1], rel=0.01)  # up, never down
    with pytest.raises(UnclipError, match="decoder.contrast_ref must be ≥ 0"):
        load_train_config(None, ["data.path=d", "decoder.contrast_ref=-1"])


def test_upsampler_inputs_are_degraded_as_configured(cascade):
    from unclip.train.objectives import OBJECTIVES

    low = torch.zeros(4, 3, 16, 16)
    low[:, :, 4:12, 4:12] = 0.8  # a flat square: blur softens its edge, noise roughens the flats
    out = {}
    for name, extra in {
        "paper": [],
        "noisy": ["sr.noise_sigma=[0.1, 0.1]"],
        "sharp": ["sr.blur_sigma=[0.01, 0.01]"],
    }.items():
        config = load_train_config(None, ["stage=sr256", "data.path=d", *extra])
        out[name] = OBJECTIVES["sr256"](cascade, config).degrade(low, torch.Generator().manual_seed(0))
    flat = (slice(None), slice(None), slice(0, 2), slice(0, 16))  # a band of background, far from the square
    assert out["paper"][flat].abs().max() < 1e-3 and 0.08 < out["noisy"][flat].std() < 0.12  # 64→256: no noise
    assert torch.allclose(out["sharp"], low.clamp(-1, 1), atol=1e-6)  # σ → 0: no blur
    assert (out["paper"] - low).abs().max() > 0.1  # σ 0.4-0.6: the edge softened
    for bad, message in [
        ("sr.noise_sigma=[0.2, 0.1]", "sr.noise_sigma must be [low, high] with 0 ≤ low ≤ high"),
        ("sr.jpeg_quality=[50, 120]", "sr.jpeg_quality must be [low, high] in 0-100"),
        ("sr.blur_sigma=[0, 1]", "sr.blur_sigma must be [low, high] with 0 < low ≤ high"),
        ("sr.text_drop=1.5", "sr.text_drop must be in [0, 1]"),
    ]:
        with pytest.raises(UnclipError, match=re.escape(message)):
            load_train_config(None, ["stage=sr256", "data.path=d", bad])


def test_prediction_type_sets_the_target_and_the_exported_scheduler(tmp_path, data):
    """``prediction_type=sample``: the pixel upsampler learns x_0, and its exported scheduler says so, so that
    sampling reads its output as x_0 too."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.objectives import objective_for
    from unclip.train.trainer import set_prediction_type, train

    overrides = [f"data.path={data}", f"output_dir={tmp_path / 'run'}", "max_steps=1", "batch_size=2",
                 "tensorboard=false", "prediction_type=sample"]  # fmt: skip
    config = load_train_config(Path(__file__).parent.parent / "configs" / "train" / "tiny-sr1024.yaml", overrides)
    trained = UnCLIPCascade.from_pretrained(train(config))
    assert trained.upscaler_scheduler.config.prediction_type == "sample"
    objective = objective_for(trained, config)
    batch = {"pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1}
    inputs = objective.prepare(batch, None, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert inputs["target"].abs().max() <= 1 and not torch.allclose(inputs["target"], inputs["x_t"])  # x_0, not ε
    fresh = UnCLIPCascade.from_pretrained(tmp_path / "run" / "init" / "model.yaml")
    assert fresh.upscaler_scheduler.config.prediction_type == "epsilon"  # the architecture's own, unchanged
    with pytest.raises(UnclipError, match="UnCLIPScheduler samples only epsilon or sample models"):
        set_prediction_type(
            fresh, load_train_config(None, ["stage=sr1024", "data.path=d", "prediction_type=v_prediction"])
        )
    with pytest.raises(UnclipError, match="prediction_type must be one of epsilon, sample, v_prediction"):
        load_train_config(None, ["data.path=d", "prediction_type=x0"])


def test_sr_loss_l1_takes_the_absolute_error_of_the_same_prediction(tmp_path, data):
    """``sr.loss=l1``: the upsampler's loss is the mean absolute error where l2's is the mean squared one."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.architectures import ARCHITECTURES
    from unclip.train.objectives import objective_for

    cascade = UnCLIPCascade.from_pretrained(ARCHITECTURES["tiny"](tmp_path / "init", 0))
    batch = {"pixel_values": torch.rand(2, 3, 64, 64) * 2 - 1}
    for loss, error in (("l2", torch.square), ("l1", torch.abs)):
        config = load_train_config(None, ["stage=sr1024", f"data.path={data}", f"sr.loss={loss}"])
        objective = objective_for(cascade, config)
        inputs = objective.prepare(batch, None, torch.Generator().manual_seed(0), torch.device("cpu"))
        with torch.no_grad():
            out = objective.unet(torch.cat([inputs["x_t"], inputs["low_res"]], 1), inputs["t"]).sample[:, :3]
            expected = inputs["weight"] * error(out - inputs["target"]).flatten(1).mean(1)
            assert torch.allclose(objective(**inputs), expected, atol=1e-6), loss
    with pytest.raises(UnclipError, match="sr.loss must be l2 or l1, got 'huber'"):
        load_train_config(None, ["data.path=d", "sr.loss=huber"])


def test_sr_edge_weight_weighs_the_error_at_edges_up(tmp_path, data):
    """``sr.edge_weight=λ``: each pixel's error weighed 1 + λ × the target's local contrast (``contrast``: 0 on a flat
    colour, 1 on both sides of a black-white edge), the loss normalised by the weights; 0 leaves the loss as it was."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.architectures import ARCHITECTURES
    from unclip.train.objectives import objective_for
    from unclip.train.weights import contrast

    images = -torch.ones(1, 3, 16, 16)
    images[..., 8:] = 1  # a vertical black-white edge between columns 7 and 8
    edge = contrast(images)[0, 0]
    assert edge.shape == (16, 16) and torch.equal(edge[:, 6:10], torch.ones(16, 4))  # both sides, and next
    assert edge[:, :6].abs().max() == 0 and edge[:, 10:].abs().max() == 0  # flat: 0

    cascade = UnCLIPCascade.from_pretrained(ARCHITECTURES["tiny"](tmp_path / "init", 0))
    x0 = -torch.ones(2, 3, 1024, 1024)  # at the tiny 256→1024 stage's size: no resizing
    x0[..., 512:] = 1
    batch = {"pixel_values": x0}

    def loss(weight: float, error_at: int) -> torch.Tensor:
        config = load_train_config(None, ["stage=sr1024", f"data.path={data}", "sr.loss=l1", "sr.crop_fraction=1",
                                          f"sr.edge_weight={weight}"])  # fmt: skip
        objective = objective_for(cascade, config)
        inputs = objective.prepare(batch, None, torch.Generator().manual_seed(0), torch.device("cpu"))
        band = torch.zeros_like(inputs["target"])
        band[..., 512 + error_at : 512 + error_at + 4] = 1
        # a denoiser that predicts its target exactly but for 0.5 on those four columns
        objective.unet.forward = lambda **_: type("Out", (), {"sample": inputs["target"] + 0.5 * band})()
        return objective(**inputs)

    flat, at_edge = -20, -2  # four columns from here, relative to the edge
    assert torch.allclose(loss(0, flat), loss(0, at_edge))  # uniform: an error costs the same anywhere
    assert (loss(4, at_edge) > 2 * loss(4, flat)).all()  # the same error costs more at the edge
    assert (loss(4, flat) < loss(0, flat)).all()  # normalised: weighing the edge up weighs flat pixels down
    with pytest.raises(UnclipError, match="sr.edge_weight must be ≥ 0"):
        load_train_config(None, ["data.path=d", "sr.edge_weight=-1"])


def test_sr_crop_tries_trains_on_the_crop_with_an_edge(tmp_path, data):
    """``sr.crop_tries=N``: of N random crops of an image the one with the most detail; one try draws the crops
    it always drew (same seed, same crops)."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.architectures import ARCHITECTURES
    from unclip.train.objectives import objective_for

    cascade = UnCLIPCascade.from_pretrained(ARCHITECTURES["tiny"](tmp_path / "init", 0))
    images = -torch.ones(4, 3, 256, 256)
    images[:, :, 88:168, 88:168] = 1  # one square: four in five 32 px crops of the picture are flat
    batch = {"pixel_values": images}

    def crops(tries: int, seed: int) -> torch.Tensor:
        config = load_train_config(None, ["stage=sr256", f"data.path={data}", "sr.crop_fraction=0.125",
                                          f"sr.crop_tries={tries}"])  # fmt: skip
        objective = objective_for(cascade, config)
        return objective.random_crops(batch, torch.Generator().manual_seed(seed), torch.device("cpu"), 4, 16)[0]

    def with_edge(x: torch.Tensor) -> float:
        return (x.flatten(1).std(1) > 0).float().mean().item()

    one = torch.cat([crops(1, seed) for seed in range(8)])
    many = torch.cat([crops(32, seed) for seed in range(8)])
    assert one.shape == many.shape == (32, 3, 32, 32)
    assert with_edge(one) < 0.5 < 0.9 <= with_edge(many), (with_edge(one), with_edge(many))
    g = torch.Generator().manual_seed(3)  # one try: the draws of a plain random crop
    y, x = (torch.randint(0, 256 - 32 + 1, (4,), generator=g).tolist() for _ in range(2))
    expected = torch.stack([images[i, :, y[i] : y[i] + 32, x[i] : x[i] + 32] for i in range(4)])
    assert torch.equal(crops(1, 3), expected)
    with pytest.raises(UnclipError, match="sr.crop_tries must be ≥ 1, got 0"):
        load_train_config(None, ["data.path=d", "sr.crop_tries=0"])


def test_sr_timesteps_draws_the_training_timesteps_from_a_range(tmp_path, data):
    """``sr.timesteps=[low, high]``: every training timestep in [low, high); without it all of them, drawn as
    always (the same t for the same seed)."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.architectures import ARCHITECTURES
    from unclip.train.objectives import objective_for

    cascade = UnCLIPCascade.from_pretrained(ARCHITECTURES["tiny"](tmp_path / "init", 0))
    batch = {"pixel_values": torch.rand(64, 3, 64, 64) * 2 - 1}

    def timesteps(*overrides: str) -> torch.Tensor:
        config = load_train_config(None, ["stage=sr1024", f"data.path={data}", "sr.crop_fraction=0.25", *overrides])
        objective = objective_for(cascade, config)
        return objective.prepare(batch, None, torch.Generator().manual_seed(0), torch.device("cpu"))["t"]

    top = timesteps("sr.timesteps=[900, 1000]")
    assert top.min() >= 900 and top.max() < 1000 and len(set(top.tolist())) > 10
    every = timesteps()
    assert every.min() < 900 and torch.equal(every, timesteps("sr.timesteps=[0, 1000]"))
    with pytest.raises(UnclipError, match=r"sr.timesteps: \[900, 1001\] goes past the scheduler's 1000 timesteps"):
        timesteps("sr.timesteps=[900, 1001]")
    with pytest.raises(UnclipError, match=r"sr.timesteps must be \[low, high\) with 0 ≤ low < high, got \[5, 5\]"):
        load_train_config(None, ["data.path=d", "sr.timesteps=[5, 5]"])


# -------------------------------------------------------------------------------------- loss goes down
def _eval_loss(model_yaml: Path, stage: str, data: Path, config) -> float:
    """The stage's loss on the 8 training samples with a fixed generator: same t, noise and dropout."""
    from unclip.pipeline import UnCLIPCascade
    from unclip.train.data import CaptionedImages, collate
    from unclip.train.objectives import data_resolution, objective_for
    from unclip.train.trainer import build_frozen

    cascade = UnCLIPCascade.from_pretrained(model_yaml)
    objective = objective_for(cascade, config).eval()
    dataset = CaptionedImages(data, data_resolution(stage))
    frozen = build_frozen(config, cascade, dataset, torch.device("cpu"))
    batch = collate([dataset[i] for i in range(8)])
    total = 0.0
    with torch.no_grad():
        for seed in range(4):
            inputs = objective.prepare(batch, frozen, torch.Generator().manual_seed(seed), torch.device("cpu"))
            total += objective(**inputs).mean().item()
    return total / 4


def test_the_trained_cascade_stays_nchw_through_its_calls(tmp_path):
    """On CPU a cascade's calls put its convolutions in NHWC; the trainer's keeps NCHW, so validation calls do
    not change a run's arithmetic."""
    from accelerate import Accelerator

    from unclip.train.trainer import load_cascade

    config = load_train_config(Path(__file__).parent.parent / "configs" / "train" / "tiny-decoder.yaml",
                               [f"output_dir={tmp_path / 'run'}", f"data.path={tmp_path}"])  # fmt: skip
    cascade = load_cascade(config, Accelerator(cpu=True))
    cascade.plan(64)  # what every call does first
    assert all(p.is_contiguous() for p in cascade.decoder.parameters())


def test_a_channels_last_run_trains_in_nhwc_checkpoints_and_resumes_as_the_uninterrupted_run(tmp_path, data):
    """channels_last=true: the upsampler trains in NHWC from its first step; its checkpoints and export save (and
    load) its weights, and a resumed run repeats the uninterrupted one."""
    from accelerate import Accelerator

    from unclip.pipeline import UnCLIPCascade
    from unclip.train.trainer import load_cascade, train

    def config(out: Path, *more: str):
        overrides = [f"data.path={data}", f"output_dir={out}", "channels_last=true", "checkpoint_every=2",
                     "ema.enabled=false", "tensorboard=false", "batch_size=4", "log_every=1", *more]  # fmt: skip
        return load_train_config(Path(__file__).parent.parent / "configs" / "train" / "tiny-sr1024.yaml", overrides)

    cascade = load_cascade(config(tmp_path / "probe"), Accelerator(cpu=True))
    cascade.plan(64)
    convs = [p for p in cascade.super_res_last.parameters() if p.dim() == 4 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    whole, split = tmp_path / "whole", tmp_path / "split"
    exported = train(config(whole, "max_steps=3"))
    train(config(split, "max_steps=2"))
    train(config(split, "max_steps=3", "resume=latest"))
    expected, got = read_log(whole), read_log(split)
    assert got[3]["loss"] == expected[3]["loss"]  # the step after the checkpoint at 2
    UnCLIPCascade.from_pretrained(exported)  # the exported weights load


@pytest.mark.parametrize("stage, steps", [("prior", 60), ("decoder", 20), ("sr256", 25), ("sr1024", 25)])
def test_overfitting_8_samples_halves_the_loss(tmp_path, stage, steps):
    from unclip.train.trainer import train

    data = make_dataset(tmp_path / "eight", n=8, corrupt=0)
    overrides = [f"data.path={data}", f"output_dir={tmp_path / 'run'}", f"max_steps={steps}", "batch_size=8"]
    overrides += ["ema.enabled=false", "tensorboard=false", "checkpoint_every=1000", "optim.lr=2e-3"]
    config = load_train_config(Path(__file__).parent.parent / "configs" / "train" / f"tiny-{stage}.yaml", overrides)
    model_yaml = train(config)
    before = _eval_loss(tmp_path / "run" / "init" / "model.yaml", stage, data, config)
    after = _eval_loss(model_yaml, stage, data, config)
    assert after < before / 2, (before, after)


def test_validation_logs_the_clip_score_of_its_images(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    prompts = '["a red circle on a blue background","a green square on a yellow background"]'
    args = ["--config", "tiny-decoder", f"data.path={data}", f"output_dir={out}", "max_steps=2", "validation.every=1",
            f"validation.prompts={prompts}", "validation.steps=2"]  # fmt: skip
    done = launch(args, processes=2)  # the main process validates alone; the other waits
    assert done.returncode == 0, done.stderr[-3000:]
    log = read_log(out)
    for step in (1, 2):
        assert sorted(p.name for p in (out / "validation" / f"step-{step}").iterdir()) == ["00.png", "01.png"]
        assert log[step]["validation_n"] == 2 and -1 <= log[step]["validation_clip_score"] <= 1
        assert np.isfinite(log[step]["loss"])  # the loss line of the step is kept beside it
    events = EventAccumulator(str(out / "logs" / "unclip"))
    events.Reload()
    scalars = {e.step: e.value for e in events.Scalars("validation/clip_score")}
    assert scalars == pytest.approx({step: log[step]["validation_clip_score"] for step in (1, 2)}, abs=1e-4)
    # the model trained from scratch names the CLIP image tower it learned from: variations work on it
    assert "image_encoder: tiny:32" in (out / "model.yaml").read_text()


# ------------------------------------------------------------------------ 2 processes, each tiny preset
@pytest.mark.parametrize("stage, size", [("prior", 64), ("decoder", 64), ("sr256", 256), ("sr1024", 1024)])
def test_tiny_preset_in_two_cpu_processes_then_generate(tmp_path, data, stage, size):
    out = tmp_path / "run"
    args = ["--config", f"tiny-{stage}", f"data.path={data}", f"output_dir={out}", "max_steps=4", "checkpoint_every=2"]
    done = launch(args, processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"training {stage}: 2 process(es) on cpu" in done.stdout
    log = read_log(out)
    assert sorted(log) == [1, 2, 3, 4] and all(np.isfinite(line["loss"]) for line in log.values())
    assert log[4]["skipped"] >= 1, "the corrupt image was never counted"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (out / "logs").is_dir()

    done = launch(args[:-2] + ["max_steps=6", "checkpoint_every=2", "resume=latest"], processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and sorted(read_log(out)) == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-6"]  # total limit 2

    images = tmp_path / "images"
    argv = ["generate", "a red circle on a blue background", "--model", str(out / "model.yaml"), "--out", str(images)]
    argv += [
        "--size",
        str(size),
        "--prior-steps",
        "2",
        "--decoder-steps",
        "2",
        "--sr-steps",
        "2",
        "--upscale-steps",
        "2",
    ]
    assert cli_main(argv + ["--quiet"]) == 0
    (png,) = images.glob("*.png")
    assert Image.open(png).size == (size, size)


# ------------------------------------------------------------------------------------ kill and resume
def test_kill_9_then_resume_repeats_the_uninterrupted_run(tmp_path, data):
    base = ["--config", "tiny-decoder", f"data.path={data}", "checkpoint_every=3", "tensorboard=false"]
    whole = tmp_path / "whole"
    assert launch(base + [f"output_dir={whole}", "max_steps=12"]).returncode == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "unclip.train", *base, f"output_dir={killed}", "max_steps=200"]
    process = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-3" / "trainer_state.json").is_file() and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "model.yaml").exists(), "the run finished before the kill"

    done = launch(base + [f"output_dir={killed}", "max_steps=12", "resume=latest"])
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_from = int(done.stdout.split("at step ")[1].split()[0])
    expected, got = read_log(whole), read_log(killed)
    assert resumed_from >= 3 and resumed_from < 12
    for step in range(resumed_from + 1, 13):
        assert got[step]["loss"] == expected[step]["loss"], step
    # the training clock goes on from the checkpoint's (the first run's seconds up to it; from 0, the step after it
    # would read less than the steps before it took)
    assert 0 < got[resumed_from]["seconds"] < got[resumed_from + 1]["seconds"] <= got[12]["seconds"]


def test_two_processes_resume_repeats_the_uninterrupted_run(tmp_path, data):
    """Data position, optimizer, LR and EMA restored in each of 2 processes: the steps after resume are identical."""
    base = ["--config", "tiny-decoder", f"data.path={data}", "checkpoint_every=2", "tensorboard=false"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert launch(base + [f"output_dir={whole}", "max_steps=6"], processes=2).returncode == 0
    assert launch(base + [f"output_dir={split}", "max_steps=3"], processes=2).returncode == 0
    done = launch(base + [f"output_dir={split}", "max_steps=6", "resume=latest"], processes=2)
    assert done.returncode == 0 and "resumed from" in done.stdout and "at step 3" in done.stdout, done.stderr[-3000:]
    expected, got = read_log(whole), read_log(split)
    assert [got[step]["loss"] for step in (4, 5, 6)] == [expected[step]["loss"] for step in (4, 5, 6)]
    assert got[6]["skipped"] == expected[6]["skipped"]


def test_the_x4_latent_upscaler_trains_a_lora_adapter_and_its_loss_falls(tmp_path, model_yaml):
    """Karlo + x4's sr1024 (the SD x4 latent upscaler): v-prediction on its VAE's latents of 1024 px crops, the
    degraded 256 px copy and the caption as at sampling."""
    from unclip.lora import read_adapter
    from unclip.train.trainer import train

    data = make_dataset(tmp_path / "eight", n=8, corrupt=0)
    overrides = [f"init_from={model_yaml}", "stage=sr1024", f"data.path={data}", f"output_dir={tmp_path / 'run'}",
                 "max_steps=12", "batch_size=8", "ema.enabled=false", "tensorboard=false", "checkpoint_every=1000",
                 "optim.lr=1e-2", "lora.rank=8", "validation.every=0", "sr.crop_fraction=0.125"]  # fmt: skip
    config = load_train_config(None, overrides)
    trained = train(config)
    adapter = read_adapter(trained.parent / "pytorch_lora_weights.safetensors", weights=False)
    assert (adapter.component, adapter.stage) == ("upscaler_unet", "sr1024")
    before, after = _eval_loss(model_yaml, "sr1024", data, config), _eval_loss(trained, "sr1024", data, config)
    assert after < 0.9 * before, (before, after)  # measured: 0.619 → 0.538
    with pytest.raises(UnclipError, match="sr.edge_weight weighs pixels of the pixel upsamplers"):
        train(load_train_config(None, [*overrides, f"output_dir={tmp_path / 'edge'}", "sr.edge_weight=1"]))
