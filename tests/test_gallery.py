"""analysis/gallery.py: Streamlit's app-testing API drives the widgets; a headless Chromium
screenshot of the real server shows the generated images."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

GALLERY = str(Path(__file__).resolve().parents[1] / "analysis" / "gallery.py")


@pytest.fixture
def app(smoke_experiments, monkeypatch):
    """The gallery as `streamlit run analysis/gallery.py -- --storage <the smoke runs>` starts it
    (AppTest runs the script in this process, so it parses this sys.argv)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [GALLERY, "--storage", str(smoke_experiments["cyclegan_builtin"].parent)])
    at = AppTest.from_file(GALLERY, default_timeout=120)
    return at.run()


def test_browses_the_storage_it_was_started_with(app, smoke_experiments):
    assert not app.exception and not app.error
    assert app.text_input(key="storage").value == str(smoke_experiments["cyclegan_builtin"].parent)
    assert app.selectbox(key="experiment").options == ["cyclegan_builtin-smoke", "wgan_gp_builtin-smoke"]


def test_a_folder_without_experiments_is_an_error_message(app):
    app.text_input(key="storage").set_value("cyclegan_builtin-smoke").run()   # relative to --storage: trials, no experiments
    assert not app.exception and "No paintsweep experiment" in app.error[0].value


@pytest.mark.parametrize("outside", ["absolute", "dot-dot", "symlink"])
def test_a_folder_outside_the_storage_is_refused(app, smoke_experiments, tmp_path, outside):
    """Another folder of experiments the user can read: typed absolute, reached with `..` from
    inside --storage, or through a symbolic link inside --storage. None of them is listed."""
    other = tmp_path / "elsewhere"
    shutil.copytree(smoke_experiments["cyclegan_builtin"].parent, other, symlinks=True)   # real experiments
    root = smoke_experiments["cyclegan_builtin"].parent
    typed = {"absolute": str(other), "dot-dot": os.path.relpath(other, root), "symlink": "link-out"}[outside]
    link = root / "link-out"
    if outside == "symlink":
        link.symlink_to(other, target_is_directory=True)
    try:
        app.text_input(key="storage").set_value(typed).run()
    finally:
        link.unlink(missing_ok=True)
    assert not app.exception and len(app.error) == 1
    assert "is outside" in app.error[0].value and "--storage" in app.error[0].value
    assert not app.selectbox   # nothing of the other folder is offered


def test_sampling_family_follows_seed_and_count(app):
    app.selectbox(key="experiment").set_value("wgan_gp_builtin-smoke").run()
    assert not app.exception and not app.error
    def shown():
        return [img.url for img in app.get("image")[0].proto.imgs]
    first = shown()
    assert len(first) == 8   # the default number of images
    app.slider(key="count").set_value(3).run()
    assert len(shown()) == 3
    app.number_input(key="seed").set_value(5).run()
    assert len(shown()) == 3 and shown() != first[:3]
    table = app.table[0].value
    assert "model.lr_g" in table.index and "best_fid" in table.index


def test_cyclegan_translates_a_test_photo(app):
    app.selectbox(key="experiment").set_value("cyclegan_builtin-smoke").run()
    assert not app.exception and not app.error
    captions = [img.caption for img in app.get("image")[0].proto.imgs]
    assert captions == ["test photo 0", "translated"]
    app.number_input(key="photo").set_value(1).run()
    assert [img.caption for img in app.get("image")[0].proto.imgs][0] == "test photo 1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_listens_on_localhost_only(smoke_experiments, tmp_path):
    """The README's command, started from a folder that is not the repository (so only the
    gallery's own analysis/.streamlit/config.toml can set the address), listens on loopback only."""
    import psutil

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", GALLERY, "--server.headless", "true",
                               "--server.port", str(port), "--", "--storage",
                               str(smoke_experiments["cyclegan_builtin"].parent)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(120):
            listening = [c.laddr for c in psutil.Process(server.pid).net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
            if listening:
                break
            assert server.poll() is None, f"streamlit exited: {server.stdout.read()}"
            time.sleep(0.5)
        assert listening and {address.ip for address in listening} <= {"127.0.0.1", "::1"}, listening
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health").read() == b"ok"
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "Network URL" not in output and f"localhost:{port}" in output


async def _screenshot(debug_port: int, url: str, timeout: float = 90) -> bytes:
    """Chrome DevTools Protocol over tornado's websocket client: open `url`, wait until the
    gallery's images have loaded, capture the page as PNG."""
    from tornado.websocket import websocket_connect

    pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/list").read())
    ws = await websocket_connect(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
    ids = iter(range(1, 10**6))

    async def call(method, **params):
        i = next(ids)
        await ws.write_message(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            message = json.loads(await ws.read_message())
            if message.get("id") == i:
                return message.get("result", {})

    await call("Page.navigate", url=url)
    ready = ("(() => { const imgs = [...document.querySelectorAll('[data-testid=\"stImage\"] img')];"
             " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
             " && !document.querySelector('[data-testid=\"stStatusWidget\"]'); })()")
    deadline = time.monotonic() + timeout
    while not (await call("Runtime.evaluate", expression=ready))["result"].get("value"):
        assert time.monotonic() < deadline, "the gallery showed no images in time"
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)   # let the layout settle
    return base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"])


@pytest.mark.slow
def test_screenshot_in_headless_chromium(smoke_experiments, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is missing: install it with `apt-get update && apt-get install -y chromium`")
    port, debug_port = _free_port(), _free_port()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", GALLERY, "--server.headless", "true",
                               "--server.address", "127.0.0.1", "--server.port", str(port),
                               "--browser.gatherUsageStats", "false", "--", "--storage",
                               str(smoke_experiments["cyclegan_builtin"].parent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chrome = None
    # Chromium leaves a singleton-socket folder in $TMPDIR: give it a short private one (a socket
    # path must stay under 108 characters), removed afterwards.
    scratch = tempfile.TemporaryDirectory(prefix="chromium-")
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health").read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        chrome = subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                   "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                   "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
                                   "--window-size=1400,1000", f"--remote-debugging-port={debug_port}", "about:blank"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "TMPDIR": scratch.name})   # its singleton-socket folder
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{debug_port}/json/version")
                break
            except OSError:
                time.sleep(0.5)
        png = asyncio.run(_screenshot(debug_port, f"http://127.0.0.1:{port}/"))
    finally:
        for process in (chrome, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
        scratch.cleanup()
    (tmp_path / "gallery.png").write_bytes(png)
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)   # (H, W, 3)
    assert shot.shape[1] == 1400 and shot.shape[0] > 500 and shot.std() > 10   # a page, not blank
    # The generated images are the only colourful region (the UI is white, grey and a little red):
    # pixels whose channels differ strongly, in a block at least the size of two 32-px images.
    colourful = (shot.max(axis=2) - shot.min(axis=2)) > 40
    assert colourful.sum() > 2 * 32 * 32, f"no generated image region in the screenshot ({colourful.sum()} px)"
