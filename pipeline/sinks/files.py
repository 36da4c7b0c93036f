"""Output files: the annotated video and the JSONL events.

Both are written under a temporary name and moved into place when finalised, so an existing output is
only ever replaced by a complete one, and a run that fails at start-up leaves earlier outputs untouched.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from pipeline.errors import UserError

log = logging.getLogger(__name__)


def check_output_dir(path: Path) -> Path:
    """Create the output directory (or fail with a one-line fix) before any work starts."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output directory {path}: cannot create it ({exc.strerror}); pass --output with a "
                        "writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"output directory {path}: not writable by this user; pass --output with a writable "
                        "directory")
    return path


class _AtomicFile:
    def __init__(self, final: Path):
        self.final = Path(final)
        self.partial = self.final.with_name(f".{self.final.stem}.partial{self.final.suffix}")

    def commit(self) -> None:
        if self.partial.exists():
            os.replace(self.partial, self.final)


class VideoFileSink(_AtomicFile):
    """Annotated frames into a video container; opened at the first frame (its size is known then).

    With `segment_s` the video is cut into files of that length: `<stem>.mp4`, then
    `<stem>.<date>-<time>.mp4` for each later segment. A muxer keeps every frame's index entry in memory
    until the file is closed, so one endless file would grow the daemon by ~0.1 KB per frame for months;
    segments also give operators files they can open while the daemon runs.
    """

    def __init__(self, final: Path, fourcc: str, fps: Callable[[], float], segment_s: float = 0.0):
        super().__init__(final)
        self._first = Path(final)
        self.fourcc = fourcc
        self._fps = fps
        self._segment_ns = int(segment_s * 1e9)
        self._opened_ns = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0  # in the current file
        self.files: list[Path] = []  # finalised so far

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is not None and self._segment_ns and time.monotonic_ns() - self._opened_ns >= self._segment_ns:
            self.close()
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            super().__init__(self._first.with_name(f"{self._first.stem}.{stamp}{self._first.suffix}"))
        if self._writer is None:
            self._size = self._size or (w, h)  # segments keep the first size: players expect one
            fps = self._fps() or 25.0  # streams that do not say play back at a common camera rate
            self._writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*self.fourcc), fps, self._size)
            if not self._writer.isOpened():
                self._writer = None
                raise UserError(f"cannot write video {self.final} with codec {self.fourcc!r}; set "
                                "sinks.video.fourcc to one this OpenCV supports (mp4v, MJPG, XVID)")
            self._opened_ns = time.monotonic_ns()
            self.frames = 0
        if (w, h) != self._size:  # a stream that changed resolution: keep one size, scale into it
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()  # writes the index (moov atom): the file is playable from here on
            self._writer = None
            self.commit()
            self.files.append(self.final)
            log.info("wrote %s (%d frames)", self.final, self.frames)


class EventsSink(_AtomicFile):
    """One JSON object per processed frame, one line each, flushed per line (tail -f friendly)."""

    def __init__(self, final: Path):
        super().__init__(final)
        self._f = None  # opened at the first frame: a source that never delivers replaces nothing
        self.lines = 0

    def write(self, record: dict) -> None:
        if self._f is None:
            self._f = open(self.partial, "w", encoding="utf-8", buffering=1)
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self.commit()
            log.info("wrote %s (%d lines)", self.final, self.lines)
