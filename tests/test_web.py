"""The live view: the page in a real headless Chromium, MJPEG streams that cost nothing when unwatched
and never wait for a stalled viewer, and token access."""

from __future__ import annotations

import base64
import shutil
import socket
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest

from tests.conftest import free_port
from tests.test_pipeline import scrape, wait_for
from tests.test_service import config, need, start


@pytest.fixture()
def running(carphone, astronaut_clip, tmp_path, cache_dir):
    """perceptd with two paced, looping sources; yields the HTTP port. `web` settings via request.param."""
    def launch(names=("car", "astro"), **web):
        port = free_port()
        uris = {"car": carphone, "astro": astronaut_clip}
        sources = [{"name": n, "uri": str(uris[n]), "loop": True, "realtime": True} for n in names]
        cfg = config(tmp_path / "c.yaml", sources, tmp_path / "out", port, web=web)
        proc = start(cfg, cache_dir, tmp_path / "log.txt")
        launched.append(proc)
        for n in names:
            wait_for(lambda n=n: scrape(port).get(f'perceptd_frames_processed_total{{source="{n}"}}', 0) > 5, 60,
                     "frames", proc)
        return port

    launched = []
    yield launch
    for proc in launched:
        proc.terminate()
        assert proc.wait(60) == 0


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read() if "mjpg" not in path else r.read(20000)
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_preview_when_nobody_watches_encodes_nothing_and_when_watched_streams_jpegs(running):
    port = running()
    time.sleep(1)
    m = scrape(port)
    assert m['perceptd_preview_frames_total{source="car"}'] == 0  # no viewer, no encoding
    code, body = get(port, "/stream/car.mjpg")
    assert code == 200 and body.count(b"--frame") >= 1
    start = body.index(b"\xff\xd8")
    jpeg = cv2.imdecode(np.frombuffer(body[start:body.index(b"\xff\xd9", start) + 2], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (144, 176, 3) and jpeg.std() > 20
    assert scrape(port)['perceptd_preview_frames_total{source="car"}'] >= 1
    # The server notices the closed connection at its next write or two; from then on nothing is encoded.
    wait_for(lambda: scrape(port)['perceptd_preview_viewers{source="car"}'] == 0, 10, "the viewer gone", None)
    after = scrape(port)['perceptd_preview_frames_total{source="car"}']
    time.sleep(1.5)
    assert scrape(port)['perceptd_preview_frames_total{source="car"}'] == after
    assert get(port, "/stream/nope.mjpg")[0] == 404


def test_preview_when_a_viewer_connects_and_never_reads_the_pipeline_does_not_wait(running):
    port = running(names=("car",), preview_fps=30, jpeg_quality=100)
    key = 'perceptd_frames_processed_total{source="car"}'
    rss = 'perceptd_process_resident_memory_bytes{process="main"}'
    # Baseline, in the same run: the paced source's throughput with nobody watching.
    base0, t_base = scrape(port), time.monotonic()
    time.sleep(4)
    base1 = scrape(port)
    baseline_fps = (base1[key] - base0[key]) / (time.monotonic() - t_base)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once: the server's sends block
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /stream/car.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        wait_for(lambda: scrape(port)['perceptd_preview_viewers{source="car"}'] == 1, 10, "the viewer", None)
        before = scrape(port)
        t0 = time.monotonic()
        # The viewer is dropped once its socket has taken nothing for a while; frames flow all along.
        wait_for(lambda: scrape(port)['perceptd_preview_viewers{source="car"}'] == 0, 60, "the stalled viewer dropped",
                 None)
        time.sleep(max(0.0, 8 - (time.monotonic() - t0)))
        after = scrape(port)
        elapsed = time.monotonic() - t0
    finally:
        stalled.close()
    # A pipeline waiting on the viewer would fall far behind its own unwatched rate (or stop).
    watched_fps = (after[key] - before[key]) / elapsed
    assert watched_fps >= 0.7 * baseline_fps, (baseline_fps, watched_fps)
    assert after[rss] - before[rss] < 30e6


def test_page_when_opened_in_headless_chromium_shows_a_live_tile_per_source(running, tmp_path):
    need(shutil.which("chromium") is not None and shutil.which("chromedriver") is not None,
         "Chromium and its driver (Debian's chromium, chromium-driver)")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port = running()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".tile img")) == 2
                 and all(t.text for t in driver.find_elements(By.CSS_SELECTOR, ".perf")), 20, "two tiles", None)
        time.sleep(1.5)
        first = shot(driver)
        # The test clips pan back and forth with a short period, so two shots can catch the same frame by
        # chance: take several, a live tile differs from the first in at least one of them.
        later = []
        for _ in range(5):
            time.sleep(0.55)
            later.append(shot(driver))
        (tmp_path / "page.png").write_bytes(driver.get_screenshot_as_png())
        tiles = driver.find_elements(By.CSS_SELECTOR, ".tile")
        assert {t.get_attribute("data-source") for t in tiles} == {"car", "astro"}
        for t in tiles:
            img = t.find_element(By.TAG_NAME, "img")
            r = img.rect
            scale = first.shape[1] / driver.execute_script("return window.innerWidth")
            x, y, w, h = (int(v * scale) for v in (r["x"], r["y"], r["width"], r["height"]))
            a = first[y:y + h, x:x + w].astype(np.int16)
            assert a.size and a.std() > 15, f"{t.get_attribute('data-source')}: blank tile"
            change = max(np.abs(a - s[y:y + h, x:x + w].astype(np.int16)).mean() for s in later)
            assert change > 0.5, f"{t.get_attribute('data-source')}: the image does not change"
            assert "fps" in t.text and "up" in t.text
    finally:
        driver.quit()


def shot(driver) -> np.ndarray:
    png = np.frombuffer(driver.get_screenshot_as_png(), np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_COLOR)


def test_access_when_a_token_is_set_protects_page_and_streams_but_not_metrics(running):
    port = running(token="s3cret-token")
    assert get(port, "/")[0] == 401
    assert get(port, "/api/status")[0] == 401
    assert get(port, "/stream/car.mjpg")[0] == 401
    assert get(port, "/", {"Authorization": "Bearer wrong-token"})[0] == 401
    assert get(port, "/", {"Authorization": "Bearer s3cret-token"})[0] == 200
    basic = base64.b64encode(b"anyone:s3cret-token").decode()
    assert get(port, "/api/status", {"Authorization": f"Basic {basic}"})[0] == 200
    assert get(port, "/stream/car.mjpg?token=s3cret-token")[0] == 200
    assert get(port, "/metrics")[0] == 200 and get(port, "/healthz")[0] == 200
