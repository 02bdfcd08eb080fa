"""One worker owns the pipeline; every client's request waits in one bounded queue.

    engine = Engine(pipe, out=Path("served"), max_batch=8, max_queue=32)
    engine.start()
    job = engine.submit(Job.generate("a red circle", n=2, size=64, seed=0))   # QueueFull when the queue is full
    images = job.result(timeout=60)            # [Image(path, metadata, png bytes), ...]; Cancelled if cancelled
    engine.cancel(job.id); engine.interrupt()  # one job (queued or running); whatever runs now
    engine.progress()                          # the running batch's stage and step, the queue's length
    engine.stop()

Batching: the worker takes the oldest job, then every queued job it can run in the same pipeline call (same
kind, size and settings: ``Job.key``), oldest first, while the images stay within ``max_batch``. A job is never
split. When the oldest job's call would not be full, the worker waits for more while they keep coming: until
``batch_wait`` seconds pass without a new request (at most 10 × ``batch_wait`` in all). Requests sent together
arrive over tens of milliseconds, and a call at 64 px takes seconds. Each image
keeps its own seed (``seed + k`` of its job), so it is the same made alone or in a batch. Images and metadata
go to ``out`` as `unclip generate` writes them (``unclip.outputs.save_images``: numbered, never overwritten,
each PNG whole or absent).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unclip.errors import UnclipError

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already: the client should retry later (HTTP 429)."""


class Cancelled(Exception):
    """The job was cancelled (by its client, or an interrupt) before its images were made."""


class ShuttingDown(Cancelled):
    """The server stopped before the job's images were made (HTTP 503)."""


@dataclass
class Image:
    path: Path
    metadata: dict[str, Any]
    png: bytes


_ids = itertools.count(1)
KEEP = 256  # finished jobs (and their PNGs) kept for polling


@dataclass
class Job:
    """One request: ``n`` images of one prompt (``generate``), of one picture's variations (``vary``), the ``n``
    frames of an interpolation between two pictures (``interpolate``: ``image`` is the pair), or ``n`` edits of a
    picture (``edit``: ``image`` is a ``unclip.masks.Canvas``)."""

    kind: str  # "generate", "vary", "interpolate" or "edit"
    n: int
    size: int
    seed: int
    prompt: str = ""
    negative_prompt: str = ""
    image: Any = None  # vary: a PIL image; interpolate: two; edit: a Canvas
    settings: dict[str, Any] = field(default_factory=dict)  # pipeline keywords: per-stage settings, scheduler
    options: dict[str, Any] = field(default_factory=dict)  # the kind's own keywords (edit: image_weight, ...)
    id: str = field(default_factory=lambda: f"job-{next(_ids)}")
    created: float = field(default_factory=time.time)
    future: Future = field(default_factory=Future, repr=False)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def generate(cls, prompt: str, n: int, size: int, seed: int, **kwargs) -> Job:
        return cls("generate", n, size, seed, prompt=prompt, **kwargs)

    @property
    def key(self) -> tuple:
        """Jobs with equal keys run in one pipeline call; a variation runs alone (its picture is its own)."""
        alone = self.id if self.kind != "generate" else ""
        return (self.kind, self.size, tuple(sorted((k, repr(v)) for k, v in self.settings.items())), alone)

    def result(self, timeout: float | None = None) -> list[Image]:
        return self.future.result(timeout)

    @property
    def state(self) -> str:
        if self.future.done():
            return "cancelled" if isinstance(self.future.exception(), Cancelled) else "done"
        return "running" if self.future.running() else "queued"


@dataclass
class Progress:
    """What the worker is doing: the jobs of the running batch, its stage, step and steps, when it began."""

    jobs: list[str] = field(default_factory=list)
    stage: str | None = None
    step: int = 0
    steps: int = 0
    stages: list[str] = field(default_factory=list)  # of the running call, in order
    started: float = 0.0
    done_stages: int = 0


