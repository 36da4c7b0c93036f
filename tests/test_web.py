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

from tests.conftest import metrics_port
from tests.test_pipeline import scrape, wait_for
from tests.test_service import config, need, start


def processed(source: str) -> str:
    return f'perceptd_frames_processed_total{{source="{source}"}}'


def previewed(source: str) -> str:
    return f'perceptd_preview_frames_total{{source="{source}"}}'


def viewers(source: str) -> str:
    return f'perceptd_preview_viewers{{source="{source}"}}'


@pytest.fixture()
def running(carphone, astronaut_clip, tmp_path, cache_dir):
    """perceptd with two paced, looping sources, on the port it bound (port 0); `web` settings as keywords."""
    def launch(names=("car", "astro"), **web):
        uris = {"car": carphone, "astro": astronaut_clip}
        sources = [{"name": n, "uri": str(uris[n]), "loop": True, "realtime": True} for n in names]
        cfg = config(tmp_path / "c.yaml", sources, tmp_path / "out", 0, web=web)
        proc = start(cfg, cache_dir, tmp_path / "log.txt")
        launched.append(proc)
        port = metrics_port(tmp_path / "log.txt", proc)
        for n in names:
            wait_for(lambda n=n: scrape(port).get(processed(n), 0) > 5, 60, "frames", proc)
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


def more_frames(port: int, source: str, n: int) -> dict[str, float]:
    """Waits until `n` more frames of `source` have been processed; returns the scrape that showed them."""
    target = scrape(port)[processed(source)] + n
    return wait_for(lambda: (m := scrape(port))[processed(source)] >= target and m, 120,
                    f"{n} more frames of '{source}'", None)


def assert_nothing_encoded_while_unwatched(port: int, source: str, frames: int = 20) -> None:
    """With no viewer left, the preview counter stands still while `frames` more frames are processed.
    The sink checks for viewers before it encodes and counts the frame processed after that, one frame at a
    time: a frame that checked just before the last viewer left may still be encoded, and it is counted
    processed before the next one is, so the counter is read once two more frames have been processed."""
    assert scrape(port)[viewers(source)] == 0
    more_frames(port, source, 2)
    still = scrape(port)[previewed(source)]
    m = more_frames(port, source, frames)
    assert m[viewers(source)] == 0
    assert m[previewed(source)] == still, f"{m[previewed(source)] - still:.0f} JPEGs encoded for nobody"


