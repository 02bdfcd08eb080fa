"""The per-stage settings: one table (``SETTINGS``) from which every form of them is made.

    from unclip.settings import SETTINGS, StageSettings
    StageSettings(steps=25, guidance=8.0)          # one stage's settings (a model config holds one per stage)
    SETTINGS["eta"].problem(1.5)                   # "must be in [0, 1] ...": the one check of a value

A setting is a field of ``StageSettings``. ``unclip.plan`` joins this table with the stage registry
(``unclip.stages``) into the names users see, one per (stage, setting) the stage takes:

* Python keyword: ``<stage keyword>_<keyword>``, e.g. ``decoder_num_inference_steps``, ``upscale_eta``
* CLI flag: ``--<stage flag>-<flag>``, e.g. ``--decoder-steps``, ``--sr-eta``
* YAML key: ``<stage>: {<name>: ...}`` in a model config, e.g. ``decoder: {steps: 25}``
* metadata: ``metadata["stages"][<stage>][<name>]``; PNG text: ``<stage label> <label>``, e.g. "Prior CFG scale"

``scheduler`` is the exception: one ``scheduler=`` keyword and one ``--scheduler`` flag take a name for every
stage or a name per stage (``prior=ddim,sr1024=dpmpp``). Adding a setting is a field below, its row in
``SETTINGS``, the stages that take it (``Stage.settings``) and its use in their ``run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from unclip.errors import UnclipError
from unclip.schedulers import SCHEDULERS


@dataclass
class StageSettings:
    """Sampling settings of one stage. ``guidance`` ≤ 1 turns classifier-free guidance off."""

    steps: int
    guidance: float = 1.0
    scheduler: str = "default"
    noise_level: int = 0  # upsamplers only: augmentation level of the low-res input
    # > 0: pixel upsamplers start at this timestep from the noised low-res image (SDEdit); the decoder's DDIM
    # inversion (the edits' invert) stops here and sampling resumes from it. Text-to-image ignores the decoder's.
    start: int = 0
    eta: float = 0.0  # DDIM's η (Song et al. 2021, eq. 16): 0 deterministic, 1 as much noise as DDPM
    # > 0: pixel upsamplers see their input mirrored this many pixels past each border, cropped off their output
    # (Real-ESRGAN's pre_pad): trained on crops, they never saw an image border and draw a frame along it
    pad: int = 0
    # > 1: the prior's best-of-n (DALL·E 2 §2.2): this many z_i per image, the one closest to the text's z_t kept
    samples: int = 1
    # > 0: the last this many steps that add noise take the posterior variance β̃ (Ho et al. 2020 §3.2) rather than
    # the model's learned one (Nichol & Dhariwal 2021 eq. 15). A respaced jump into t = 0 lets the learned variance
    # add up to 1 − ᾱ_t of noise that no later step takes out: speckle. No effect where the scheduler has no learned
    # variance (ddim, dpmpp: the edits' DDIM), and recorded only where it has one
    quiet_steps: int = 0

    def problem(self) -> str | None:
        """The first field whose value is out of range, as "<field> must be ...", else None."""
        for name, setting in SETTINGS.items():
            problem = setting.problem(getattr(self, name))
            if problem:
                return f"{name} {problem}"
        return None


def _whole(minimum: int) -> Callable[[Any], str | None]:
    def problem(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            return f"must be a whole number ≥ {minimum}, got {value!r}"
        return None

    return problem


def _number(low: float, high: float | None = None) -> Callable[[Any], str | None]:
    def problem(value: Any) -> str | None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and value >= low and (high is None or value <= high):  # (NaN fails both)
            return None
        return f"must be {f'in [{low:g}, {high:g}]' if high is not None else f'a number ≥ {low:g}'}, got {value!r}"

    return problem


def _scheduler(value: Any) -> str | None:
    if value not in SCHEDULERS:
        return f"must be one of {', '.join(SCHEDULERS)}, got {value!r}"
    return None


@dataclass(frozen=True)
class Setting:
    """One per-stage setting: its field, the parts of its names, its one check, and the CLI's parser."""

    name: str  # the StageSettings field and YAML key
    keyword: str  # the Python keyword's suffix: decoder_<keyword>
    flag: str  # the CLI flag's suffix: --decoder-<flag>
    label: str  # the PNG text's key after the stage's label: "Prior <label>"
    kind: type  # what the CLI parses the text as
    help: str
    problem: Callable[[Any], str | None]  # None when the value is valid, else what is wrong with it
    per_stage: bool = True  # False: one keyword and flag for all stages (scheduler)


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("steps", "num_inference_steps", "steps", "steps", int, "denoising steps", _whole(1)),
        Setting(
            "guidance",
            "guidance_scale",
            "guidance",
            "CFG scale",
            float,
            "classifier-free guidance scale, ≤ 1 is off",
            _number(0),
        ),  # fmt: skip
        Setting("scheduler", "scheduler", "scheduler", "sampler", str, "the sampler", _scheduler, per_stage=False),
        Setting(
            "noise_level",
            "noise_level",
            "noise-level",
            "noise level",
            int,
            "noise augmentation level of the low-res input",
            _whole(0),
        ),  # fmt: skip
        Setting(
            "start",
            "start",
            "start",
            "start",
            int,
            "start at this timestep from the noised input (SDEdit; 0: from pure noise)",
            _whole(0),
        ),  # fmt: skip
        Setting(
            "eta",
            "eta",
            "eta",
            "eta",
            float,
            "DDIM's η (ddim scheduler): 0 deterministic, 1 as much fresh noise as DDPM",
            _number(0, 1),
        ),  # fmt: skip
        Setting(
            "pad",
            "pad",
            "pad",
            "pad",
            int,
            "mirror the input this many pixels past each border, cropped off the output (0: none)",
            _whole(0),
        ),  # fmt: skip
        Setting(
            "samples",
            "samples",
            "samples",
            "samples",
            int,
            "best-of-n (DALL·E 2 §2.2): draw N image embeddings per image, keep the one closest to the text's",
            _whole(1),
        ),  # fmt: skip
        Setting(
            "quiet_steps",
            "quiet_steps",
            "quiet-steps",
            "quiet steps",
            int,
            "the last N steps that add noise add the posterior variance, not the learned one (0: all learned)",
            _whole(0),
        ),  # fmt: skip
    )
}
assert list(SETTINGS) == [f.name for f in dataclasses.fields(StageSettings)], "a StageSettings field lacks its row"


def replace(settings: StageSettings, changes: dict[str, Any], where: str) -> StageSettings:
    """``settings`` with ``changes`` (None = keep), each value checked: ``UnclipError("<where> <field> must ...")``."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - set(SETTINGS))
    if unknown:
        raise UnclipError(f"{where}: unknown setting '{unknown[0]}'; settings: {', '.join(SETTINGS)}")
    for name, value in changes.items():
        problem = SETTINGS[name].problem(value)
        if problem:
            raise UnclipError(f"{where} {name} {problem}")
    return dataclasses.replace(settings, **changes)