class Engine:
    def __init__(self, pipe, out: Path, max_batch: int = 8, max_queue: int = 32, batch_wait: float = 0.25):
        if max_batch < 1 or max_queue < 1:
            raise UnclipError(f"max_batch and max_queue must be at least 1, got {max_batch} and {max_queue}")
        from unclip.outputs import ensure_writable

        self.pipe, self.out = pipe, ensure_writable(Path(out))
        self.max_batch, self.max_queue, self.batch_wait = max_batch, max_queue, batch_wait
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}  # the jobs seen, by id (the page polls them): the last KEEP finished ones
        self._lock = threading.Condition()
        self._running: list[Job] = []
        self._progress = Progress()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.completed = 0  # images made, for the page and the benchmarks
        self.calls = 0  # pipeline calls made (completed / calls: the mean batch)
        self._last_submit = 0.0
        pipe.progress_bar = self._steps  # every stage's denoising loop reports here (and checks for cancels)
        # (an instance attribute over the class's method: ``stop`` removes it)

    # ------------------------------------------------------------------------------------------ clients
    def submit(self, job: Job) -> Job:
        if job.n > self.max_batch:
            raise UnclipError(f"n = {job.n} is more than this server's --max-batch {self.max_batch}: ask for fewer")
        with self._lock:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting): retry later")
            self._queue.append(job)
            self._jobs[job.id] = job
            self._last_submit = time.monotonic()
            finished = [key for key, seen in self._jobs.items() if seen.future.done()]
            for key in finished[: max(0, len(finished) - KEEP)]:  # oldest first: dicts keep insertion order
                del self._jobs[key]
            self._lock.notify()
        return job

    def job(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job; False when there is none of that id or it has finished."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.future.done():
                return False
            job.cancelled.set()
            if job in self._queue:
                self._queue.remove(job)
                job.future.set_exception(Cancelled(f"{job.id} was cancelled"))
            return True

    def interrupt(self) -> int:
        """Cancel the running batch's jobs (A1111's interrupt); returns how many."""
        with self._lock:
            running = [job for job in self._running if not job.future.done()]
        for job in running:
            job.cancelled.set()
        return len(running)

    def progress(self) -> dict[str, Any]:
        with self._lock:
            p = self._progress
            fraction = 0.0
            if p.stages:
                within = p.step / p.steps if p.steps else 0.0
                fraction = min(1.0, (p.done_stages + within) / len(p.stages))
            elapsed = time.time() - p.started if p.jobs else 0.0
            return {
                "jobs": list(p.jobs), "stage": p.stage, "step": p.step, "steps": p.steps, "stages": list(p.stages),
                "progress": round(fraction, 4), "elapsed": round(elapsed, 3),
                "eta": round(elapsed / fraction - elapsed, 3) if fraction > 0 else None,
                "queued": len(self._queue), "completed": self.completed,
            }  # fmt: skip

    @property
    def queued(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------------------------------------ worker
    def start(self) -> Engine:
        """The worker in a thread of its own (tests, an app in-process); ``unclip serve`` calls ``work`` instead."""
        self._thread = threading.Thread(target=self.work, name="unclip-worker", daemon=True)
        self._thread.start()
        return self

    def work(self) -> None:
        """Be the worker in the calling thread until ``stop``. ``unclip serve`` works in its main thread and serves
        HTTP from another: on CPU the same pipeline call took 1.2-1.6× as long in a second thread of a process whose
        main thread had run torch work (docs/benchmarks.md, scripts/serve_thread_probe.py)."""
        from unclip.outputs import remove_partial

        remove_partial(self.out)  # what a killed server was writing: never a result
        try:
            self._work()
        finally:  # stopped, or interrupted (Ctrl+C) mid-call: the running batch's clients hear it, none waits
            with self._lock:
                running, self._running = self._running, []
            for job in running:
                if not job.future.done():
                    job.future.set_exception(ShuttingDown("the server is shutting down"))

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stop = True
            waiting = list(self._queue)
            self._queue.clear()
            self._lock.notify_all()
        for job in waiting:
            job.future.set_exception(ShuttingDown("the server is shutting down"))
        self.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.pipe.__dict__.get("progress_bar") == self._steps:
            del self.pipe.progress_bar  # the pipeline's own progress bars again

    def _compatible(self) -> list[Job]:
        """The oldest job and the queued jobs of its key that fit beside it, oldest first (under the lock)."""
        first, batch, images = self._queue[0], [], 0
        for job in self._queue:
            if job.key == first.key and images + job.n <= self.max_batch:
                batch.append(job)
                images += job.n
        return batch

    def _fill(self) -> int:
        """The images the oldest job's call would hold now (under the lock)."""
        return sum(job.n for job in self._compatible())

    def _next_batch(self) -> list[Job]:
        """Take ``_compatible`` out of the queue (under the lock)."""
        batch = self._compatible()
        for job in batch:
            self._queue.remove(job)
        return batch

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stop:
                    self._lock.wait()
                limit = time.monotonic() + 10 * self.batch_wait
                while not self._stop and self._queue and self._fill() < self.max_batch:
                    quiet = self._last_submit + self.batch_wait  # submit() wakes the wait and moves this
                    left = min(quiet, limit) - time.monotonic()
                    if left <= 0:
                        break
                    self._lock.wait(left)
                if self._stop:
                    return
                if not self._queue:  # cancelled while the worker waited for company
                    continue
                batch = [job for job in self._next_batch() if job.future.set_running_or_notify_cancel()]
                self._running = batch
                jobs, stages = [job.id for job in batch], self._stages(batch)
                self._progress = Progress(jobs=jobs, stages=stages, started=time.time())
            if batch:
                self._run(batch)
            with self._lock:
                self._running = []
                self._progress = Progress()

    def _run(self, batch: list[Job]) -> None:
        from unclip.outputs import save_images

        self.calls += 1
        try:
            result = self._call(batch)
        except Cancelled:
            for job in batch:
                job.future.set_exception(Cancelled(f"{job.id} was cancelled"))
            return
        except Exception as err:  # a bad request or a failing model: that batch's clients hear why, the worker goes on
            logger.exception("batch %s failed", [job.id for job in batch])
            for job in batch:
                job.future.set_exception(err)
            return
        start = 0
        for job in batch:
            images, metadata = result.images[start : start + job.n], result.metadata[start : start + job.n]
            start += job.n
            if job.cancelled.is_set():
                job.future.set_exception(Cancelled(f"{job.id} was cancelled"))
                continue
            for meta in metadata:
                meta["job"] = job.id
            try:
                paths = save_images(self.out, images, metadata)
                job.future.set_result([Image(p, m, p.read_bytes()) for p, m in zip(paths, metadata, strict=True)])
                self.completed += len(paths)
            except Exception as err:
                job.future.set_exception(err)

    def _stages(self, batch: list[Job]) -> list[str]:
        """The stages the batch's call will run, in order (for the progress fraction); [] if it cannot be planned."""
        if not batch:
            return []
        settings = dict(batch[0].settings)
        scheduler = settings.pop("scheduler", None)
        try:
            plan = self.pipe.plan(batch[0].size, scheduler, settings)
        except Exception:  # the call itself will say what is wrong
            return []
        return list(plan.stages)

    def _call(self, batch: list[Job]):
        first = batch[0]
        if first.kind == "vary":
            return self.pipe.vary(
                first.image, num_images_per_prompt=first.n, seed=first.seed, size=first.size, **first.settings
            )
        if first.kind == "edit":
            return self.pipe.edit(first.image, prompt=first.prompt, negative_prompt=first.negative_prompt or None,
                                  num_images_per_prompt=first.n, seed=first.seed, size=first.size, **first.options,
                                  **first.settings)  # fmt: skip
        if first.kind == "interpolate":
            start, end = first.image
            return self.pipe.interpolate(start, end, frames=first.n, seed=first.seed, size=first.size, **first.settings)
        prompts = [job.prompt for job in batch for _ in range(job.n)]
        negatives = [job.negative_prompt for job in batch for _ in range(job.n)]
        seeds = [job.seed + k for job in batch for k in range(job.n)]
        return self.pipe(
            prompts,
            negative_prompt=negatives if any(negatives) else None,
            seed=seeds,
            size=first.size,
            **first.settings,
        )

    def _steps(self, iterable: Iterable | None = None, total: int | None = None, desc: str | None = None):
        """The cascade's progress bar: records each stage's step for ``progress`` and stops the call (Cancelled)
        as soon as every job of the running batch is cancelled."""
        items = list(iterable) if iterable is not None else list(range(total or 0))
        with self._lock:
            p = self._progress
            if p.stage is not None and p.stage != desc:
                p.done_stages += 1
            if desc not in p.stages:
                p.stages.append(desc)  # e.g. a stage the plan could not foresee
            p.stage, p.step, p.steps = desc, 0, len(items)
        for item in items:
            if self._running and all(job.cancelled.is_set() for job in self._running):
                raise Cancelled("interrupted")
            yield item
            with self._lock:
                self._progress.step += 1
