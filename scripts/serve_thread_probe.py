"""Why `unclip serve` calls run slower than the same calls in a plain process: one pipeline call timed in the main
thread and in a second thread, alternately, in one process (the server's worker is a second thread).

    python scripts/serve_thread_probe.py                 # the demo, 8 images at 64 px, 3 rounds
    python scripts/serve_thread_probe.py --rounds 5 --images 4

Prints the seconds of each call per thread and the ratio of the medians (worker / main).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from unclip import UnCLIPCascade

    pipe = UnCLIPCascade.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompt = "a large red circle in the top left on a blue background"

    def call() -> float:
        start = time.perf_counter()
        pipe([prompt] * args.images, seed=list(range(args.images)), size=args.size)
        return time.perf_counter() - start

    call()  # warm-up, in the main thread (as a process that did any torch work there)
    times: dict[str, list[float]] = {"main": [], "worker": []}
    for _ in range(args.rounds):
        times["main"].append(call())
        thread = threading.Thread(target=lambda: times["worker"].append(call()))
        thread.start()
        thread.join()
    ratio = statistics.median(times["worker"]) / statistics.median(times["main"])
    print({name: [round(t, 2) for t in values] for name, values in times.items()},
          f"torch threads {torch.get_num_threads()}, worker/main {ratio:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
