"""Cascades to train from scratch (``init_from`` absent), by name: each writes a randomly initialised
cascade in the hub layouts (Karlo layout + pixel 256→1024 upsampler) with its ``model.yaml``.

    from unclip.train.architectures import ARCHITECTURES
    model_yaml = ARCHITECTURES["tiny"](Path("runs/x/init"), seed=0, text_encoder=None)
    model_yaml = ARCHITECTURES["demo"](Path("runs/demo/init"), seed=0, text_encoder=Path("runs/demo/clip"))

``text_encoder`` (the training key of that name) is a folder with ``text_encoder/`` and ``tokenizer/``, a
trained CLIP's text tower (``scripts/train_demo_clip.py`` writes one); the cascade is built around it, its
width being the CLIP embedding width of the prior, text projection and decoder. The upsampler stages see no
text, so they may leave it out: the demo is then built around an untrained demo CLIP (written to
``folder/clip``), and ``scripts/export_demo.py --upsamplers`` later joins their weights to the trained cascade.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from unclip.config import ModelConfig, save_model_config
from unclip.errors import UnclipError
from unclip.settings import StageSettings
from unclip.stages import KINDS, STAGES, first_of


def scratch_settings() -> dict[str, StageSettings]:
    """The sampling defaults written into a from-scratch model.yaml: each kind's own (the pixel upsampler's at
    sr1024), the decoder guided at 4 rather than Karlo's 8 (small models over-saturate)."""
    kinds = {stage: first_of(stage) for stage in STAGES} | {"sr1024": KINDS["pixel"]}
    settings = {stage: dataclasses.replace(kind.defaults) for stage, kind in kinds.items()}
    settings["decoder"].guidance = 4.0
    return settings


def _write_yaml(folder: Path) -> Path:
    config = ModelConfig(unclip="unclip", upscaler="upscaler", stages=scratch_settings())
    return save_model_config(config, folder / "model.yaml")


def tiny(folder: Path, seed: int = 0, text_encoder: Path | None = None) -> Path:
    """The test-sized cascade of ``unclip.replicas`` (CLIP width 32): trains on a CPU in seconds."""
    from unclip.replicas import tiny_karlo, tiny_pixel_upscaler

    if text_encoder is not None:
        raise UnclipError("architecture tiny brings its own random CLIP text encoder: leave text_encoder out")
    tiny_karlo(folder / "unclip", seed=seed, with_prior=True)
    tiny_pixel_upscaler(folder / "upscaler", seed=seed)
    return _write_yaml(folder)


def demo(folder: Path, seed: int = 0, text_encoder: Path | None = None) -> Path:
    """The offline demo's cascade (``unclip.demo.architecture``) around a trained tiny CLIP, or an untrained
    one when ``text_encoder`` is None (for the upsampler stages, which see no text)."""
    from unclip.demo.architecture import build_demo

    if text_encoder is None:
        from unclip.demo.clip import create_clip
        from unclip.demo.clip_export import export_clip

        text_encoder = export_clip(create_clip(seed), folder / "clip")
    build_demo(folder, Path(text_encoder), seed=seed)
    return _write_yaml(folder)


ARCHITECTURES: dict[str, Callable[..., Path]] = {"tiny": tiny, "demo": demo}
