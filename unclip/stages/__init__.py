"""The stage registry: every kind of stage the cascade knows, in running order.

    from unclip.stages import KINDS, STAGES, defaults
    STAGES                      # ("prior", "decoder", "sr256", "sr1024"): the stages, in running order
    KINDS["x4"].components      # ("upscaler_text_encoder", "upscaler_unet", "upscaler_vae")
    pipe.stages["sr1024"]       # the kind a loaded cascade has for a stage (x4 or pixel here)

Each kind lives in its own file, its denoiser beside its ``run`` (``unclip.stages.base.Stage`` says what a kind
declares). A new kind is a new file and a line below: the settings' keywords, flags and YAML keys, the
offload order, the speed-ups, the benchmark's stage timings and the trainer's stage names follow from here.
Two kinds may fill one stage (sr1024: the x4 latent upscaler or a pixel upsampler); a cascade runs the first
whose components it has.
"""

from __future__ import annotations

from unclip.settings import SETTINGS, StageSettings
from unclip.stages.base import Stage, StageInputs, check_finite
from unclip.stages.decoder import Decoder
from unclip.stages.pixel import PixelUpsampler
from unclip.stages.prior import Prior
from unclip.stages.sr256 import SuperRes256
from unclip.stages.x4 import X4Upscaler

KINDS: dict[str, Stage] = {
    stage.kind: stage
    for stage in (
        Prior(),
        Decoder(),
        SuperRes256(),
        X4Upscaler(),
        PixelUpsampler(),
    )
}
STAGES: tuple[str, ...] = tuple(dict.fromkeys(stage.name for stage in KINDS.values()))
SIZES: tuple[int, ...] = tuple(sorted({stage.size for stage in KINDS.values() if stage.size}))


def kinds_of(name: str) -> list[Stage]:
    """The kinds that fill stage ``name``, in registry order."""
    return [stage for stage in KINDS.values() if stage.name == name]


def first_of(name: str) -> Stage:
    """The stage's first kind: its names, and the defaults a model config starts from."""
    return kinds_of(name)[0]


def defaults() -> dict[str, StageSettings]:
    """The reference pipelines' settings per stage: UnCLIPPipeline (Karlo) and StableDiffusionUpscalePipeline."""
    return {name: StageSettings(**vars(first_of(name).defaults)) for name in STAGES}


def settings_of(name: str) -> tuple[str, ...]:
    """The settings any kind of stage ``name`` takes, in table order."""
    taken = {setting for stage in kinds_of(name) for setting in stage.settings}
    return tuple(setting for setting in SETTINGS if setting in taken)


def offload_order() -> str:
    """diffusers' ``model_cpu_offload_seq``: the text encoders, then every stage's components in running order."""
    names = ["image_encoder", "text_encoder"] + [name for stage in KINDS.values() for name in stage.components]
    return "->".join(dict.fromkeys(names))


__all__ = [
    "KINDS", "SIZES", "STAGES", "Stage", "StageInputs",
    "check_finite", "defaults", "first_of", "kinds_of", "offload_order", "settings_of",
]  # fmt: skip
