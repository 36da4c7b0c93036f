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


class _Segmented(_AtomicFile):
    """An output cut into files of `segment_s` seconds: `<stem><ext>`, then `<stem>.<date>-<time><ext>`.

    Each file is finalised (renamed into place) as it closes, so operators can open it while the daemon
    runs and retention can delete old ones; for video it also bounds memory, since a muxer keeps every
    frame's index entry until its file is closed (~0.1 KB a frame, for months otherwise).
    """

    def __init__(self, final: Path, segment_s: float):
        super().__init__(final)
        self._first = Path(final)
        self._segment_ns = int(segment_s * 1e9)
        self._opened_ns = 0
        self.files: list[Path] = []  # finalised so far

    def _is_open(self) -> bool:
        raise NotImplementedError

    def _rotate_if_due(self) -> None:
        if self._is_open() and self._segment_ns and time.monotonic_ns() - self._opened_ns >= self._segment_ns:
            self.close()
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            _AtomicFile.__init__(self, self._first.with_name(f"{self._first.stem}.{stamp}{self._first.suffix}"))

    def _finalised(self, what: str) -> None:
        self.commit()
        self.files.append(self.final)
        log.info("wrote %s (%s)", self.final, what)


class VideoFileSink(_Segmented):
    """Annotated frames into a video container; opened at the first frame (its size is known then)."""

    def __init__(self, final: Path, fourcc: str, fps: Callable[[], float], segment_s: float = 0.0):
        super().__init__(final, segment_s)
        self.fourcc = fourcc
        self._fps = fps
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0  # in the current file

    def _is_open(self) -> bool:
        return self._writer is not None

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        self._rotate_if_due()
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
            self._finalised(f"{self.frames} frames")


class EventsSink(_Segmented):
    """One JSON object per processed frame, one line each, flushed per line (tail -f friendly)."""

    def __init__(self, final: Path, segment_s: float = 0.0):
        super().__init__(final, segment_s)
        self._f = None  # opened at the first frame: a source that never delivers replaces nothing
        self.lines = 0  # in the current file

    def _is_open(self) -> bool:
        return self._f is not None and not self._f.closed

    def write(self, record: dict) -> None:
        self._rotate_if_due()
        if not self._is_open():
            self._f = open(self.partial, "w", encoding="utf-8", buffering=1)
            self._opened_ns = time.monotonic_ns()
            self.lines = 0
        self._f.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._is_open():
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._finalised(f"{self.lines} lines")
