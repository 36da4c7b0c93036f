"""Per-source output: one thread draws, publishes the results (events, live view, metrics) and observes the
latency; the source's recorder thread then encodes the drawn frame into the video and frees the slot."""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections import deque
from typing import Callable

from pipeline import encoders
from pipeline.frame import Frame, WorkResult
from pipeline.metrics import Metrics
from pipeline.settings import SinkSettings
from pipeline.sinks.fanout import EventsOut
from pipeline.cadence import frame_time
from pipeline.sinks.files import EventsSink, VideoFileSink
from pipeline.sinks.media import EventMedia
from pipeline.sinks.guard import SinkGuard, describe
from pipeline.sinks.heatmap import blend
from pipeline.sinks.outdir import OutputDir
from pipeline.sinks.overlay import draw
from pipeline.sinks.preview import Preview
from pipeline.sinks.privacy import mask_regions
from pipeline.sinks.recorder import Recorder
from pipeline.sinks.tracks import SourceTracking

log = logging.getLogger(__name__)

_NS = 1e-9
_MODEL_STAGES = frozenset({"preprocess", "inference", "postprocess"})


class SourceOutput:
    """The sinks of one source, fed in frame order by the result reader. Each output (overlay, preview,
    events, video) sits behind its own SinkGuard: one that fails pauses alone, and frames are still counted."""

    def __init__(self, name: str, settings: SinkSettings, out: OutputDir, fps: Callable[[], float],
                 metrics: Metrics, release: Callable[[Frame], None], preview: Preview | None = None,
                 tracking: SourceTracking | None = None, after: "SourceOutput | None" = None,
                 events_out: EventsOut | None = None, live: bool = False):
        """`fps` is asked when the video opens (a live source's rate is known once it is connected).
        `tracking` gives detections track ids and writes `<name>.events.jsonl`; `after` is the output this
        one replaces (a reload): it publishes first, so that the tracks see their frames in order."""
        self.name = name
        self.settings = settings
        self.metrics = metrics
        self._release = release
        self._q: queue.Queue = queue.Queue()  # bounded upstream: at most the pool's slots are in flight
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)
        v, e = settings.video, settings.events
        self.tracking = tracking
        self._after = after
        self._events_out = events_out or EventsOut()  # MQTT, the webhook: buffered, never waited on
        with_events = tracking is not None and tracking.settings.events_file
        suffixes = (v.extension,) * v.enabled + (".jsonl",) * e.enabled + (".events.jsonl",) * with_events
        stem = out.claim(name, suffixes) if suffixes else name  # one stem for the source's first files
        reserve = int(settings.reserve_mb * 1e6)
        # The runner chose the encoder at start-up (probed once a process): this is that choice.
        self.video = (VideoFileSink(out, name, stem, encoders.choose(v.codec, v.extension, out.path), v.extension,
                                    fps, v.segment_s, reserve) if v.enabled else None)
        guard = lambda sink: SinkGuard(name, sink, metrics, settings.retry_s)  # noqa: E731
        self.recorder = (Recorder(name, self.video, release, metrics.record_latency.labels(name).observe,
                                  guard("video")) if self.video is not None else None)
        self.events = EventsSink(out, name, stem, e.segment_s, reserve) if e.enabled else None
        self._events_guard = guard("events") if self.events is not None else None
        self.track_events = (EventsSink(out, name, stem, e.segment_s, reserve, ".events.jsonl") if with_events
                             else None)
        self._track_events_guard = guard("track_events") if self.track_events is not None else None
        self._tracking_guard = guard("tracking") if tracking is not None else None
        self._live = live
        self.media = (EventMedia(name, settings, out, metrics, fps, guard("media"))
                      if tracking is not None and (settings.clips.enabled or settings.snapshots.enabled) else None)
        self._media_guard = guard("media_events") if self.media is not None else None
        self.preview = preview
        self._preview_guard = guard("preview") if preview is not None else None
        self._overlay_guard = guard("overlay")
        self._mask_labels = frozenset(settings.privacy.labels)
        # Landmarks would redraw the geometry of a masked face: not with masking on.
        self._overlay = (settings.overlay.model_copy(update={"landmarks": False}) if self._mask_labels
                         else settings.overlay)
        self._heat = settings.overlay.saliency  # the worker sends a map with each inferred frame
        self._last_saliency = None  # drawn on frames the model skipped (detect_fps)
        self.closed = False
        self._close_lock = threading.Lock()
        self._last_detections: tuple = ()
        self.processed = 0
        self.first_done_ns = 0
        self.last_done_ns = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=120)  # (t_done_ns, e2e seconds) for the banner

    def paused(self) -> list[str]:
        """The outputs paused after an error, with the reason (for STATUS= and /readyz)."""
        guards = [self._overlay_guard, self._events_guard, self._preview_guard, self._track_events_guard,
                  self._tracking_guard, self.recorder.guard if self.recorder is not None else None]
        return [f"{g.sink}: {g.error}" for g in guards if g is not None and not g.up]

    def start(self) -> None:
        if self.media is not None:
            self.media.start()
        if self.recorder is not None:
            self.recorder.start()
        self._thread.start()

    def put(self, frame: Frame, result: WorkResult) -> None:
        self._q.put((frame, result))

    def close(self, end_tracks: bool = True) -> None:
        """Publish what is queued, record it, then finalise the files (the video becomes playable). The
        source's tracks end too, unless another output takes them over (`end_tracks` False: a reload).
        Safe to call again, from any thread: the second call waits for the first."""
        with self._close_lock:
            if not self.closed:
                self._close(end_tracks)
                self.closed = True

    def published(self) -> None:
        """Wait until every frame given to this output has been published (not necessarily recorded)."""
        if self._thread.ident is not None:
            self._q.put(None)
            self._thread.join()

    def _close(self, end_tracks: bool) -> None:
        self.published()
        if self.tracking is not None and end_tracks:
            events = self.tracking.end()
            if self.media is not None:
                self._media_guard.run(lambda: self.media.annotate(self.media.last_t, events))
            for event in events:
                self._write_event(event)
            self._events_out.counts(self.name, {})
        if self.media is not None:
            self.media.close()
        for closer, sink in ((self.recorder, self.video), (self.events, self.events),
                             (self.track_events, self.track_events)):
            if closer is None:
                continue
            try:
                closer.close()
            except OSError as exc:
                left = ", ".join(p.name for p, _, _ in sink.unfinalised)
                log.error("source '%s': cannot finalise %s: %s; left as it is, the next start recovers it", self.name,
                          left or sink.final, describe(exc))

    def latency_percentiles(self) -> tuple[float, float]:
        """(p50, p99) end-to-end ms over the recent window."""
        values = sorted(r[1] * 1e3 for r in list(self._recent))
        if not values:
            return 0.0, 0.0
        return (round(values[len(values) // 2], 1), round(values[min(len(values) - 1, int(len(values) * 0.99))], 1))

    def stats(self) -> tuple[float, float]:
        """(fps, mean end-to-end ms) over the recent window."""
        recent = list(self._recent)
        if len(recent) < 2:
            return 0.0, (recent[0][1] * 1e3 if recent else 0.0)
        span = (recent[-1][0] - recent[0][0]) * _NS
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        return fps, sum(r[1] for r in recent) / len(recent) * 1e3

    def _run(self) -> None:
        if self._after is not None:
            self._after.published()  # the replaced output's frames first: one tracker, in frame order
            self._after = None
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

    def _write_event(self, event: dict) -> None:
        if self.track_events is not None:
            self._track_events_guard.run(lambda: self.track_events.write(event))
        self._events_out.event(self.name, event)

    def _track(self, frame: Frame, r: WorkResult) -> tuple:
        """Track ids for the frame's detections (-1: none) and the events they make."""
        wall = time.time() - (time.monotonic_ns() - frame.t_capture_ns) * _NS  # when it was captured
        return self.tracking.step(frame.index, frame.pts_ms, wall, (frame.width, frame.height), r.detections,
                                  r.inferred)

    def _write(self, frame: Frame, r: WorkResult) -> None:
        t_sink = time.monotonic_ns()
        ids, events = None, []
        if self.tracking is not None:
            tracked: list = []
            if self._tracking_guard.run(lambda: tracked.append(self._track(frame, r))):
                detections, ids, events = tracked[0]
                r = dataclasses.replace(r, detections=detections)  # a skipped frame's: the tracks' predictions
        elif not r.inferred:
            r = dataclasses.replace(r, detections=self._last_detections)  # no tracker: the last ones stand
        if r.inferred:
            self._last_detections = r.detections
            self._last_saliency = r.saliency
        to_preview = self.preview is not None and self.preview.wants_frame()
        if self.video is not None or to_preview or self.media is not None:
            plain: list = []
            self._overlay_guard.run(lambda: plain.append(self._draw(frame, r, ids, to_preview)))
            if to_preview:
                self._preview_guard.run(lambda: self._publish(frame, plain[0] if plain else None))
        if self.media is not None and ids is not None:  # before the events are written: they name its files
            t = frame_time(self._live, frame)
            self._media_guard.run(lambda: self.media.frame(t, frame.image, r.detections, ids, events))
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
            detections = [d.to_json() for d in r.detections]
            if ids is not None:
                for d, track_id in zip(detections, ids):
                    d["track_id"] = int(track_id)
            record = {"source": self.name, "frame": frame.index, "pts_ms": round(frame.pts_ms, 3),
                      "detections": detections, "latency_ms": latency}
            if self.tracking is not None:
                record["inferred"] = r.inferred
            if self._heat and r.saliency is not None:
                record["saliency"] = r.saliency.to_json()
            self._events_guard.run(lambda: self.events.write(record))
        for event in events:
            self._write_event(event)
        if ids is not None and self._events_out:
            self._events_out.counts(self.name, self.tracking.tracker.in_view())
        m = self.metrics
        for stage, ns in stages.items():
            if r.inferred or stage not in _MODEL_STAGES:  # a skipped frame spent no time in the model
                m.stage_latency.labels(self.name, stage).observe(max(ns, 0) * _NS)
        m.end_to_end_latency.labels(self.name).observe(total * _NS)
        m.detections.labels(self.name).inc(len(r.detections))
        m.frames_processed.labels(self.name).inc()
        self.processed += 1
        if not self.first_done_ns:
            self.first_done_ns = t_done
        self.last_done_ns = t_done
        self._recent.append((t_done, total * _NS))

    def _draw(self, frame: Frame, r: WorkResult, ids=None, to_preview: bool = False):
        """Annotate the frame in place, the heat map first (under the boxes). Returns a copy annotated
        without the heat map when a live viewer has it toggled off, else None."""
        if self._mask_labels:  # before drawing: boxes and labels stay visible over the masked region
            p = self.settings.privacy
            mask_regions(frame.image, r.detections, self._mask_labels, p.mode, p.padding)
        banner = ""
        if self.settings.overlay.banner:
            fps, e2e_ms = self.stats()
            banner = f"{self.name}  {fps:5.1f} fps  {e2e_ms:5.0f} ms"
        saliency = self._last_saliency if self._heat else None
        plain = None
        if saliency is not None:
            wanted = self.preview.wanted() if to_preview else ()
            if self.video is not None or self.media is not None or True in wanted:
                if False in wanted:  # a viewer with the heat map toggled off: a copy without it
                    plain = frame.image.copy()
                    self._annotate(plain, r, ids, banner)
                blend(frame.image, saliency, self.settings.overlay.saliency_alpha)
        self._annotate(frame.image, r, ids, banner)
        return plain

    def _annotate(self, image, r: WorkResult, ids, banner: str) -> None:
        draw(image, r.detections, self._overlay, banner, self._mask_labels)
        if ids is not None:
            self.tracking.draw(image, r.detections, ids, self._overlay.thickness)

    def _publish(self, frame: Frame, plain) -> None:
        """The live view: with a plain copy, each kind of viewer its own picture; else one for all."""
        if plain is None:
            self.preview.publish(frame.image)
        else:
            self.preview.publish(plain, heat=False)
            self.preview.publish(frame.image, heat=True)

    def summary(self) -> str:
        span = (self.last_done_ns - self.first_done_ns) * _NS
        fps = (self.processed - 1) / span if span > 0 and self.processed > 1 else 0.0
        return f"{self.name}: {self.processed} frames processed, {fps:.1f} fps"

