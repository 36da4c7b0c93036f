"""Video encoders for the recording and the event clips: one small interface (base.py), one module per
backend, and `choose`, which picks the first that really works here.

`auto`: hardware H.264 (Jetson NVENC through GStreamer, a desktop NVIDIA's NVENC through PyAV), then software
H.264 (PyAV's libx264, GStreamer's x264enc and openh264enc), then mp4v, which every OpenCV writes but no
browser plays. Each candidate is tried by writing a few frames
and reading them back, because an element or codec that exists can still fail on the device (the Orin Nano
has the NVENC element but no NVENC).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from pipeline.encoders.base import Encoder, Writer
from pipeline.encoders.gstreamer import GStreamerEncoder
from pipeline.encoders.opencv import OpenCVEncoder
from pipeline.encoders.pyav import PyAVEncoder
from pipeline.errors import UserError

__all__ = ["Encoder", "GStreamerEncoder", "NoEncoder", "OpenCVEncoder", "PyAVEncoder", "Writer", "candidates",
           "choose", "h264_chain", "probe"]

log = logging.getLogger(__name__)

PROBE_SIZE = (320, 240)  # NVENC refuses tiny pictures; this costs a few ms on a CPU encoder
PROBE_FRAMES = 5


class NoEncoder(UserError):
    """The codec asked for cannot be written here."""


def h264_chain() -> list[Encoder]:
    """H.264 encoders, best first: hardware, then PyAV's libx264 (the cheapest on the CPU, and the path the
    tests cover end to end) before GStreamer's software encoders. Not OpenCV's avc1 (`codec: avc1` still
    asks for it): it runs x264 at its default preset, ~7x the CPU of ours (benchmarks/encoders.py), which
    would leave a recorder behind its camera, and its MP4 is not fragmented."""
    return [GStreamerEncoder("nvv4l2h264enc"), PyAVEncoder("h264_nvenc"), PyAVEncoder("libx264"),
            GStreamerEncoder("x264enc"), GStreamerEncoder("openh264enc")]


def candidates(codec: str) -> list[Encoder]:
    """auto | h264 | an OpenCV FourCC (mp4v, MJPG, XVID...)."""
    if codec == "auto":
        return [*h264_chain(), OpenCVEncoder("mp4v")]
    if codec.lower() == "h264":
        return h264_chain()
    return [OpenCVEncoder(codec)]


@contextmanager
def _quiet_opencv():
    """Candidates that are missing here are expected to fail: no OpenCV/GStreamer errors on stderr."""
    # OpenCV 5 moved the calls to cv2.utils.logging; JetPack's and Debian's 4.x have them on cv2.
    calls = getattr(getattr(cv2, "utils", None), "logging", cv2)
    previous = calls.getLogLevel()
    calls.setLogLevel(0)  # LOG_LEVEL_SILENT
    try:
        yield
    finally:
        calls.setLogLevel(previous)


def _test_frame(i: int) -> np.ndarray:
    h, w = PROBE_SIZE[1], PROBE_SIZE[0]
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :, 1] = np.arange(w, dtype=np.uint8)[None, :]
    cv2.putText(image, str(i), (20, 150), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 5)
    return image


def probe(encoder: Encoder, directory: Path, extension: str) -> str | None:
    """Write a few frames with `encoder` into `directory` and read them back: None when that worked, else
    why not (one line)."""
    why = encoder.missing()
    if why is None and not encoder.supports(extension):
        why = f"does not write {extension} files"
    if why is not None:
        return why
    path = Path(directory) / f".perceptd-probe-{os.getpid()}-{threading.get_ident()}{extension}"
    try:
        with _quiet_opencv():
            writer = encoder.open(path, 25.0, PROBE_SIZE)
            for i in range(PROBE_FRAMES):
                writer.write(_test_frame(i))
            writer.close()
            cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
            plays = cap.isOpened() and cap.grab()
            cap.release()
        return None if plays else "the file it wrote does not play"
    except Exception as exc:  # noqa: BLE001 - any backend's failure means "not this one", said in the log
        text = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)).replace(str(path), "a test file")
        return text.splitlines()[0] if text else type(exc).__name__
    finally:
        path.unlink(missing_ok=True)


_chosen: dict[tuple[str, str], Encoder] = {}  # (codec, extension) -> encoder: probed once a process
_lock = threading.Lock()


def choose(codec: str, extension: str, directory: Path, chain: list[Encoder] | None = None) -> Encoder:
    """The first of `chain` (default: the candidates for `codec`) that writes a playable `extension` file
    in `directory`; logged with what was passed over and why. NoEncoder when none does."""
    key = (codec, extension)
    with _lock:
        if chain is None and key in _chosen:
            return _chosen[key]
        tried = []
        for encoder in chain if chain is not None else candidates(codec):
            why = probe(encoder, directory, extension)
            if why is None:
                break
            tried.append(f"{encoder.name}: {why}")
        else:
            raise NoEncoder(f"no encoder here writes {codec} into {extension} files ({'; '.join(tried)})")
        if chain is None:
            _chosen[key] = encoder
    passed = f" (passed over: {'; '.join(tried)})" if tried else ""
    if encoder.codec == "h264" or codec not in ("auto", "h264"):
        log.info("video codec for %s: %s%s", extension, encoder, passed)
    else:
        log.warning("video codec for %s: %s, which browsers do not play: no H.264 encoder here%s; pip install "
                    "'perceptd[h264]' gives one", extension, encoder, passed)
    return encoder
