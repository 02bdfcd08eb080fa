"""What serving costs: latency and throughput of `unclip serve` under concurrent load, beside `unclip batch`
making the same images.

    python scripts/benchmark_serve.py                                   # the demo, 64 px, 32 requests
    python scripts/benchmark_serve.py --model karlo-x4 --size 256 --requests 64 --max-batch 8 --json out.json

(1) A server in this process (uvicorn on 127.0.0.1, one worker, ``--max-batch``) gets ``--requests`` concurrent
OpenAI generation requests, one image each with its own seed; each request's latency is timed from send to
answer: p50, p95, and images/s over the whole load. (2) `unclip batch` (the same process, the same model, batch
size ``--max-batch``) makes the same prompts and seeds; images/s. The overhead is 1 - serve / batch throughput.
A warm-up request and a warm-up batch run first. Prints a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "a large red circle in the top left on a blue background"


def serve_load(pipe, out: Path, args) -> dict:
    import httpx
    import uvicorn

    from unclip.serve.app import create_app
    from unclip.serve.engine import Engine

    engine = Engine(pipe, out, max_batch=args.max_batch, max_queue=args.requests + 8).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(engine, model=args.model), "127.0.0.1", port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/v1/images/generations"

    def one(seed: int) -> float:
        start = time.perf_counter()
        body = {"prompt": PROMPT, "size": f"{args.size}x{args.size}", "seed": seed}
        answer = httpx.post(url, json=body, timeout=3600)
        answer.raise_for_status()
        return time.perf_counter() - start

    try:
        one(10**6)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            latencies = sorted(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - start
    finally:
        server.should_exit = True
        thread.join(10)
        engine.stop()
    return {
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        "images_per_s": round(args.requests / wall, 3),
        "wall_s": round(wall, 2),
    }


def batch_run(pipe, args) -> dict:
    """The same images as plain pipeline calls of ``--max-batch`` images (what `unclip batch` runs per call)."""
    pipe([PROMPT] * args.max_batch, seed=list(range(10**6, 10**6 + args.max_batch)), size=args.size)  # warm-up
    start = time.perf_counter()
    for first in range(0, args.requests, args.max_batch):
        seeds = list(range(first, min(args.requests, first + args.max_batch)))
        pipe([PROMPT] * len(seeds), seed=seeds, size=args.size)
    wall = time.perf_counter() - start
    return {"images_per_s": round(args.requests / wall, 3), "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)

    import torch

    from unclip import UnCLIPCascade
    from unclip.errors import quiet_libraries

    quiet_libraries()
    pipe = UnCLIPCascade.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    with tempfile.TemporaryDirectory() as tmp:
        served = serve_load(pipe, Path(tmp), args)
    batched = batch_run(pipe, args)
    overhead = 1 - served["images_per_s"] / batched["images_per_s"]
    result = {"model": args.model, "size": args.size, "requests": args.requests, "max_batch": args.max_batch,
              "threads": torch.get_num_threads(), "serve": served, "batch": batched,
              "overhead": round(overhead, 4)}  # fmt: skip
    print(json.dumps(result))
    print(
        f"| {args.model} {args.size} px | {args.requests} requests, max batch {args.max_batch} | "
        f"p50 {served['p50_s']} s, p95 {served['p95_s']} s | serve {served['images_per_s']} img/s | "
        f"batch {batched['images_per_s']} img/s | overhead {overhead:.1%} |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
