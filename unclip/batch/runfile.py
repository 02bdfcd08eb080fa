"""Which command made a batch folder (``run.json``), and which of its images a command may keep.

    fingerprint(job, settings)          # what makes an image: prompt, negative, seed, size, stage settings
    check_command(out, command, mode)   # "new", "resume", or refuses a different command (one-line error)

``run.json`` holds the command: the prompt rows and every setting that changes pixels (model, seed,
num_images, size, negative prompt, per-stage flags, scheduler, dtype), not the batch size, device or number of
processes. The same command resumes. A different one is refused unless ``mode`` is

* ``append``: the folder's images must all still be made by the new command (rows added at the end of the
  prompt file, more images per prompt): they are kept and the rest is made;
* ``force``: the new command runs there anyway; a finished image whose id the new command makes differently
  is moved to ``superseded/`` first (never deleted), and its metadata line with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from unclip.batch.plan import Job
from unclip.batch.store import write_atomically
from unclip.errors import UnclipError

RUN_FILE = "run.json"
SUPERSEDED = "superseded"


def fingerprint(job: Job, settings: dict[str, Any]) -> str:
    """A hash of everything that decides ``job``'s pixels under the command's ``settings``."""
    what = {"job": [job.prompt, job.negative_prompt, job.seed, job.steps, job.guidance, job.size], **settings}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def write_command(out: Path, command: dict[str, Any]) -> None:
    text = json.dumps(command, indent=1, sort_keys=True) + "\n"
    write_atomically(out / RUN_FILE, lambda handle: handle.write(text.encode("utf-8")))


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key
    return "nothing"


def check_command(out: Path, command: dict[str, Any], mode: str | None) -> str:
    """``new`` (no run.json yet), ``resume`` (the same command) or ``mode`` (append / force) when allowed."""
    path = out / RUN_FILE
    if not path.is_file():
        return "new"
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    if old == command:
        return "resume"
    if mode is None:
        raise UnclipError(
            f"{out} holds a run of another command ({_first_difference(old, command)} differs): rerun that "
            "command to resume it, --append to add to it, --force to run this one there, or choose another --out"
        )
    return mode


def kept_and_superseded(
    lines: dict[str, dict[str, Any]], prints: dict[str, str], mode: str
) -> tuple[set[str], list[str]]:
    """Of the finished images (file name → metadata line): the ones the command keeps as done, and the ones
    to move aside (``force``). ``prints``: file name → fingerprint of each planned job. ``append`` refuses
    an image the new command would make differently."""
    keep, aside = set(), []
    for name, line in sorted(lines.items()):
        if name not in prints:
            continue  # not an id this command makes: left as is
        if line.get("fingerprint") == prints[name]:
            keep.add(name)
        elif mode == "append":
            raise UnclipError(
                f"--append: {name} was made with other settings than this command would use; rerun the "
                "original command, or --force to move the old images to superseded/"
            )
        else:
            aside.append(name)
    return keep, aside


def supersede(out: Path, lines: dict[str, dict[str, Any]], names: list[str]) -> None:
    """Move these finished images to superseded/, their metadata lines to superseded/metadata.jsonl (the
    folder's own metadata.jsonl drops them at the caller's next repair)."""
    if not names:
        return
    folder = out / SUPERSEDED
    folder.mkdir(exist_ok=True)
    with open(folder / "metadata.jsonl", "a") as handle:
        for name in names:
            target = folder / name
            stem, k = target.stem, 1
            while target.exists():
                target, k = folder / f"{stem}-{k}.png", k + 1
            os.replace(out / name, target)
            handle.write(json.dumps({**lines[name], "file_name": target.name, "moved_from": name}) + "\n")
