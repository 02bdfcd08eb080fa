"""What serving costs: latency and throughput of `unclip serve` under concurrent load, beside `unclip batch`
making the same images.

    python scripts/benchmark_serve.py                                   # the demo, 64 px, 32 requests
    python scripts/benchmark_serve.py --model karlo-x4 --size 256 --requests 64 --max-batch 8 --json out.json

(1) `unclip serve` in its own process (127.0.0.1, one worker, ``--max-batch``) gets ``--requests`` concurrent
OpenAI generation requests, one image each with its own seed; each request's latency is timed from send to
answer: p50, p95, images/s over the whole load, and the pipeline calls it took. (2) Then, in this process, the
same prompts and seeds as pipeline calls of ``--max-batch`` images, saved as `unclip batch` saves them; images/s.
The overhead is 1 - serve / batch throughput.
A warm-up request and a warm-up batch run first. Prints a markdown row for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PROMPT = "a large red circle in the top left on a blue background"


def serve_load(args) -> dict:
    """`unclip serve` in its own process (as users run it); the requests from this one."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "unclip.cli", "serve", "--model", args.model, "--port", str(port),
                   "--out", tmp, "--max-batch", str(args.max_batch), "--max-queue", str(args.requests + 8)]  # fmt: skip
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            deadline = time.time() + 300
            while True:
                try:
                    httpx.get(base + "/api/info", timeout=5).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.time() > deadline or server.poll() is not None:
                        raise RuntimeError("the server did not start") from None
                    time.sleep(0.2)

            limits = httpx.Limits(max_connections=args.requests + 8)
            client = httpx.Client(base_url=base, timeout=3600, limits=limits)  # (one TLS context, not one each)

            def one(seed: int) -> float:
                start = time.perf_counter()
                body = {"prompt": PROMPT, "size": f"{args.size}x{args.size}", "seed": seed}
                client.post("/v1/images/generations", json=body).raise_for_status()
                return time.perf_counter() - start

            one(10**6)  # warm-up
            calls = httpx.get(base + "/api/info").json()["calls"]
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.requests) as pool:
                latencies = sorted(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
            calls = httpx.get(base + "/api/info").json()["calls"] - calls
        finally:
            server.terminate()
            server.wait(60)
    return {
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        "images_per_s": round(args.requests / wall, 3),
        "wall_s": round(wall, 2),
        "calls": calls,
    }


def batch_run(pipe, args) -> dict:
    """The same images as pipeline calls of ``--max-batch`` images, each saved with its metadata as `unclip batch`
    and `unclip generate` save them (PNG with parameters, metadata.jsonl line, both synced)."""
    from unclip.outputs import save_images

    pipe([PROMPT] * args.max_batch, seed=list(range(10**6, 10**6 + args.max_batch)), size=args.size)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for first in range(0, args.requests, args.max_batch):
            seeds = list(range(first, min(args.requests, first + args.max_batch)))
            result = pipe([PROMPT] * len(seeds), seed=seeds, size=args.size)
            save_images(Path(tmp), result.images, result.metadata)
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
    served = serve_load(args)
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
