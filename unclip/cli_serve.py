"""``unclip serve``: the OpenAI Images API, the AUTOMATIC1111 API and a web page, for many clients on one model.

    unclip serve --model demo --host 127.0.0.1 --port 7860 --out served/
    unclip serve --model karlo-x4 --api-key "$KEY" --max-batch 8 --max-queue 64 --cors http://localhost:3000

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): ``pip install -e ".[serve]"``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from unclip.cli_args import DTYPES, add_lora_arg, positive_int
from unclip.errors import UnclipError


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="preset name, model YAML file or save_pretrained folder")
    p.add_argument("--out", type=Path, default=Path("served"), help="where every result is saved (never overwritten)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="TCP port")
    p.add_argument("--max-batch", type=positive_int, default=8, help="images per pipeline call, across requests")
    p.add_argument("--max-queue", type=positive_int, default=32, help="requests waiting; more get 429")
    p.add_argument("--batch-wait", type=float, default=0.25, help="seconds to wait for more requests to fill a call")
    p.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY (default: $UNCLIP_API_KEY)")
    p.add_argument("--cors", metavar="ORIGIN", default=None, help="allow browser pages from ORIGIN (default: none)")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto", help="auto: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--attention", choices=("sdpa", "xformers"), default="sdpa", help="attention kernels")
    p.add_argument("--offload", action="store_true", help="model CPU offload: keep only the running model on the GPU")
    add_lora_arg(p)


def build(args):
    """The engine and the app of ``args`` (everything but listening), for ``run_serve`` and tests."""
    from importlib.util import find_spec

    if not all(find_spec(name) for name in ("fastapi", "uvicorn")) or not (
        find_spec("python_multipart") or find_spec("multipart")
    ):
        raise UnclipError('unclip serve needs FastAPI: pip install "unclip[serve]" (or -e ".[serve]")')
    if not 0 < args.port < 65536:
        raise UnclipError(f"--port must be 1-65535, got {args.port}")
    check_address(args.host, args.port)
    from unclip.cli_args import load_pipeline
    from unclip.serve.app import create_app
    from unclip.serve.engine import Engine

    loading = argparse.Namespace(
        model=args.model, out=args.out, seed=0, size=None, scheduler=None, device=args.device, dtype=args.dtype,
        attention=args.attention, offload=args.offload, speedups="default", quiet=True, lora=args.lora,
    )  # fmt: skip
    pipe, out = load_pipeline(loading)
    if args.batch_wait < 0:
        raise UnclipError(f"--batch-wait must be ≥ 0 seconds, got {args.batch_wait}")
    engine = Engine(pipe, out, max_batch=args.max_batch, max_queue=args.max_queue, batch_wait=args.batch_wait)
    key = args.api_key if args.api_key is not None else os.environ.get("UNCLIP_API_KEY") or None
    return engine, create_app(engine, model=args.model, api_key=key, cors=args.cors)


def check_address(host: str, port: int) -> None:
    """Refuse, before the model loads, an address this process cannot listen on."""
    import socket

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as err:
        raise UnclipError(
            f"cannot listen on {host}:{port} ({err.strerror or err}): choose another --port or --host"
        ) from None


def run_serve(args) -> int:
    """HTTP (uvicorn) in a thread; the pipeline's calls in this, the main thread (``Engine.work``) until Ctrl+C,
    SIGTERM, or the HTTP server stopping."""
    import signal
    import threading
    import time

    import uvicorn

    engine, app = build(args)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=5))  # fmt: skip

    def listen() -> None:
        try:
            server.run()  # not the main thread: uvicorn leaves the signals to this one
        finally:
            engine.stop()

    http = threading.Thread(target=listen, name="unclip-http", daemon=True)
    http.start()
    while not server.started and http.is_alive():
        time.sleep(0.05)
    if not server.started:
        raise UnclipError(f"the HTTP server could not start on {args.host}:{args.port}: choose another --port")
    print(f"unclip serve: http://{args.host}:{args.port}/ (model {args.model}, results in {args.out})", flush=True)

    def shut_down(*_) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shut_down)
    try:
        engine.work()
    except KeyboardInterrupt:
        print("unclip serve: stopped", flush=True)
    finally:
        server.should_exit = True
        engine.stop()
        http.join(10)
    return 0


COMMANDS = {"serve": ("a local server: OpenAI Images API, AUTOMATIC1111 API, web page", add_serve_args, run_serve)}
