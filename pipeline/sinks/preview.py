"""The live view's frames: the latest annotated JPEG of one source, encoded only while someone watches.

The sink thread publishes (replacing the previous JPEG) at most `max_fps` times a second and only with a
viewer connected; viewers wait for the next JPEG on their own HTTP threads. Nothing here ever waits on a
viewer, so a slow or stalled browser cannot slow the pipeline or grow its memory.
"""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np


class Preview:
    def __init__(self, max_fps: float = 10.0, quality: int = 80, max_width: int = 960, viewers_gauge=None,
                 frames_counter=None):
        self.interval = 1.0 / max_fps
        self._viewers_gauge = viewers_gauge  # prometheus children for this source, when given
        self._frames_counter = frames_counter
        self.quality = quality
        self.max_width = max_width
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._viewers = 0
        self._last = 0.0

    @property
    def viewers(self) -> int:
        return self._viewers

    def wants_frame(self) -> bool:
        """Cheap check for the sink thread: someone is watching and the rate cap allows a new frame."""
        return self._viewers > 0 and time.monotonic() - self._last >= self.interval

    def publish(self, image: np.ndarray) -> None:
        self._last = time.monotonic()
        h, w = image.shape[:2]
        if w > self.max_width:
            image = cv2.resize(image, (self.max_width, int(h * self.max_width / w)), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        with self._cond:
            self._jpeg = buf.tobytes()
            self._seq += 1
            self._cond.notify_all()
        if self._frames_counter is not None:
            self._frames_counter.inc()

    def __enter__(self) -> "Preview":
        with self._cond:
            self._viewers += 1
            if self._viewers_gauge is not None:
                self._viewers_gauge.set(self._viewers)
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._viewers -= 1
            if self._viewers_gauge is not None:
                self._viewers_gauge.set(self._viewers)

    def next(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The first JPEG newer than sequence `after`, or None if none came within `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > after and self._jpeg is not None, timeout):
                return None
            return self._seq, self._jpeg
