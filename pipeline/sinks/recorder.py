"""Video recording off the latency path: one thread per source encodes drawn frames after their results
are published.

Encoding a 720p frame costs ~8 ms of CPU with mp4v and ~13 ms with H.264 (libx264; benchmarks/encoders.py),
more than the rest of the sink. Done in the sink thread it delayed every event and preview by that much, and
the next frame's results waited behind it. The
recorder owns a frame's slot until the frame is written, so a recorder that cannot keep up holds slots and
slows a file's reader (or makes a live source drop): it never loses a frame it was given. A write that
fails pauses the recording through its SinkGuard; the slots keep flowing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from pipeline.frame import Frame
from pipeline.resources import lower_priority
from pipeline.sinks.files import VideoFileSink
from pipeline.sinks.guard import SinkGuard

log = logging.getLogger(__name__)


# Encoding is not latency-critical: when it collides with decoding or inference for a core, it waits.
RECORDER_NICE = 10


class Recorder:
    def __init__(self, name: str, video: VideoFileSink, release: Callable[[Frame], None],
                 observe: Callable[[float], None], guard: SinkGuard):
        """`release` frees a frame's slot once written; `observe` gets each frame's write time in seconds."""
        self.name = name
        self.video = video
        self.guard = guard
        self._release = release
        self._observe = observe
        self._q: queue.Queue = queue.Queue()  # bounded upstream by the source's slots
        self._thread = threading.Thread(target=self._run, name=f"record-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, frame: Frame) -> None:
        """Takes over the frame's slot."""
        self._q.put(frame)

    def close(self) -> None:
        """Write what is queued, then finalise the file (OSError when the file system refuses)."""
        if self._thread.ident is not None:  # started
            self._q.put(None)
            self._thread.join()
        self.video.close()

    def _run(self) -> None:
        lower_priority(RECORDER_NICE, f"source '{self.name}' recorder")
        while True:
            frame = self._q.get()
            if frame is None:
                return
            try:
                t0 = time.monotonic_ns()
                if self.guard.run(lambda: self.video.write(frame.image)):
                    self._observe((time.monotonic_ns() - t0) * 1e-9)
            finally:
                self._release(frame)
