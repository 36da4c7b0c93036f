"""Per-source detection rate (`sources[].detect_fps`), and the order a source's frames leave in.

With a detection rate, most frames skip the model: they go to the sinks marked not inferred, and the tracker
fills in their boxes from its predictions (how Frigate and DeepStream make eight cameras affordable on one
Jetson). A frame that skips must still reach its source's sinks after the frames sent before it, which may
be at the worker still: such a source's frames leave through an ordered gate.
"""

from __future__ import annotations

import time
from collections import deque

from pipeline.frame import Frame, WorkResult

EARLY = 0.9  # a frame up to 10% early for its slot counts as due: camera timestamps jitter


def frame_time(live: bool, frame: Frame) -> float:
    """Seconds on the source's own clock: capture time for live sources, stream time for files (a file
    processed faster than real time is still detected `detect_fps` times per second of video)."""
    return frame.t_capture_ns / 1e9 if live else frame.pts_ms / 1000.0


def predicted(source_id: int, frame: Frame) -> WorkResult:
    """The result of a frame that skipped the model: no detections of its own, no inference time."""
    return WorkResult(source_id, frame.index, frame.slot, (), time.monotonic_ns(), 0, 0, 0, 0, inferred=False)


class Cadence:
    """When each source's next frame is due for the model."""

    def __init__(self):
        self._last: dict[int, float] = {}

    def due(self, source_id: int, live: bool, frame: Frame, fps: float) -> bool:
        last = self._last.get(source_id)
        return last is None or frame_time(live, frame) - last >= EARLY / fps

    def inferred(self, source_id: int, live: bool, frame: Frame) -> None:
        self._last[source_id] = frame_time(live, frame)


class OrderGate:
    """A source's frames leave in the order they were dispatched, whichever way they went. Not thread-safe:
    the inference side calls it under its condition."""

    def __init__(self):
        self._order: dict[int, deque[int]] = {}
        self._ready: dict[int, dict[int, tuple]] = {}

    def sent(self, source_id: int, index: int) -> None:
        self._order.setdefault(source_id, deque()).append(index)

    def done(self, source_id: int, index: int, item: tuple) -> list[tuple]:
        """A frame is ready (inferred or predicted): returns what may leave now, in order."""
        self._ready.setdefault(source_id, {})[index] = item
        return self._flush(source_id)

    def forget(self, source_id: int, index: int) -> list[tuple]:
        """A frame that will never be ready (dropped at the worker): the ones behind it may leave."""
        order = self._order.get(source_id)
        if order is not None and index in order:
            order.remove(index)
        return self._flush(source_id)

    def waiting(self) -> int:
        return sum(len(r) for r in self._ready.values())

    def _flush(self, source_id: int) -> list[tuple]:
        order, ready, out = self._order.get(source_id, deque()), self._ready.get(source_id, {}), []
        while order and order[0] in ready:
            out.append(ready.pop(order.popleft()))
        return out
