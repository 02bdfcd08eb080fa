"""`unclip serve`'s page in a real browser: Debian's chromium driven by Playwright (never `playwright install`).
It types a prompt, generates, waits for the picture, opens it and reads its parameters; nothing the page loads
comes from outside the server. Set UNCLIP_SCREENSHOT=PATH to keep the screenshot (docs/serve.png is one).
Without chromium it skips, except under CI (CI set: .ci/run installs it), where it fails."""

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from playwright import sync_api

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium: apt-get install chromium"
)


@pytest.fixture
def served(tmp_path):
    import uvicorn

    from unclip import UnCLIPCascade
    from unclip.serve.app import create_app
    from unclip.serve.engine import Engine

    engine = Engine(UnCLIPCascade.from_pretrained("demo"), tmp_path / "served").start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(engine, model="demo"), "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", tmp_path
    server.should_exit = True
    thread.join(10)
    engine.stop()


def test_generate_in_the_page_then_open_the_picture(served):
    url, tmp_path = served
    prompt = "a large yellow circle in the center on a purple background"
    outside = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((url, "blob:", "data:")) else None)
        page.goto(url)
        page.wait_for_selector("#size option[value='64x64']", state="attached")
        page.fill("#prompt", prompt)
        page.select_option("#size", "64x64")
        page.click("#advanced summary")
        page.fill("[data-keyword=prior_num_inference_steps]", "5")
        page.fill("[data-keyword=decoder_num_inference_steps]", "8")
        page.click("#generate")
        page.wait_for_function("document.querySelector('#status').textContent.startsWith('done')", timeout=120_000)
        thumbnail = page.wait_for_selector("#gallery img[src^='blob:']", timeout=30_000)
        assert thumbnail.get_attribute("title") == prompt
        thumbnail.click()
        page.wait_for_selector("#viewer[open]")
        parameters = page.inner_text("#parameters")
        assert parameters.startswith(prompt) and "Steps: 8" in parameters and "Prior steps: 5" in parameters
        assert page.get_attribute("#download", "download").endswith(".png")
        shot = tmp_path / "serve.png"
        page.screenshot(path=str(shot))
        page.click("#vary")  # variations of the opened picture, with the Advanced panel's steps
        page.wait_for_function("document.querySelectorAll('#gallery img').length === 2", timeout=120_000)
        assert page.inner_text("#status").startswith("done")
        browser.close()
    assert not outside, outside
    assert shot.stat().st_size > 10_000
    if os.environ.get("UNCLIP_SCREENSHOT"):
        shutil.copy(shot, os.environ["UNCLIP_SCREENSHOT"])
    assert len(list((tmp_path / "served").glob("*.png"))) == 2