def chromium(tmp_path, *flags: str):
    """Debian's Chromium, headless under Selenium's driver, with a profile of its own in `tmp_path`: the real
    browser the page and recordings are checked in (skipped here without it, a failure in CI)."""
    need(shutil.which("chromium") is not None and shutil.which("chromedriver") is not None,
         "Chromium and its driver (Debian's chromium, chromium-driver)")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chrome'}", *flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def test_preview_when_nobody_watches_encodes_nothing_and_when_watched_streams_jpegs(running):
    port = running()
    m = more_frames(port, "car", 20)
    assert m[previewed("car")] == 0 and m[viewers("car")] == 0  # never watched: nothing encoded, however many frames
    code, body = get(port, "/stream/car.mjpg")
    assert code == 200 and body.count(b"--frame") >= 1
    start = body.index(b"\xff\xd8")
    jpeg = cv2.imdecode(np.frombuffer(body[start:body.index(b"\xff\xd9", start) + 2], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (144, 176, 3) and jpeg.std() > 20
    assert scrape(port)[previewed("car")] >= 1
    # The server notices the closed connection at its next write or two; from then on nothing is encoded.
    wait_for(lambda: scrape(port)[viewers("car")] == 0, 30, "the viewer gone", None)
    assert_nothing_encoded_while_unwatched(port, "car")
    assert get(port, "/stream/nope.mjpg")[0] == 404


def test_preview_when_a_viewer_connects_and_never_reads_the_pipeline_does_not_wait(running):
    port = running(names=("car",), preview_fps=30, jpeg_quality=100)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once: the server's sends block
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /stream/car.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        joined = wait_for(lambda: (m := scrape(port))[viewers("car")] == 1 and m, 30, "the viewer", None)
        # The socket buffers (~0.5 MB) hold a dozen or so of these ~25 kB JPEGs, then the server's send blocks;
        # the viewer is dropped once a send has waited STALLED_VIEWER_S, the only way it can leave here (the
        # socket stays open). Every scrape until then, to see what the pipeline did while the viewer was there.
        scrapes = [joined]

        def dropped() -> bool:
            scrapes.append(scrape(port))
            return scrapes[-1][viewers("car")] == 0

        wait_for(dropped, 120, "the stalled viewer dropped", None)
        watched = [m for m in scrapes if m[viewers("car")] == 1][-1]  # the last scrape that still counted it
        # A pipeline that waited on the viewer would stop once the buffers are full, after ~25 frames at most
        # (a JPEG every frame or every other); one that does not wait goes on through the whole stall, which
        # spans the fill and STALLED_VIEWER_S: ~150 frames of this 30 fps source (50 leaves room for a slow host).
        frames = watched[processed("car")] - joined[processed("car")]
        jpegs = watched[previewed("car")] - joined[previewed("car")]
        assert frames >= 50, f"{frames:.0f} frames processed ({jpegs:.0f} JPEGs) while the stalled viewer was there"
        assert jpegs > 0  # it was served: the sink encoded for it and went on
        # Gone: frames keep flowing, and nothing is encoded any more.
        assert_nothing_encoded_while_unwatched(port, "car")
    finally:
        stalled.close()


def test_page_when_opened_in_headless_chromium_shows_a_live_tile_per_source(running, tmp_path):
    port = running()
    driver = chromium(tmp_path, "--window-size=1200,900")
    from selenium.webdriver.common.by import By

    try:
        driver.get(f"http://127.0.0.1:{port}/")
        # Two tiles, each with a decoded frame from its stream and its stats line filled in.
        wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, ".tile img")) == 2
                 and all("fps" in t.text and "up" in t.text for t in driver.find_elements(By.CSS_SELECTOR, ".tile"))
                 and driver.execute_script(
                     "return [...document.querySelectorAll('.tile img')].every(i => i.naturalWidth > 0)"),
                 60, "two tiles showing frames", None)
        tiles = driver.find_elements(By.CSS_SELECTOR, ".tile")
        assert {t.get_attribute("data-source") for t in tiles} == {"car", "astro"}
        scale = shot(driver).shape[1] / driver.execute_script("return window.innerWidth")
        boxes = {}
        for t in tiles:
            r = t.find_element(By.TAG_NAME, "img").rect
            boxes[t.get_attribute("data-source")] = tuple(int(r[k] * scale) for k in ("x", "y", "width", "height"))

        def tile(image: np.ndarray, name: str) -> np.ndarray:
            x, y, w, h = boxes[name]
            return image[y:y + h, x:x + w].astype(np.int16)

        # A decoded frame shows at the next paint: shoot until both tiles show a picture (a bounded number of tries).
        for _ in range(40):
            first = shot(driver)
            blank = {n for n in boxes if not (tile(first, n).size and tile(first, n).std() > 15)}
            if not blank:
                break
            time.sleep(0.25)
        assert not blank, f"{blank}: blank tile"
        # The test clips pan back and forth with a short period, so two shots can catch the same frame by
        # chance: shoot until each live tile has differed from the first shot (a bounded number of tries).
        changed = set()
        for _ in range(40):
            time.sleep(0.25)
            later = shot(driver)
            changed |= {n for n in boxes if np.abs(tile(first, n) - tile(later, n)).mean() > 0.5}
            if changed == set(boxes):
                break
        (tmp_path / "page.png").write_bytes(driver.get_screenshot_as_png())
        assert changed == set(boxes), f"{set(boxes) - changed}: the image does not change"
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
