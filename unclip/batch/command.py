"""A batch run end to end, in one process or many (accelerate): what `unclip batch` and
scripts/generate_batch.py call.

    unclip batch prompts.txt --model demo --out gallery/ --num-images 3 --batch-size 8
    accelerate launch --multi_gpu --num_processes 2 scripts/generate_batch.py prompts.txt --out gallery/ ...

1. Everything is checked before any work: the prompt file (``unclip.batch.prompts``), the sizes against the
   model, the folder against the command that made it (``unclip.batch.runfile``).
2. The main process repairs the folder (``unclip.batch.store.repair``); every process then reads the same
   metadata.jsonl, so all agree on what is left, and takes every N-th unfinished image (``run.shard``).
3. Each process writes its own PNGs and part file; at the end the main process repairs again (one line per
   image, sorted), writes a grid per prompt and index.html (``unclip.batch.gallery``) and the summary.

With several processes and no GPU, accelerate's ``PartialState`` runs them on CPU (gloo).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unclip import runtime
from unclip.batch import runfile
from unclip.batch.gallery import write_gallery
from unclip.batch.plan import plan
from unclip.batch.prompts import read_prompts
from unclip.batch.run import run_shard, shard
from unclip.batch.store import METADATA, PARTS, read_lines, repair
from unclip.errors import UnclipError
from unclip.loading import stage_kinds
from unclip.plan import KEYWORDS, resolve


@dataclass
class Request:
    """The command: every setting that changes pixels, then the ones that only change how fast."""

    prompts: Path
    model: str
    out: Path
    num_images: int = 1
    seed: int = 0
    size: int | None = None
    negative_prompt: str | None = None
    sampling: dict[str, Any] = dataclasses.field(default_factory=dict)  # UnCLIPCascade.__call__ keywords
    dtype: str = "auto"  # auto | fp16 | bf16 | fp32
    batch_size: int = 4
    device: str = "auto"
    attention: str = "sdpa"
    speedups: str = "default"  # a preset of unclip.speedups
    mode: str | None = None  # None | "append" | "force"
    progress: bool = True
    lora: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # model-config entries: {path, scale}


@dataclass
class Summary:
    planned: int
    already_done: int
    made: int
    seconds: float
    processes: int
    lines: int

    def __str__(self) -> str:
        rate = f", {self.made / self.seconds:.2f} images/s" if self.made and self.seconds > 0 else ""
        return (
            f"made {self.made} images in {self.seconds:.1f} s{rate} on {self.processes} process(es); "
            f"{self.already_done} of {self.planned} were already done; metadata.jsonl: {self.lines} lines"
        )


def _state():
    from accelerate import PartialState

    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=several and not torch.cuda.is_available())


def _runtime(request: Request, state):
    """``generate``'s checks of device, dtype, attention and speed-ups; under accelerate, auto is this process's
    device."""
    several = request.device == "auto" and state.num_processes > 1
    device = str(state.device) if several else request.device
    return runtime.resolve(device, request.dtype, request.attention, speedups=request.speedups)


def _count_parts(out: Path) -> int:
    parts = out / PARTS
    return sum(len(read_lines(p)) for p in parts.glob("metadata-*.jsonl")) if parts.is_dir() else 0


def _prepare_folder(out: Path, command: dict[str, Any], prints: dict[str, str], mode: str | None) -> None:
    """Main process: refuse another command's folder (unless --append / --force), repair it, record the command."""
    from unclip.outputs import ensure_writable

    ensure_writable(out)
    mode = runfile.check_command(out, command, mode)
    lines = repair(out)
    _, aside = runfile.kept_and_superseded(lines, prints, mode)
    if aside:
        runfile.supersede(out, lines, aside)
        repair(out)
    runfile.write_command(out, command)


def run(request: Request) -> Summary | None:
    """Make every image of ``request`` that its folder lacks; the summary in the main process, else None."""
    from unclip.config import load_model_config
    from unclip.pipeline import UnCLIPCascade

    rows = read_prompts(request.prompts)
    jobs = plan(rows, request.num_images, request.seed)
    config = load_model_config(request.model)
    config = dataclasses.replace(config, lora=[*config.lora, *request.lora])
    stage_args = {k: v for k, v in request.sampling.items() if k in KEYWORDS}
    scheduler, kinds = request.sampling.get("scheduler"), stage_kinds(config)
    for row in rows:  # every row's plan, as the cascade will make it (the rows' own steps, guidance and size)
        row_args = {**stage_args, "decoder_num_inference_steps": row.steps, "decoder_guidance_scale": row.guidance}
        try:
            resolve(config, size=row.size or request.size, scheduler=scheduler, stage_args=row_args, kinds=kinds)
        except UnclipError as err:
            raise UnclipError(f"{request.prompts}:{row.line}: {err}") from None
    state = _state()
    device, dtype, speedups = _runtime(request, state)
    settings = {
        "model": request.model,
        "size": request.size or config.max_size,
        "negative_prompt": request.negative_prompt,
        "sampling": {k: v for k, v in sorted(request.sampling.items()) if v is not None},
        "dtype": str(dtype).removeprefix("torch."),
    }
    if request.speedups != "default":  # they move pixels a little, as the dtype does (absent: older runs' prints)
        settings["speedups"] = request.speedups
    if config.lora:  # adapters change the pictures (absent without: older runs' prints hold)
        settings["lora"] = config.lora
    command = {
        "rows": [[r.prompt, r.negative_prompt, r.seed, r.num_images, r.steps, r.guidance, r.size] for r in rows],
        "num_images": request.num_images,
        "seed": request.seed,
        **settings,
    }
    prints = {j.file_name: runfile.fingerprint(j, settings) for j in jobs}

    out = request.out
    problem = [None]
    if state.is_main_process:
        try:
            _prepare_folder(out, command, prints, request.mode)
        except UnclipError as err:
            problem = [str(err)]
    if state.num_processes > 1:  # the others must not wait for a main process that has stopped
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(problem)
    if problem[0] is not None:
        raise UnclipError(problem[0])
    done = {
        line["file_name"]
        for line in read_lines(out / METADATA)
        if prints.get(line["file_name"]) == line.get("fingerprint")
    }
    todo = [j for j in jobs if j.file_name not in done]
    mine = shard(todo, state.process_index, state.num_processes)

    pipe = None
    if mine:  # a finished run (or shard) loads no model
        pipe = UnCLIPCascade.from_pretrained(config, torch_dtype=dtype)
        runtime.place(pipe, device, attention=request.attention, speedups=speedups, progress=False)
    call_kwargs = {**request.sampling, "negative_prompt": request.negative_prompt}
    if request.size:
        call_kwargs["size"] = request.size
    bar = None
    if state.is_main_process and request.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="img", desc=f"batch ({state.num_processes} process(es))")

    def on_images(_: int) -> None:
        if bar is not None:  # every process's part file counts: one bar for the whole run
            bar.n = min(_count_parts(out), len(todo))
            bar.refresh()

    start = time.perf_counter()
    run_shard(
        pipe,
        mine,
        out,
        batch_size=request.batch_size,
        rank=state.process_index,
        call_kwargs=call_kwargs,
        on_images=on_images,
        stamp=lambda job: {"fingerprint": prints[job.file_name]},
    )
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    if not state.is_main_process:
        return None
    lines = repair(out)
    write_gallery(out, lines)
    if bar is not None:
        bar.n = len(todo)
        bar.close()
    return Summary(len(jobs), len(jobs) - len(todo), len(todo), seconds, state.num_processes, len(lines))
