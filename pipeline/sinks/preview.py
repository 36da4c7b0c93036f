"""The live view's frames: the latest annotated JPEG of one source, encoded only while someone watches.

The sink thread publishes (replacing the previous JPEG) at most `max_fps` times a second and only with a
viewer connected; viewers wait for the next JPEG on their own HTTP threads. Nothing here ever waits on a
viewer, so a slow or stalled browser cannot slow the pipeline or grow its memory.
"""

from __future__ import annotations

import contextlib
import threading
import time

import cv2
import numpy as np


class Preview:
    """Two pictures per source: with the saliency heat map (`heat` True) and without, each encoded only while
    someone watches it (the live page's toggle picks one). Without a heat map both get the same JPEG."""

    def __init__(self, max_fps: float = 10.0, quality: int = 80, max_width: int = 960, viewers_gauge=None,
                 frames_counter=None):
        self.interval = 1.0 / max_fps
        self._viewers_gauge = viewers_gauge  # prometheus children for this source, when given
        self._frames_counter = frames_counter
        self.quality = quality
        self.max_width = max_width
        self._cond = threading.Condition()
        self._jpeg: dict[bool, tuple[int, bytes] | None] = {False: None, True: None}  # (seq, JPEG) per kind
        self._seq = 0
        self._watching = {False: 0, True: 0}
        self._last = 0.0

    @property
    def viewers(self) -> int:
        return self._watching[False] + self._watching[True]

    def wants_frame(self) -> bool:
        """Cheap check for the sink thread: someone is watching and the rate cap allows a new frame."""
        return self.viewers > 0 and time.monotonic() - self._last >= self.interval

    def wanted(self) -> tuple[bool, ...]:
        """The kinds someone watches: False (without the heat map), True (with it)."""
        return tuple(k for k in (False, True) if self._watching[k])

    def publish(self, image: np.ndarray, heat: bool | None = None) -> None:
        """The newest picture for the viewers of `heat` (None: every viewer)."""
        self._last = time.monotonic()
        h, w = image.shape[:2]
        if w > self.max_width:
            image = cv2.resize(image, (self.max_width, int(h * self.max_width / w)), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        with self._cond:
            self._seq += 1
            for kind in ((False, True) if heat is None else (heat,)):
                self._jpeg[kind] = (self._seq, buf.tobytes())
            self._cond.notify_all()
        if self._frames_counter is not None:
            self._frames_counter.inc()

    @contextlib.contextmanager
    def watch(self, heat: bool = False):
        """One viewer, for as long as the block runs."""
        self._count(heat, 1)
        try:
            yield self
        finally:
            self._count(heat, -1)

    def _count(self, heat: bool, delta: int) -> None:
        with self._cond:
            self._watching[heat] += delta
            if self._viewers_gauge is not None:
                self._viewers_gauge.set(self.viewers)

    def next(self, after: int, timeout: float, heat: bool = False) -> tuple[int, bytes] | None:
        """The first JPEG of its kind newer than sequence `after`, or None if none came within `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: (self._jpeg[heat] or (0,))[0] > after, timeout):
                return None
            return self._jpeg[heat]
