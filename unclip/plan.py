"""From a request to what runs: the stages a call runs and their settings, checked before any work.

    from unclip.plan import KEYWORDS, resolve
    plan = resolve(load_model_config("demo"), size=256, stage_args={"decoder_num_inference_steps": 10})
    plan.stages, plan.settings["decoder"].steps       # ("prior", "decoder", "sr256"), 10

Everything here is pure: it needs a model config, not a loaded model, so the CLI runs it before loading and
the cascade runs it again on every call (``UnCLIPCascade.plan``, which adds the checks that need the model's
own schedulers: ``Stage.check``). Each check lives in one place:

* the names of the per-stage settings (``KEYWORDS``, ``NAMES``): the settings table × the stage registry;
* ``resolve``: size against the model, which stages run, unknown names, each value (``unclip.settings``);
* ``check_size``, ``check_keep``, ``check_count``, ``check_output_type``, ``prompt_list``, ``negatives_for``: the
  call's other arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unclip.errors import UnclipError
from unclip.schedulers import SCHEDULERS
from unclip.settings import SETTINGS, StageSettings, replace
from unclip.stages import SIZES, STAGES, Stage, first_of, settings_of

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass(frozen=True)
class Name:
    """The names of one per-stage setting: ``decoder`` × ``steps`` → ``decoder_num_inference_steps``,
    ``--decoder-steps``, ``decoder: {steps: ...}`` and "Steps" in the PNG text."""

    stage: str
    setting: str
    keyword: str
    flags: tuple[str, ...]  # the CLI flag, then older spellings that still work
    label: str
    help: str


def _name(stage: Stage, setting: str) -> Name:
    s = SETTINGS[setting]
    flags = (f"--{stage.flag}-{s.flag}", *stage.flag_aliases.get(setting, ()))
    label = f"{stage.label} {s.label}" if stage.label else s.label[0].upper() + s.label[1:]
    meaning = f"{stage.title}: {stage.setting_help.get(setting, s.help)}"
    return Name(stage.name, setting, f"{stage.keyword}_{s.keyword}", flags, label, meaning)


# every (stage, setting) pair that some kind of the stage takes, in running order, then table order
NAMES: tuple[Name, ...] = tuple(_name(first_of(stage), setting) for stage in STAGES for setting in settings_of(stage))
KEYWORDS: dict[str, Name] = {n.keyword: n for n in NAMES if SETTINGS[n.setting].per_stage}
LABELS: dict[tuple[str, str], str] = {(n.stage, n.setting): n.label for n in NAMES}


@dataclass
class Plan:
    """What a call runs: its output size, the stages from first to last, and their settings as they run."""

    size: int
    stages: tuple[str, ...]
    settings: dict[str, StageSettings]  # every stage's (those that do not run: as the model config has them)
    inverted: bool = False  # the decoder starts from a DDIM inversion at its ``start``
    used: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per stage run: the settings that decide it

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Per stage that runs, the settings that decided what it made (the ones its kind and scheduler use)."""
        out = {}
        for stage in self.stages:
            fields = self.used[stage] if stage in self.used else settings_of(stage)  # before the model check: all
            out[stage] = {name: getattr(self.settings[stage], name) for name in fields}
        return out


def check_size(size: int | None, max_size: int) -> int:
    """``size`` (None: ``max_size``), refused unless the cascade reaches it."""
    size = size or max_size
    if size not in SIZES:
        raise UnclipError(f"size must be one of {', '.join(map(str, SIZES[:-1]))} or {SIZES[-1]}, got {size!r}")
    if size > max_size:
        raise UnclipError(
            f"size {size} needs an upscaler: this model has no 'upscaler:', so it ends at {max_size}; add one to "
            f"its model config or ask for {max_size}"
        )
    return size


def _schedulers(scheduler: str | dict[str, str] | None) -> dict[str, str | None]:
    if scheduler is None or isinstance(scheduler, str):
        return dict.fromkeys(STAGES, scheduler)
    if not isinstance(scheduler, dict):
        raise UnclipError(f"scheduler must be a name or {{stage: name}}, got {scheduler!r}")
    unknown = sorted(set(scheduler) - set(STAGES))
    if unknown:
        raise UnclipError(f"unknown stage '{unknown[0]}' in scheduler; stages: {', '.join(STAGES)}")
    return {stage: scheduler.get(stage) for stage in STAGES}


