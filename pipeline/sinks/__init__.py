"""Per-source output: one thread draws, publishes the results (events, live view, metrics) and observes the
latency; the source's recorder thread then encodes the drawn frame into the video and frees the slot."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

from pipeline.frame import Frame, WorkResult
from pipeline.metrics import Metrics
from pipeline.settings import SinkSettings
from pipeline.sinks.files import EventsSink, VideoFileSink
from pipeline.sinks.overlay import draw
from pipeline.sinks.preview import Preview
from pipeline.sinks.privacy import mask_regions
from pipeline.sinks.recorder import Recorder

log = logging.getLogger(__name__)

_NS = 1e-9


class SourceOutput:
    """The sinks of one source, fed in frame order by the result reader."""

    def __init__(self, name: str, settings: SinkSettings, output_dir: Path, fps: Callable[[], float],
                 metrics: Metrics, release: Callable[[Frame], None], stem: str | None = None,
                 preview: Preview | None = None):
        """`fps` is asked when the video opens (a live source's rate is known once it is connected);
        `stem` names the files (default: the source name)."""
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self._release = release
        self._q: queue.Queue = queue.Queue()  # bounded upstream: at most the pool's slots are in flight
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        stem = stem or name
        self.video = (VideoFileSink(output_dir / f"{stem}{settings.video.extension}", settings.video.fourcc, fps,
                                    settings.video.segment_s) if settings.video.enabled else None)
        self.recorder = (Recorder(name, self.video, release, metrics.record_latency.labels(name).observe)
                         if self.video is not None else None)
        self.events = (EventsSink(output_dir / f"{stem}.jsonl", settings.events.segment_s)
                       if settings.events.enabled else None)
        self.preview = preview
        self._mask_labels = frozenset(settings.privacy.labels)
        # Landmarks would redraw the geometry of a masked face: not with masking on.
        self._overlay = (settings.overlay.model_copy(update={"landmarks": False}) if self._mask_labels
                         else settings.overlay)
        self.processed = 0
        self.first_done_ns = 0
        self.last_done_ns = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=120)  # (t_done_ns, e2e seconds) for the banner
        self._error: BaseException | None = None

    @property
    def error(self) -> BaseException | None:
        return self._error or (self.recorder.error if self.recorder is not None else None)

    def start(self) -> None:
        if self.recorder is not None:
            self.recorder.start()
        self._thread.start()

    def put(self, frame: Frame, result: WorkResult) -> None:
        self._q.put((frame, result))

    def close(self) -> None:
        """Publish what is queued, record it, then finalise the files (the video becomes playable)."""
        self._q.put(None)
        self._thread.join()
        for closer, what in ((self.recorder, self.video), (self.events, self.events)):
            if closer is not None:
                try:
                    closer.close()
                except Exception:
                    log.exception("source '%s': finalising %s failed", self.name, what.final)

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
            except BaseException as exc:  # the runner sees .error and stops with exit 1
                self._error = exc
                log.exception("source '%s': sink failed", self.name)
                self._release(frame)
                self._drain_rest()
                return
            if self.recorder is not None:
                self.recorder.put(frame)  # it frees the slot once the frame is in the video
            else:
                self._release(frame)

    def _drain_rest(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            self._release(item[0])

    def _write(self, frame: Frame, r: WorkResult) -> None:
        t_sink = time.monotonic_ns()
        to_preview = self.preview is not None and self.preview.wants_frame()
        if self.video is not None or to_preview:
            if self._mask_labels:  # before drawing: boxes and labels stay visible over the masked region
                p = self.settings.privacy
                mask_regions(frame.image, r.detections, self._mask_labels, p.mode, p.padding)
            banner = ""
            if self.settings.overlay.banner:
                fps, e2e_ms = self.stats()
                banner = f"{self.name}  {fps:5.1f} fps  {e2e_ms:5.0f} ms"
            draw(frame.image, r.detections, self._overlay, banner)
            if to_preview:
                self.preview.publish(frame.image)
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
            self.events.write({
                "source": self.name, "frame": frame.index, "pts_ms": round(frame.pts_ms, 3),
                "detections": [d.to_json() for d in r.detections], "latency_ms": latency,
            })
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

    def summary(self) -> str:
        span = (self.last_done_ns - self.first_done_ns) * _NS
        fps = (self.processed - 1) / span if span > 0 and self.processed > 1 else 0.0
        return f"{self.name}: {self.processed} frames processed, {fps:.1f} fps"
