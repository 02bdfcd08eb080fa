"""`unclip serve` under load, bounded in count and time, on 127.0.0.1: 32 concurrent requests on the demo at 64 px
are all answered and saved once each; bad requests among them get their 4xx and the server goes on; a server
killed with SIGKILL mid-request leaves no partial result, and the next one starts clean."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from PIL import Image

FAST = {"prior_num_inference_steps": 4, "decoder_num_inference_steps": 4}
PROMPT = "a small red triangle in the bottom left on a white background"


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url + "/sdapi/v1/progress", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"no server at {url} after {seconds} s")


def test_32_concurrent_requests_and_bad_ones_among_them(tmp_path):
    import uvicorn

    from unclip import UnCLIPCascade
    from unclip.serve.app import create_app
    from unclip.serve.engine import Engine

    engine = Engine(UnCLIPCascade.from_pretrained("demo"), tmp_path, max_batch=8, max_queue=64).start()
    port = _port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model="demo"), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url)

        def good(k: int):
            body = {"prompt": PROMPT, "size": "64x64", "seed": 1000 + k, **FAST}
            return httpx.post(url + "/v1/images/generations", json=body, timeout=300)

        bad_bodies = [
            {"size": "64x64"},
            {"prompt": PROMPT, "n": 0},
            {"prompt": PROMPT, "size": "65x65"},
            {"prompt": PROMPT, "scheduler": "nope"},
            {"prompt": PROMPT, "decoder_guidance_scale": "x"},
        ]

        def bad(body):
            return httpx.post(url + "/v1/images/generations", json=body, timeout=60)

        started = time.time()
        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(good, range(32)))
            refused = list(pool.map(bad, bad_bodies))
        assert time.time() - started < 600
        assert [a.status_code for a in answers] == [200] * 32, [a.text for a in answers if a.status_code != 200]
        assert [r.status_code for r in refused] == [400] * len(bad_bodies)
        assert httpx.post(url + "/v1/images/generations", content=b"\xff", timeout=60).status_code == 400
        rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
        files = sorted(p.name for p in tmp_path.glob("*.png"))
        assert len(rows) == len(files) == 32 and sorted(r["file_name"] for r in rows) == files  # none twice
        assert sorted(r["seed"] for r in rows) == list(range(1000, 1032))
        assert len({r["job"] for r in rows}) == 32 and len(engine._jobs) == 32
        assert good(99).status_code == 200  # and it goes on serving
    finally:
        server.should_exit = True
        thread.join(10)
        engine.stop()


def test_a_server_killed_mid_request_leaves_no_partial_result(tmp_path):
    out = tmp_path / "served"
    port = _port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "unclip.cli", "serve", "--model", "demo", "--port", str(port), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for round_number in range(2):
        server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_ready(url)
            body = {"prompt": PROMPT, "size": "64x64", "n": 8, "seed": 10 * round_number, **FAST}
            with ThreadPoolExecutor(max_workers=3) as pool:
                waiting = [pool.submit(httpx.post, url + "/v1/images/generations", json=body, timeout=120)
                           for _ in range(3)]  # fmt: skip
                time.sleep(2.0 + round_number)  # inside the first batch, or its saving
                server.send_signal(signal.SIGKILL)
                for future in waiting:
                    try:
                        future.result()
                    except httpx.HTTPError:
                        pass
        finally:
            server.kill()
            server.wait(30)
        for png in out.glob("*.png"):  # every result whole
            with Image.open(png) as image:
                image.load()
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_ready(url)
        assert not list(out.glob(".unclip-partial-*"))  # what the killed ones were writing is gone
        before = {p.name: p.read_bytes() for p in out.glob("*.png")}
        answer = httpx.post(
            url + "/v1/images/generations", json={"prompt": PROMPT, "size": "64x64", **FAST}, timeout=120
        )
        assert answer.status_code == 200
        assert all((out / name).read_bytes() == data for name, data in before.items())  # nothing overwritten

        # SIGTERM mid-request: the client hears 503, the server stops by itself within seconds, no traceback
        body = {"prompt": PROMPT, "size": "64x64", "n": 8}  # the demo's full steps: seconds of work
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(httpx.post, url + "/v1/images/generations", json=body, timeout=120)
            deadline = time.time() + 60
            while not httpx.get(url + "/sdapi/v1/progress", timeout=5).json()["state"]["job"]:
                assert time.time() < deadline, "the request never started"
                time.sleep(0.1)
            server.send_signal(signal.SIGTERM)
            assert server.wait(30) == 0
            answer = pending.result()
        assert answer.status_code == 503 and "shutting down" in answer.json()["error"]["message"], answer.text
        assert "Traceback" not in server.stderr.read().decode()
    finally:
        server.kill()
        server.wait(30)
