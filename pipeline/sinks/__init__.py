"""Per-source output: one thread draws, publishes the results (events, live view, metrics) and observes the
latency; the source's recorder thread then encodes the drawn frame into the video and frees the slot."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Callable

from pipeline.frame import Frame, WorkResult
from pipeline.metrics import Metrics
from pipeline.settings import SinkSettings
from pipeline.sinks.files import EventsSink, VideoFileSink
from pipeline.sinks.guard import SinkGuard, describe
from pipeline.sinks.outdir import OutputDir
from pipeline.sinks.overlay import draw
from pipeline.sinks.preview import Preview
from pipeline.sinks.privacy import mask_regions
from pipeline.sinks.recorder import Recorder

log = logging.getLogger(__name__)

_NS = 1e-9


class SourceOutput:
    """The sinks of one source, fed in frame order by the result reader. Each output (overlay, preview,
    events, video) sits behind its own SinkGuard: one that fails pauses alone, and frames are still counted."""

    def __init__(self, name: str, settings: SinkSettings, out: OutputDir, fps: Callable[[], float],
                 metrics: Metrics, release: Callable[[Frame], None], preview: Preview | None = None):
        """`fps` is asked when the video opens (a live source's rate is known once it is connected)."""
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self._release = release
        self._q: queue.Queue = queue.Queue()  # bounded upstream: at most the pool's slots are in flight
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        v, e = settings.video, settings.events
        suffixes = (v.extension,) * v.enabled + (".jsonl",) * e.enabled
        stem = out.claim(name, suffixes) if suffixes else name  # one stem for the source's first files
        reserve = int(settings.reserve_mb * 1e6)
        self.video = (VideoFileSink(out, name, stem, v.fourcc, v.extension, fps, v.segment_s, reserve)
                      if v.enabled else None)
        guard = lambda sink: SinkGuard(name, sink, metrics, settings.retry_s)  # noqa: E731
        self.recorder = (Recorder(name, self.video, release, metrics.record_latency.labels(name).observe,
                                  guard("video")) if self.video is not None else None)
        self.events = EventsSink(out, name, stem, e.segment_s, reserve) if e.enabled else None
        self._events_guard = guard("events") if self.events is not None else None
        self.preview = preview
        self._preview_guard = guard("preview") if preview is not None else None
        self._overlay_guard = guard("overlay")
        self._mask_labels = frozenset(settings.privacy.labels)
        # Landmarks would redraw the geometry of a masked face: not with masking on.
        self._overlay = (settings.overlay.model_copy(update={"landmarks": False}) if self._mask_labels
                         else settings.overlay)
        self.closed = False
        self._close_lock = threading.Lock()
        self.processed = 0
        self.first_done_ns = 0
        self.last_done_ns = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=120)  # (t_done_ns, e2e seconds) for the banner

    def paused(self) -> list[str]:
        """The outputs paused after an error, with the reason (for STATUS= and /readyz)."""
        guards = [self._overlay_guard, self._events_guard, self._preview_guard,
                  self.recorder.guard if self.recorder is not None else None]
        return [f"{g.sink}: {g.error}" for g in guards if g is not None and not g.up]

    def start(self) -> None:
        if self.recorder is not None:
            self.recorder.start()
        self._thread.start()

    def put(self, frame: Frame, result: WorkResult) -> None:
        self._q.put((frame, result))

    def close(self) -> None:
        """Publish what is queued, record it, then finalise the files (the video becomes playable).
        Safe to call again, from any thread: the second call waits for the first."""
        with self._close_lock:
            if not self.closed:
                self._close()
                self.closed = True

    def _close(self) -> None:
        if self._thread.ident is not None:  # started
            self._q.put(None)
            self._thread.join()
        for closer, sink in ((self.recorder, self.video), (self.events, self.events)):
            if closer is None:
                continue
            try:
                closer.close()
            except OSError as exc:
                left = ", ".join(p.name for p, _, _ in sink.unfinalised)
                log.error("source '%s': cannot finalise %s: %s; left as it is, the next start recovers it", self.name,
                          left or sink.final, describe(exc))

    def stats(self) -> tuple[float, float]:
        """(fps, mean end-to-end ms) over the recent window."""
        recent = list(self._recent)
        if len(recent) < 2:
            return 0.0, (recent[0][1] * 1e3 if recent else 0.0)
        span = (recent[-1][0] - recent[0][0]) * _NS
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        return fps, sum(r[1] for r in recent) / len(recent) * 1e3

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            frame, result = item
            try:
                self._write(frame, result)
            finally:  # whatever happened, the slot goes on (a bug here must not leak the source's slots)
                if self.recorder is not None:
                    self.recorder.put(frame)  # it frees the slot once the frame is in the video
                else:
                    self._release(frame)

    def _write(self, frame: Frame, r: WorkResult) -> None:
        t_sink = time.monotonic_ns()
        to_preview = self.preview is not None and self.preview.wants_frame()
        if self.video is not None or to_preview:
            self._overlay_guard.run(lambda: self._draw(frame, r))
            if to_preview:
                self._preview_guard.run(lambda: self.preview.publish(frame.image))
        t_done = time.monotonic_ns()  # results published; the video is written after, by the recorder
        stages = {
            "capture": frame.t_decoded_ns - frame.t_capture_ns,
            "queue": r.t_dequeued_ns - frame.t_decoded_ns,
            "preprocess": r.preprocess_ns,
            "inference": r.inference_ns,
            "postprocess": r.postprocess_ns,
            "sink": t_done - t_sink,
        }
        total = t_done - frame.t_capture_ns
        if self.events is not None:
            latency = {k: round(v / 1e6, 3) for k, v in stages.items()}
            latency["total"] = round(total / 1e6, 3)
            record = {"source": self.name, "frame": frame.index, "pts_ms": round(frame.pts_ms, 3),
                      "detections": [d.to_json() for d in r.detections], "latency_ms": latency}
            self._events_guard.run(lambda: self.events.write(record))
        m = self.metrics
        for stage, ns in stages.items():
            m.stage_latency.labels(self.name, stage).observe(max(ns, 0) * _NS)
        m.end_to_end_latency.labels(self.name).observe(total * _NS)
        m.detections.labels(self.name).inc(len(r.detections))
        m.frames_processed.labels(self.name).inc()
        self.processed += 1
        if not self.first_done_ns:
            self.first_done_ns = t_done
        self.last_done_ns = t_done
        self._recent.append((t_done, total * _NS))

    def _draw(self, frame: Frame, r: WorkResult) -> None:
        if self._mask_labels:  # before drawing: boxes and labels stay visible over the masked region
            p = self.settings.privacy
            mask_regions(frame.image, r.detections, self._mask_labels, p.mode, p.padding)
        banner = ""
        if self.settings.overlay.banner:
            fps, e2e_ms = self.stats()
            banner = f"{self.name}  {fps:5.1f} fps  {e2e_ms:5.0f} ms"
        draw(frame.image, r.detections, self._overlay, banner, self._mask_labels)

    def summary(self) -> str:
        span = (self.last_done_ns - self.first_done_ns) * _NS
        fps = (self.processed - 1) / span if span > 0 and self.processed > 1 else 0.0
        return f"{self.name}: {self.processed} frames processed, {fps:.1f} fps"
