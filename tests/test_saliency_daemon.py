"""sinks.overlay.saliency through the whole daemon: the heat map in the video and `saliency` in the JSONL
(nothing of it when off), and the live page's toggle in a real headless Chromium."""

from __future__ import annotations

import json
import time
import urllib.request

import cv2
import numpy as np

from tests.conftest import decoded_frames, metrics_port, read_jsonl, run_perceptd
from tests.test_pipeline import scrape, wait_for
from tests.test_service import config, start
from tests.test_web import chromium, processed, shot


def run_carphone(carphone, tmp_path, cache_dir, name: str, saliency: bool):
    out = tmp_path / name
    cfg = config(tmp_path / f"{name}.yaml", [{"name": "car", "uri": str(carphone), "max_frames": 24}], out, 0,
                 sinks={"overlay": {"saliency": saliency}}, tracking={"enabled": False})
    run_perceptd("run", "-c", str(cfg), cache_dir=cache_dir, check=True)
    return read_jsonl(out / "car.jsonl"), decoded_frames(next(out.glob("car.*[4v]")))


def blue_cast(image: np.ndarray) -> float:
    """How much bluer than red a picture is: the heat map's cold colour tints everything but a face."""
    b, _, r = cv2.split(image.astype(np.float32))
    return float((b - r).mean())


def test_saliency_when_on_then_jsonl_peak_in_the_face_and_heat_in_the_video_and_when_off_nothing(carphone,
                                                                                                 tmp_path, cache_dir):
    on, on_frames = run_carphone(carphone, tmp_path, cache_dir, "on", True)
    off, off_frames = run_carphone(carphone, tmp_path, cache_dir, "off", False)
    assert len(on) == len(off) == 24 and len(on_frames) == len(off_frames) == 24
    assert not any("saliency" in r for r in off)
    inside = 0
    for r in on:
        s = r["saliency"]
        assert len(s["grid"]) == 8 and all(len(row) == 8 for row in s["grid"])
        assert 0 <= min(map(min, s["grid"])) and max(map(max, s["grid"])) <= 1
        x, y = s["peak"]
        inside += any(d["box"][0] <= x <= d["box"][2] and d["box"][1] <= y <= d["box"][3] for d in r["detections"])
    assert inside >= 0.9 * len(on), inside
    for a, b in zip(on_frames[::6], off_frames[::6]):
        assert blue_cast(a) > blue_cast(b) + 15  # the cold colour over the car's interior


def test_live_page_when_heat_map_toggled_then_the_picture_shows_it_changes_and_goes_when_off(carphone, tmp_path,
                                                                                              cache_dir):
    cfg = config(tmp_path / "c.yaml", [{"name": "car", "uri": str(carphone), "loop": True, "realtime": True}],
                 tmp_path / "out", 0, sinks={"overlay": {"saliency": True}, "video": {"enabled": False}})
    driver = chromium(tmp_path, "--window-size=800,600")
    from selenium.webdriver.common.by import By

    proc = start(cfg, cache_dir, tmp_path / "log.txt")
    try:
        port = metrics_port(tmp_path / "log.txt", proc)
        wait_for(lambda: scrape(port).get(processed("car"), 0) > 5, 60, "frames", proc)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=5) as r:
            assert json.load(r)["saliency"] is True
        driver.get(f"http://127.0.0.1:{port}/")
        toggle_label = wait_for(lambda: [e for e in driver.find_elements(By.CSS_SELECTOR, ".tile .sal")
                                         if e.is_displayed()], 60, "the heat map toggle", proc)[0]
        toggle = driver.find_element(By.CSS_SELECTOR, ".saliency-toggle")
        img = driver.find_element(By.CSS_SELECTOR, ".tile img")
        assert toggle.is_selected() and "saliency=1" in img.get_attribute("src")
        scale = shot(driver).shape[1] / driver.execute_script("return window.innerWidth")
        r = img.rect
        x, y, w, h = (int(r[k] * scale) for k in ("x", "y", "width", "height"))

        def tile_shots(n: int) -> list[np.ndarray]:
            shots = []
            for _ in range(n):
                time.sleep(0.3)
                shots.append(shot(driver)[y:y + h, x:x + w])
            return shots

        # The picture is letterboxed in its tile (object-fit: contain): compare whole tiles, black bars alike.
        wait_for(lambda: driver.execute_script("return document.querySelector('.tile img').naturalWidth > 0"),
                 30, "a decoded frame", proc)
        heat = tile_shots(6)
        assert max(np.abs(a.astype(int) - b).mean() for a, b in zip(heat, heat[1:])) > 0.5  # live: it changes
        toggle_label.click()
        wait_for(lambda: "saliency" not in img.get_attribute("src"), 10, "the plain stream", proc)
        time.sleep(1.0)  # the next frame of the plain stream
        plain = tile_shots(4)
        toggle_label.click()
        wait_for(lambda: "saliency=1" in img.get_attribute("src"), 10, "the heat map stream", proc)
        time.sleep(1.0)
        again = tile_shots(4)
        (tmp_path / "page.png").write_bytes(driver.get_screenshot_as_png())
        cast = {k: float(np.median([blue_cast(s) for s in v])) for k, v in
                (("heat", heat), ("plain", plain), ("again", again))}
        print("blue cast of the tile (heat map on, off, on again):", {k: round(v, 1) for k, v in cast.items()})
        assert cast["heat"] > cast["plain"] + 10 and cast["again"] > cast["plain"] + 10, cast
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        assert proc.wait(60) == 0
