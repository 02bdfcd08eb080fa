"""`unclip serve`: the OpenAI Images API, the AUTOMATIC1111 API, the page's job routes and the worker, in-process
on the offline demo (FastAPI's TestClient), at 64 px with few steps."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient  # the dev extra has the serve extra and httpx
from PIL import Image

from unclip import UnCLIPCascade
from unclip.serve.app import create_app
from unclip.serve.engine import Cancelled, Engine, Job, QueueFull

FAST = {"prior_num_inference_steps": 3, "decoder_num_inference_steps": 3}
PROMPT = "a large red circle in the top left on a blue background"


@pytest.fixture(scope="module")
def pipe():
    return UnCLIPCascade.from_pretrained("demo")


@pytest.fixture
def server(pipe, tmp_path):
    engine = Engine(pipe, tmp_path / "served", max_batch=8, max_queue=4).start()
    with TestClient(create_app(engine, model="demo")) as client:
        yield client, engine, tmp_path / "served"
    engine.stop()


def _png(image_b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image_b64)))


def _error(response, status: int, param=None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param, error
    assert "\n" not in error["message"]
    return error["message"]


def test_generations_as_openai_answers_the_same_pictures_as_the_pipeline(server, pipe):
    client, engine, out = server
    body = {"prompt": PROMPT, "n": 2, "size": "64x64", "seed": 7, "model": "dall-e-2", "user": "me", **FAST}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2 and all(set(d) == {"b64_json", "revised_prompt"} for d in data)
    direct = pipe(PROMPT, num_images_per_prompt=2, seed=7, size=64, **FAST).images
    for item, expected in zip(data, direct, strict=True):
        image = _png(item["b64_json"])
        assert image.size == (64, 64) and np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
        assert (
            PROMPT in image.info["parameters"]
            and "Seed: 7" in image.info["parameters"]
            or "Seed: 8" in image.info["parameters"]
        )
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [7, 8] and sorted(p.name for p in out.glob("*.png")) == [
        "00000-7.png",
        "00001-8.png",
    ]

    url = client.post("/v1/images/generations", json={**body, "n": 1, "response_format": "url"}).json()["data"][0]
    assert url["url"].endswith("/files/00002-7.png")
    assert client.get("/files/00002-7.png").content == (out / "00002-7.png").read_bytes()
    for outside in ["..%2Fsecret.png", "metadata.jsonl", "00009-1.png", "%2Fetc%2Fpasswd"]:
        assert client.get(f"/files/{outside}").status_code == 404


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"n": 1}, "prompt", "prompt must be a non-empty string"),
        ({"prompt": " "}, "prompt", "non-empty"),
        ({"prompt": "x" * 1001}, "prompt", "at most 1000"),
        ({"prompt": "a", "n": 11}, "n", "from 1 to 10"),
        ({"prompt": "a", "n": "2"}, "n", "whole number"),
        ({"prompt": "a", "size": "512x512"}, "size", '"64x64", "256x256", "1024x1024"'),
        ({"prompt": "a", "size": "64x128"}, "size", "not one this model makes"),
        ({"prompt": "a", "response_format": "png"}, "response_format", "b64_json or url"),
        ({"prompt": "a", "seed": -5}, "seed", "≥ 0"),
        ({"prompt": "a", "scheduler": "euler"}, "scheduler", "choose one of"),
        ({"prompt": "a", "decoder_num_inference_steps": 0}, None, "decoder"),
    ],
)
def test_bad_generation_requests_are_400_in_openai_error_json(server, body, param, words):
    client, engine, out = server
    message = _error(client.post("/v1/images/generations", json={"size": "64x64", **body}), 400, param)
    assert words in message, message
    assert not out.exists() or not list(out.glob("*.png"))  # nothing ran


def test_a_body_that_is_not_json_and_the_server_goes_on(server):
    client, _, _ = server
    response = client.post("/v1/images/generations", content=b"{nope", headers={"Content-Type": "application/json"})
    assert "not JSON" in _error(response, 400)
    ok = client.post("/v1/images/generations", json={"prompt": PROMPT, "size": "64x64", **FAST})
    assert ok.status_code == 200


def test_variations_from_an_upload(server):
    client, _, out = server
    source = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(source, format="PNG")
    files = {"image": ("red.png", source.getvalue(), "image/png")}
    fields = {"n": "2", "size": "64x64", "seed": "3", "decoder_num_inference_steps": "3"}
    response = client.post("/v1/images/variations", files=files, data=fields)
    assert response.status_code == 200, response.text
    assert [_png(d["b64_json"]).size for d in response.json()["data"]] == [(64, 64)] * 2
    assert "Edit: variation" in Image.open(out / "00000-3.png").info["parameters"]
    bad = client.post("/v1/images/variations", files={"image": ("x.png", b"not an image", "image/png")}, data=fields)
    assert "not an image" in _error(bad, 400, "image")
    big = client.post("/v1/images/variations", files={"image": ("x.png", b"0" * (4 * 2**20 + 1), "image/png")})
    assert "at most 4 MB" in _error(big, 400, "image")
    assert "image is required" in _error(client.post("/v1/images/variations", data=fields), 400, "image")


def test_api_key_guards_every_api_route_but_not_the_page(pipe, tmp_path):
    engine = Engine(pipe, tmp_path / "served").start()
    client = TestClient(create_app(engine, model="demo", api_key="sesame"))
    try:
        routes = [("post", "/v1/images/generations"), ("post", "/sdapi/v1/txt2img"), ("get", "/sdapi/v1/progress"),
                  ("get", "/api/gallery"), ("get", "/files/00000-0.png")]  # fmt: skip
        for method, path in routes:
            assert getattr(client, method)(path).status_code == 401
            wrong = getattr(client, method)(path, headers={"Authorization": "Bearer open"})
            assert "API key" in _error(wrong, 401)
        good = {"Authorization": "Bearer sesame"}
        assert client.get("/sdapi/v1/progress", headers=good).status_code == 200
        assert client.get("/").status_code == 200 and "unclip" in client.get("/").text
        assert client.get("/static/app.js").status_code == 200
    finally:
        engine.stop()


def test_docs_that_need_a_cdn_are_off_and_the_page_loads_nothing_from_outside(server):
    client, _, _ = server
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").status_code == 200
    page = client.get("/").text + client.get("/static/app.js").text + client.get("/static/style.css").text
    assert "http://" not in page and "https://" not in page and "//cdn" not in page


def test_a1111_txt2img_takes_what_its_clients_send(server):
    client, _, _ = server
    body = {
        "prompt": PROMPT, "negative_prompt": "", "seed": 11, "subseed": -1, "steps": 3, "cfg_scale": 3.0,
        "width": 64, "height": 64, "batch_size": 2, "n_iter": 1, "sampler_name": "Euler a", "restore_faces": False,
        "tiling": False, "enable_hr": False, "denoising_strength": 0.7, "override_settings": {}, "script_args": [],
        "alwayson_scripts": {}, "send_images": True, "save_images": False, "prior_num_inference_steps": 3,
    }  # fmt: skip
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    info = json.loads(answer["info"])
    assert len(answer["images"]) == 2 and answer["parameters"] == body
    assert info["seed"] == 11 and info["all_seeds"] == [11, 12] and info["steps"] == 3
    assert "Euler a" in info["notes"][0] and len(info["infotexts"]) == 2
    again = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + answer["images"][1]}).json()
    assert again["info"] == info["infotexts"][1] and "Seed: 12" in again["info"]
    ddim = client.post("/sdapi/v1/txt2img", json={**body, "batch_size": 1, "sampler_name": "DDIM", "seed": -1})
    info = json.loads(ddim.json()["info"])
    assert "Sampler: ddim" in info["infotexts"][0] and info["seed"] >= 0 and not info["notes"]
    wrong = client.post("/sdapi/v1/txt2img", json={**body, "width": 512})
    assert wrong.status_code == 400 and "squares of 64, 256, 1024" in wrong.json()["detail"]
    assert client.get("/sdapi/v1/sd-models").json()[0]["model_name"] == "demo"
    assert {"DDIM", "DPM++ 2M"} <= {s["name"] for s in client.get("/sdapi/v1/samplers").json()}
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    assert client.post("/sdapi/v1/interrupt").json() == {"interrupted": 0}


def test_the_page_routes_submit_poll_cancel_and_list(server):
    client, engine, _ = server
    job = client.post("/api/jobs", json={"prompt": PROMPT, "size": "64x64", "n": 1, "seed": 5, "settings": FAST})
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]
    engine.job(job_id).result(timeout=120)
    done = client.get(f"/api/jobs/{job_id}").json()
    assert done["state"] == "done" and done["images"][0]["metadata"]["seed"] == 5
    gallery = client.get("/api/gallery").json()["images"]
    assert gallery[0]["file"] == done["images"][0]["file"] and "Seed: 5" in gallery[0]["parameters"]
    vary = client.post("/api/jobs", json={"variation_of": gallery[0]["file"], "size": "64x64", "settings": FAST})
    engine.job(vary.json()["id"]).result(timeout=120)
    assert client.get("/api/gallery").json()["images"][0]["metadata"]["edit"] == "variation"
    bad = client.post("/api/jobs", json={"variation_of": "../x.png", "size": "64x64"})
    assert "no result" in _error(bad, 400, "variation_of")
    ends = [gallery[0]["file"], client.get("/api/gallery").json()["images"][0]["file"]]
    frames = client.post("/api/jobs", json={"interpolate": ends, "n": 3, "size": "64x64", "settings": FAST})
    made = engine.job(frames.json()["id"]).result(timeout=120)
    assert [m.metadata["theta"] for m in made] == [0.0, 0.5, 1.0] and made[0].metadata["edit"] == "interpolation"
    one = client.post("/api/jobs", json={"interpolate": ends[:1], "size": "64x64"})
    assert "two results" in _error(one, 400, "interpolate")
    assert "no job" in _error(client.get("/api/jobs/job-0"), 404, "id")
    too_many = client.post("/api/jobs", json={"prompt": PROMPT, "size": "64x64", "n": 9})  # --max-batch 8
    assert "more than this server's --max-batch 8" in _error(too_many, 400)
    info = client.get("/api/info").json()
    assert info["sizes"] == [64, 256, 1024] and info["stages"]["decoder"]["steps"]["default"] == 25


# ------------------------------------------------------------------------------------------------ the worker
def test_compatible_jobs_share_a_call_and_each_image_keeps_its_seed(pipe, tmp_path):
    engine = Engine(pipe, tmp_path, max_batch=4, max_queue=8)  # not started: the jobs wait
    a = engine.submit(Job.generate(PROMPT, 1, 64, 0, settings=FAST))
    b = engine.submit(Job.generate("a small green square on a white background", 2, 64, 100, settings=FAST))
    c = engine.submit(Job.generate(PROMPT, 1, 256, 0, settings=FAST))  # another size: its own call
    d = engine.submit(Job.generate(PROMPT, 2, 64, 9, settings=FAST))  # would make 5 > max_batch with a and b
    assert [job.id for job in engine._next_batch()] == [a.id, b.id]
    assert [job.id for job in engine._next_batch()] == [c.id]
    assert [job.id for job in engine._next_batch()] == [d.id]
    engine._run([a, b])
    batched = a.result() + b.result()
    assert [image.metadata["seed"] for image in batched] == [0, 100, 101]
    alone = pipe("a small green square on a white background", num_images_per_prompt=2, seed=100, size=64, **FAST)
    served = np.asarray(Image.open(batched[2].path).convert("RGB")).astype(int)
    # the same noise; beside other prompts the CPU's matrix kernels round differently (AVX-512 kernels block by batch
    # size): under 1.5 grey levels, which 8-bit rounding can leave 2 apart
    assert np.abs(served - np.asarray(alone.images[1]).astype(int)).max() <= 2
    assert np.abs(served - np.asarray(alone.images[0]).astype(int)).max() > 50  # another seed: another picture


def test_queue_bound_cancel_and_interrupt(pipe, tmp_path):
    engine = Engine(pipe, tmp_path, max_batch=2, max_queue=2)
    first = engine.submit(Job.generate(PROMPT, 1, 64, 0, settings=FAST))
    engine.submit(Job.generate(PROMPT, 1, 64, 1, settings=FAST))
    with pytest.raises(QueueFull, match="queue is full"):
        engine.submit(Job.generate(PROMPT, 1, 64, 2))
    assert engine.cancel(first.id) and first.state == "cancelled"
    with pytest.raises(Cancelled):
        first.result()
    assert not engine.cancel(first.id) and not engine.cancel("job-none")
    from unclip.serve import engine as engine_module

    kept = engine_module.KEEP
    engine_module.KEEP = 0  # finished jobs are forgotten (their PNGs with them) past KEEP
    try:
        engine._queue.clear()
        engine.submit(Job.generate(PROMPT, 1, 64, 1, settings=FAST))
        assert engine.job(first.id) is None
    finally:
        engine_module.KEEP = kept
    engine.submit(Job.generate(PROMPT, 1, 64, 3, settings=FAST))  # the queue full again
    client = TestClient(create_app(engine, model="demo"))
    full = client.post("/v1/images/generations", json={"prompt": PROMPT, "size": "64x64"})
    assert "retry later" in _error(full, 429)
    assert client.post("/sdapi/v1/txt2img", json={"prompt": PROMPT, "width": 64, "height": 64}).status_code == 429
    # an interrupt stops the running call between two steps; its jobs end cancelled, the worker goes on
    slow = Job.generate(PROMPT, 1, 64, 4, settings={"decoder_num_inference_steps": 200})
    engine._queue.clear()
    engine.submit(slow)
    engine.start()
    import time

    deadline = time.time() + 60
    while engine.progress()["stage"] != "decoder" and time.time() < deadline:
        time.sleep(0.01)
    assert engine.interrupt() == 1
    with pytest.raises(Cancelled):
        slow.result(timeout=60)
    after = engine.submit(Job.generate(PROMPT, 1, 64, 5, settings=FAST))
    assert after.result(timeout=60)[0].metadata["seed"] == 5
    engine.stop()
    assert not list(Path(tmp_path).glob(".unclip-partial-*"))


def test_a_call_takes_one_seed_per_image(pipe):
    from unclip import UnclipError

    result = pipe([PROMPT, PROMPT], seed=[5, 9], size=64, **FAST)
    assert [m["seed"] for m in result.metadata] == [5, 9]
    again = np.asarray(pipe(PROMPT, seed=9, size=64, **FAST).images[0]).astype(int)
    # seed 9's picture, in a batch or alone: kernel rounding only (≤ 2 grey levels, as above); seed 5's is another
    assert np.abs(again - np.asarray(result.images[1]).astype(int)).max() <= 2
    assert np.abs(again - np.asarray(result.images[0]).astype(int)).max() > 50
    for seeds, words in [([5], "got 1 seeds for 2 images"), ([5, -1], "whole number ≥ 0"), ([5, True], "whole")]:
        with pytest.raises(UnclipError, match=words):
            pipe([PROMPT, PROMPT], seed=seeds, size=64, **FAST)


def _scene_png(mask_alpha: bool = False) -> tuple[bytes, bytes]:
    """A red square at the top left on blue, and a mask of its bottom-right quadrant (white, or transparent)."""
    from unclip.demo.shapes import ANCHORS, Attributes, Scene, render

    pixels = render(Scene(Attributes("square", "red", "blue", "large", "top left"), *ANCHORS["top left"], 0.08), 64)
    mask = np.zeros((64, 64, 4), np.uint8) if mask_alpha else np.zeros((64, 64), np.uint8)
    if mask_alpha:
        mask[...] = 255
        mask[32:, 32:, 3] = 0  # OpenAI's form: transparent = the region to edit
    else:
        mask[32:, 32:] = 255
    files = []
    for array in (pixels, mask):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files[0], files[1]


def test_edits_repaint_the_masked_region(server):
    client, _, out = server
    picture, mask = _scene_png(mask_alpha=True)
    fields = {"prompt": "a large yellow circle in the bottom right on a blue background", "n": "2", "size": "64x64",
              "seed": "5", "resample": "1", **{k: str(v) for k, v in FAST.items()}}  # fmt: skip
    files = {"image": ("scene.png", picture, "image/png"), "mask": ("mask.png", mask, "image/png")}
    response = client.post("/v1/images/edits", files=files, data=fields)
    assert response.status_code == 200, response.text
    source = np.asarray(Image.open(io.BytesIO(picture)))
    for item in response.json()["data"]:
        edited = np.asarray(_png(item["b64_json"]).convert("RGB"))
        assert np.array_equal(edited[:32], source[:32]) and not np.array_equal(edited[32:, 32:], source[32:, 32:])
    meta = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
    assert meta["edit"] == "inpaint" and meta["seed"] == 5 and meta["mask_fraction"] == 0.25

    # bad input: 400 naming the part
    def with_mask(side: int, grey: int):
        buffer = io.BytesIO()
        Image.new("L", (side, side), grey).save(buffer, format="PNG")
        files = {"image": ("s.png", picture, "image/png"), "mask": ("m.png", buffer.getvalue(), "image/png")}
        return client.post("/v1/images/edits", data=fields, files=files)

    assert "marks nothing to repaint" in _error(with_mask(64, 0), 400, "mask")
    assert "the mask is 32×32 but the image is 64×64" in _error(with_mask(32, 255), 400, "mask")
    no_mask = client.post("/v1/images/edits", data=fields, files={"image": ("s.png", picture, "image/png")})
    assert "nothing to repaint" in _error(no_mask, 400, "mask")
    no_prompt = client.post("/v1/images/edits", data={**fields, "prompt": ""}, files=files)
    assert "prompt" in _error(no_prompt, 400, "prompt")


def test_a_failing_model_is_500_in_error_json_and_links_out_of_the_folder_are_not_served(server, monkeypatch):
    client, engine, out = server

    def fail(self, batch):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Engine, "_call", fail)
    body = {"prompt": PROMPT, "size": "64x64", **FAST}
    for route, key in (("/v1/images/generations", "error"), ("/sdapi/v1/txt2img", "detail")):
        response = client.post(route, json=body)
        assert response.status_code == 500 and "generation failed: RuntimeError: out of memory" in response.text
        assert response.json()["error"]["type"] == "server_error" and key in response.json()
    outside = out.parent / "secret.png"
    Image.new("RGB", (4, 4)).save(outside)
    out.mkdir(exist_ok=True)
    (out / "00099-1.png").symlink_to(outside)
    assert client.get("/files/00099-1.png").status_code == 404


def test_the_official_openai_package_against_a_running_server(pipe, tmp_path):
    import socket
    import threading
    import time

    import uvicorn
    from openai import BadRequestError, OpenAI

    engine = Engine(pipe, tmp_path / "served").start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model="demo", api_key="k"), "127.0.0.1", port,
                                           log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        made = client.images.generate(prompt=PROMPT, n=2, size="64x64", extra_body={"seed": 1, **FAST})
        assert len(made.data) == 2 and _png(made.data[0].b64_json).size == (64, 64)
        with open(tmp_path / "served" / "00000-1.png", "rb") as source:
            varied = client.images.create_variation(image=source, n=1, size="64x64", response_format="url",
                                                    extra_body={"decoder_num_inference_steps": 3})  # fmt: skip
        assert varied.data[0].url.endswith(".png")
        picture, mask = _scene_png()
        edited = client.images.edit(image=("scene.png", picture, "image/png"), mask=("mask.png", mask, "image/png"),
                                    prompt="a large yellow circle in the bottom right on a blue background",
                                    size="64x64", extra_body={"seed": 2, **FAST})  # fmt: skip
        assert _png(edited.data[0].b64_json).size == (64, 64)
        with pytest.raises(BadRequestError, match="not one this model makes"):
            client.images.generate(prompt=PROMPT, size="512x512")
    finally:
        server.should_exit = True
        thread.join(10)
        engine.stop()


def test_serve_command_errors_are_one_line(tmp_path, capsys):
    import socket

    from unclip.cli import main

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and err.count("\n") == 1
    assert main(["serve", "--port", "70000"]) == 2 and "--port must be 1-65535" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path / "nothing.yaml"), "--port", str(port)]) == 2  # free again
    assert "nothing.yaml" in capsys.readouterr().err


def test_a_job_cancelled_while_the_worker_waits_for_company_leaves_the_worker_working(pipe, tmp_path):
    import time

    engine = Engine(pipe, tmp_path, max_batch=4, batch_wait=0.5).start()
    try:
        lonely = engine.submit(Job.generate(PROMPT, 1, 64, 0, settings=FAST))
        time.sleep(0.1)  # the worker is waiting for more requests to fill the call
        assert engine.cancel(lonely.id)
        time.sleep(0.6)
        after = engine.submit(Job.generate(PROMPT, 1, 64, 1, settings=FAST))
        assert after.result(timeout=60)[0].metadata["seed"] == 1 and engine._thread.is_alive()
    finally:
        engine.stop()