def _check_scheduler_names(schedulers: dict[str, str | None]) -> None:
    for name in schedulers.values():
        if name is not None and SETTINGS["scheduler"].problem(name):
            raise UnclipError(f"unknown scheduler '{name}'; choose one of: {', '.join(SCHEDULERS)}")


def resolve(
    config,
    *,
    size: int | None = None,
    scheduler: str | dict[str, str] | None = None,
    stage_args: dict[str, Any] | None = None,
    first_stage: str = "prior",
    inverted: bool = False,
    kinds: dict[str, Stage] | None = None,
) -> Plan:
    """The plan of a call on the model of ``config`` (a ``unclip.config.ModelConfig``).

    ``stage_args``: per-stage keywords (``KEYWORDS``; None = the model config's value). ``first_stage``: where the
    call starts (the edits that start from an image embedding: decoder). ``inverted``: the decoder's noise is a
    DDIM inversion (its ``start`` applies). ``kinds``: the stage kinds of the loaded model, when known: a setting
    the model's kind of a stage does not take is then refused too."""
    stage_args = {k: v for k, v in (stage_args or {}).items() if v is not None}
    unknown = sorted(set(stage_args) - set(KEYWORDS))
    if unknown:
        raise UnclipError(f"unknown argument '{unknown[0]}'; per-stage arguments: {', '.join(KEYWORDS)}")
    max_size = max(k.size for k in kinds.values()) if kinds else config.max_size
    size = check_size(size, max_size)
    runs = tuple(s for s in STAGES[STAGES.index(first_stage) :] if size > first_of(s).input_size)
    missing = [stage for stage in runs if kinds is not None and stage not in kinds]
    if missing:
        raise UnclipError(first_of(missing[0]).missing.format(title=first_of(missing[0]).title))
    changes: dict[str, dict[str, Any]] = {stage: {} for stage in STAGES}
    schedulers = _schedulers(scheduler)
    _check_scheduler_names(schedulers)
    for stage, name in schedulers.items():
        changes[stage]["scheduler"] = name
    for keyword, value in stage_args.items():
        name = KEYWORDS[keyword]
        flag = f"{keyword} ({name.flags[0]})"
        if STAGES.index(name.stage) < STAGES.index(first_stage):
            raise UnclipError(f"{flag}: this call starts from an image embedding, so no {name.stage} runs")
        if name.setting == "start" and name.stage == "decoder" and not inverted:
            raise UnclipError(f"{flag}: the decoder's start is where a DDIM inversion stops (vary --invert, diff)")
        kind = (kinds or {}).get(name.stage)
        if kind is not None and name.setting not in kind.settings:
            raise UnclipError(f"{flag}: this model's {name.stage} ({kind.kind}) takes no {name.setting}")
        changes[name.stage][name.setting] = value
    settings = {
        stage: replace(config.stages[stage], changes[stage], stage) if stage in runs else config.stages[stage]
        for stage in STAGES
    }
    return Plan(size, runs, settings, inverted)


def prompt_list(prompt: str | list[str], what: str = "prompt") -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise UnclipError(f'the {what} is empty: give a text such as "a corgi playing a trumpet"')
    return prompts


def negatives_for(negative_prompt, num_prompts: int, per_prompt: int) -> list[str]:
    """One negative prompt per image ("" for none)."""
    if negative_prompt is None or isinstance(negative_prompt, str):
        return [negative_prompt or ""] * (num_prompts * per_prompt)
    if len(negative_prompt) != num_prompts:
        raise UnclipError(
            f"got {len(negative_prompt)} negative prompts for {num_prompts} prompts: give one each, or one for all"
        )
    return [n or "" for n in negative_prompt for _ in range(per_prompt)]


def check_count(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UnclipError(f"{name} must be ≥ 1, got {value!r}")


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise UnclipError(f"unknown output_type '{output_type}'; choose one of: {', '.join(OUTPUT_TYPES)}")


def check_keep(keep: int | None, rerank: bool, num_images_per_prompt: int) -> int | None:
    """How many reranked images to keep per prompt (None without reranking)."""
    if keep is not None and not rerank:
        raise UnclipError(
            "keep (--keep) needs rerank (--rerank MODEL/PRETRAINED): the CLIP model that chooses which to keep"
        )
    if not rerank:
        return None
    keep = 1 if keep is None else keep
    check_count("keep", keep)
    if keep > num_images_per_prompt:
        raise UnclipError(
            f"keep {keep} > num_images_per_prompt {num_images_per_prompt} (--keep > --num-images): make more candidates"
        )
    return keep
