"""Wires sources -> inference (dispatcher, worker, collector) -> per-source sinks, and runs them.

Start-up validates everything a user can get wrong (config, files, model, output directory, port) before
any output file is opened, so a bad start never touches earlier outputs. Live sources that are down at
start are retried by their readers. Sources can be added and retired, and outputs replaced, while running
(reload). Every decoded frame ends up processed or counted as dropped with a reason, whatever fails.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path

from pipeline.capture import STALL_GRACE_S, SourceReader
from pipeline.errors import SourceError, SourceUnsupported
from pipeline.frame import Frame, WorkResult
from pipeline.http import HttpServer
from pipeline.inference import Inference
from pipeline.metrics import DROP_REASONS, Metrics
from pipeline.progress import Progress
from pipeline.settings import Settings, SourceSettings
from pipeline.shm import remove_stale_blocks
from pipeline.sinks import SourceOutput, retention
from pipeline.sinks.files import video_encoder
from pipeline.sinks.outdir import OutputDir
from pipeline.sinks.preview import Preview
from pipeline.sinks.fanout import EventsOut
from pipeline.sinks.mqtt import MqttPublisher
from pipeline.sinks.tracks import SourceTracking
from pipeline.sinks.webhook import Webhook
from pipeline.sources import VideoSource, make_source
from pipeline.spec import adapter_params, build_worker_spec
from pipeline.supervisor import WorkerClient
from pipeline.worker import WorkerSpec

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 60.0


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()  # guards queues, in-flight books, source maps, worker readiness
        self._stop = threading.Event()  # stop reading; drain what is in flight
        self._abort = threading.Event()  # stop everything now
        self._interrupted = threading.Event()  # a signal arrived: cancels a worker start, cuts linger short
        self.readers: dict[int, SourceReader] = {}
        self.outputs: dict[int, SourceOutput] = {}
        self._retiring: set[int] = set()
        self._closing_outputs: list[SourceOutput] = []  # replaced by a reload, finalising in the background
        self._tracking: dict[str, SourceTracking] = {}  # by source name: ids never reused while the daemon runs
        self.events_out = EventsOut()  # MQTT, webhook
        self._states: dict[str, str] = {}  # source name -> last state told to them
        self._ids = itertools.count()
        self.inference: Inference | None = None
        self.http: HttpServer | None = None
        self.outdir: OutputDir | None = None
        self._outdirs: list[OutputDir] = []  # every directory locked by this run (a reload may move it)
        self.started = False
        self._next_retention = 0.0

    # start-up ------------------------------------------------------------------------------------------
    def open(self, routes: dict | None = None, streams: dict | None = None, access=None, progress=None) -> None:
        """Everything that can fail on user input, in the order a user fixes things. `progress` gets the
        worker's load progress (a TensorRT build). StartCancelled when interrupt() came during the load."""
        s = self.settings
        remove_stale_blocks()
        sources: list[tuple[SourceSettings, VideoSource]] = []
        try:
            for src in s.sources:
                source = make_source(src)
                if not source.live:
                    source.open()  # SourceError for missing, unreadable, not-video files
                sources.append((src, source))
            probed = dict(self._probe_live([(src, x) for src, x in sources if x.live]))
            sources = [(src, probed.get(src, x)) for src, x in sources]
            opened = [x.info for _, x in sources if x.info is not None]
            source_hw = (max(i.height for i in opened), max(i.width for i in opened)) if opened else (480, 640)
            spec, model = build_worker_spec(s, source_hw)
            self.use_output_dir(s)
            if s.metrics.enabled:
                self.http = HttpServer(s.metrics.host, s.metrics.port, self.metrics.registry, routes, streams,
                                       access)
            self.inference = Inference(spec, lambda: self.settings, self._cond, lambda: self.readers,
                                       self._deliver, self.metrics, self._abort)
            self.inference.progress = progress
            info = self.inference.start_worker(cancel=self._interrupted)
        except BaseException:
            for _, source in sources:
                source.close()
            if self.http is not None:
                self.http.stop()
            for d in self._outdirs:
                d.close()
            raise
        self.metrics.set_engine(model.name, info["backend"], info["precision"], info["device"])
        self.events_out = EventsOut(
            MqttPublisher(s.mqtt, self.metrics, spec.labels, self.stats) if s.mqtt and s.mqtt.enabled else None,
            Webhook(s.webhook, self.metrics) if s.webhook else None)
        for src, source in sources:
            self._add(src, source)

    def use_output_dir(self, settings: Settings) -> None:
        """Lock the configured output directory (UserError when another perceptd holds it), finalise what a
        killed run left there, and check the video codec, before any source writes to it."""
        path = Path(settings.sinks.output_dir).expanduser()
        if self.outdir is not None and self.outdir.path == path:
            return
        outdir = OutputDir(path)
        outdir.open()
        try:
            self.check_video_codec(settings, outdir.path)
        except BaseException:
            outdir.close()
            raise
        self.outdir = outdir
        self._outdirs.append(outdir)

    def check_video_codec(self, settings: Settings, directory: Path | None = None) -> None:
        """Choose the video encoder now (UserError when the codec cannot be written here), so that the start or
        a reload fails, not the first frame; in perceptd_info."""
        encoder = video_encoder(settings.sinks.video, directory or self.outdir.path)
        self.metrics.set_recording(encoder.codec if encoder else "", encoder.name if encoder else "")

    def _probe_live(self, sources: list[tuple[SourceSettings, VideoSource]]) -> list[tuple[SourceSettings, VideoSource]]:
        """Open live sources once, in parallel, so their resolution is known; those that fail are retried
        by their readers (a camera that is down at boot is not a configuration error). An open that does
        not return within the source's bounds (a wedged driver) is left behind, like a stuck read, and
        the reader starts with a fresh capture. Returns the sources to run."""
        results: dict[int, BaseException | None] = {}
        threads = []
        for i, (src, source) in enumerate(sources):
            def attempt(i=i, source=source) -> None:
                try:
                    source.open()
                    results[i] = None
                except SourceError as exc:
                    results[i] = exc
            t = threading.Thread(target=attempt, name=f"probe-{src.name}", daemon=True)
            t.start()
            threads.append(t)
        out = []
        for i, ((src, source), t) in enumerate(zip(sources, threads)):
            t.join(max(0.0, src.open_timeout_s + src.stall_timeout_s + STALL_GRACE_S))  # in parallel: bounded once
            exc = results.get(i)
            if isinstance(exc, SourceUnsupported):
                raise exc  # exit 2: this installation can never open it
            if t.is_alive():
                log.error("source '%s': opening %s did not return; left it blocked and retrying with a new capture",
                          src.name, source.shown_uri)
                source = make_source(src)
            elif exc is not None:
                log.warning("%s; will keep retrying", exc)
            out.append((src, source))
        return out

    def _add(self, src: SourceSettings, source: VideoSource) -> int:
        sid = next(self._ids)
        self.metrics.add_source(src.name)
        reader = SourceReader(sid, src, source, self.metrics, self._cond, reopen=lambda: make_source(src))
        reader.configure(self.settings)
        self._check_scene_labels(src)
        output = self._output_for(src.name, source, reader)
        with self._cond:
            self.readers[sid] = reader
            self.outputs[sid] = output
        if self.started:
            output.start()
            reader.start()
        return sid

    def _output_for(self, name: str, source: VideoSource, reader: SourceReader,
                    after: SourceOutput | None = None) -> SourceOutput:
        s = self.settings
        w = s.web
        preview = (Preview(w.preview_fps, w.jpeg_quality, w.max_width, self.metrics.preview_viewers.labels(name),
                           self.metrics.preview_frames.labels(name)) if w.enabled and s.metrics.enabled else None)
        # Its files get names no earlier output has (a source restarted by a reload gets new ones too).
        return SourceOutput(name, s.sinks, self.outdir, lambda: source.info.fps if source.info else 0.0,
                            self.metrics, reader.release, preview, self._tracking_for(reader.settings), after,
                            self.events_out, reader.live)

    def _tracking_for(self, src: SourceSettings) -> SourceTracking | None:
        """The source's tracking, kept by name across outputs and restarts; None where there is none to do
        (tracking off, or a classifier: its one box is the whole image)."""
        family = self.worker.info.get("family") if self.worker is not None else None
        if not self.settings.tracking.enabled or family == "classifier":
            return None
        tracking = self._tracking.get(src.name)
        if tracking is None:
            tracking = self._tracking[src.name] = SourceTracking(src.name, self.settings.tracking, src, self.metrics)
        else:
            tracking.configure(self.settings.tracking, src)
        return tracking

    def _check_scene_labels(self, src: SourceSettings) -> None:
        """A zone or line filter naming a label the model never reports would never count anything."""
        known = set(self.inference.spec.labels) if self.inference is not None else set()
        for item in (*src.zones, *src.lines):
            unknown = sorted(set(item.labels) - known)
            if known and unknown:
                log.warning("source '%s': %s '%s' counts %s, which %s never reports; its labels: %s", src.name,
                            "zone" if item in src.zones else "line", item.name, ", ".join(unknown),
                            self.inference.spec.model_name, ", ".join(sorted(known))[:300])

    def start(self) -> None:
        if self.http is not None:
            self.http.start()
        self.events_out.start()
        self.started = True
        for sid in list(self.readers):
            self.outputs[sid].start()
            self.readers[sid].start()
        self.inference.start()

    # running -------------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """SIGINT/SIGTERM: stop as request_stop does, cancel a worker start, and do not linger afterwards."""
        self._interrupted.set()
        self.request_stop()

    def request_stop(self) -> None:
        """Stop reading; frames already decoded are still processed and written."""
        self._stop.set()
        for reader in list(self.readers.values()):
            reader.stop()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def worker(self) -> WorkerClient | None:
        return self.inference.worker if self.inference is not None else None

    @property
    def last_result_ns(self) -> int:
        return self.inference.last_result_ns if self.inference is not None else time.monotonic_ns()

    def pending(self) -> int:
        """Frames decoded and not yet back from the worker."""
        with self._cond:
            queued = sum(len(r.queue) for r in self.readers.values())
        return queued + (self.inference.pending() if self.inference is not None else 0)

    def done(self) -> bool:
        if self._abort.is_set():
            return True
        with self._cond:
            finished = all(r.finished.is_set() and len(r.queue) == 0 for r in self.readers.values())
        return finished and self.inference.pending() == 0

    def step(self) -> None:
        """Housekeeping, called about ten times a second by whoever runs the pipeline."""
        now = time.monotonic()
        for reader in list(self.readers.values()):
            self.metrics.queue_depth.labels(reader.name).set(len(reader.queue))
            reader.check_stall()
            if self._states.get(reader.name) != reader.state and reader.state in ("up", "down"):
                self._states[reader.name] = reader.state
                self.events_out.source_state(reader.name, reader.state == "up")
        self._reap()
        sinks = self.settings.sinks
        if now >= self._next_retention:
            self._next_retention = now + RETENTION_EVERY_S
            try:
                retention.enforce(self.outdir.path, sinks.retention_days, sinks.max_disk_gb, sinks.min_free_percent)
            except OSError as exc:  # a vanished or unreadable directory: the sinks report it themselves
                log.warning("retention: %s", exc)

    def run(self, progress: Progress | None = None, drain_timeout_s: float | None = None, tick=None) -> None:
        """Block until every source has ended (or stop was requested) and everything is written. Frames
        still in flight `drain_timeout_s` after a stop (default: service.shutdown_grace_s) are dropped."""
        drain_deadline = None
        while not self.done():
            if self._stop.is_set() and drain_deadline is None:
                grace = self.settings.service.shutdown_grace_s if drain_timeout_s is None else drain_timeout_s
                drain_deadline = time.monotonic() + grace
                drain_timeout_s = grace
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                log.warning("frames still in flight after %.0f s; dropping them", drain_timeout_s)
                break
            self.step()
            if progress is not None:
                progress.update(self)
            if tick is not None:
                tick()
            time.sleep(0.1)
        if progress is not None:
            progress.finish(self)

    def health(self, period_s: float) -> str | None:
        """None while the daemon moves frames or recovers by itself; else why it cannot (so that systemd's
        watchdog, no longer pinged, restarts it)."""
        if self.inference is not None:
            why = self.inference.health(period_s)
            if why:
                return why
        limit = self.settings.pipeline.max_stuck_reads
        for reader in list(self.readers.values()):
            if reader.stuck_reads > limit:
                return (f"source '{reader.name}' has {reader.stuck_reads} reads stuck in its driver "
                        f"(more than pipeline.max_stuck_reads: {limit})")
        return None

    def preview(self, name: str) -> Preview | None:
        """The live view's frames of the running source called `name` (the newest, after a reload)."""
        for sid, reader in sorted(self.readers.items(), reverse=True):
            if reader.name == name and sid not in self._retiring:
                return self.outputs[sid].preview
        return None

    def status(self) -> dict:
        """Per-source state for /readyz and systemd's STATUS= line."""
        out = {}
        for sid, reader in list(self.readers.items()):
            output = self.outputs.get(sid)
            if output is None:
                continue
            fps, latency = output.stats()
            out[reader.name] = {"state": reader.state, "fps": round(fps, 1), "latency_ms": round(latency, 1),
                                "frames": output.processed, "reconnects": reader.reconnects,
                                "stuck_reads": reader.stuck_reads, "paused": output.paused()}
        return out

    def stats(self) -> dict:
        """Per-source rates and latency for MQTT's periodic stats message."""
        out = {}
        for sid, reader in list(self.readers.items()):
            output = self.outputs.get(sid)
            if output is None:
                continue
            fps, _ = output.stats()
            p50, p99 = output.latency_percentiles()
            dropped = sum(self.metrics.registry.get_sample_value(
                "perceptd_frames_dropped_total", {"source": reader.name, "reason": r}) or 0 for r in DROP_REASONS)
            out[reader.name] = {"state": reader.state, "fps": round(fps, 2), "latency_p50_ms": p50,
                                "latency_p99_ms": p99, "dropped": int(dropped), "frames": output.processed}
        return {"time": time.time(), "sources": out}

    @property
    def ready(self) -> bool:
        return (self.started and self.inference is not None and self.inference.ready
                and self.inference.worker.alive())

    # reconfiguration -----------------------------------------------------------------------------------
    def retire(self, sid: int) -> None:
        """Stop a source; its queued frames are still processed, then its outputs are finalised."""
        with self._cond:
            reader = self.readers.get(sid)
            if reader is None:
                return
            self._retiring.add(sid)
        reader.stop()

    def _reap(self) -> None:
        for sid in list(self._retiring):
            reader = self.readers[sid]
            with self._cond:
                busy = not reader.finished.is_set() or len(reader.queue) or self.inference.inflight_of(sid)
                if busy:
                    continue
                self._retiring.discard(sid)
                output = self.outputs.pop(sid)
                del self.readers[sid]
            output.close()
            reader.close()
            if not any(r.name == reader.name for r in self.readers.values()):
                log.info("%s", self.metrics.accounting(reader.name))
                self.metrics.remove_source(reader.name)  # gone for good, not 'down'
            log.info("source '%s' retired", reader.name)
        for output in [o for o in self._closing_outputs if o.closed]:
            self._closing_outputs.remove(output)

    def add_source(self, src: SourceSettings) -> None:
        """A source added by a reload. Files must open (SourceError otherwise); live ones are opened by their
        reader, with its retries and stall bounds (the main loop must never wait on a camera)."""
        source = make_source(src)
        if not source.live:
            source.open()
        self._add(src, source)

    @property
    def retiring(self) -> set[int]:
        return set(self._retiring)

    def reconfigure_readers(self) -> None:
        """A reload changed the flow settings: queues, pools and reconnection follow, sources keep running."""
        for reader in list(self.readers.values()):
            reader.configure(self.settings)

    def replace_outputs(self) -> None:
        """A reload changed the sinks, the tracking or a source's zones: every source gets new outputs (new
        files, the new settings) between two frames; the old ones finalise what they have, and hand their
        tracks over. The sources keep running."""
        for sid, reader in list(self.readers.items()):
            if sid in self._retiring:
                continue
            with self._cond:  # swapped before the new one starts: no frame can reach the old one after
                old = self.outputs[sid]
                new = self.outputs[sid] = self._output_for(reader.name, reader.source, reader, after=old)
            new.start()
            self._closing_outputs.append(old)
            threading.Thread(target=old.close, args=(False,), name=f"close-{reader.name}", daemon=True).start()

    def reconfigure_source(self, sid: int, src: SourceSettings) -> None:
        """A reload changed only a source's zones, lines or detection rate: applied without reopening it."""
        reader = self.readers[sid]
        reader.settings = src
        self._check_scene_labels(src)

    def set_params(self, settings: Settings) -> None:
        """New thresholds/filters for the running worker (no restart)."""
        self.inference.set_params(adapter_params(settings, self.worker.info.get("family", "auto")))

    def worker_spec(self, settings: Settings) -> WorkerSpec:
        """The worker a reload's model and engine settings need; UserError when the model cannot be resolved."""
        infos = [r.source.info for r in self.readers.values() if r.source.info is not None]
        hw = (max(i.height for i in infos), max(i.width for i in infos)) if infos else (480, 640)
        return build_worker_spec(settings, hw)[0]

    # shutdown ------------------------------------------------------------------------------------------
    def close(self, linger_s: float = 0.0) -> None:
        """Stop everything, finalise every output, free shared memory. Safe to call more than once."""
        self.request_stop()
        readers = list(self.readers.values())
        deadline = time.monotonic() + max((r.settings.open_timeout_s for r in readers), default=0) + 1
        for reader in readers:
            reader.join(max(0.1, deadline - time.monotonic()))
        self._abort.set()
        with self._cond:
            self._cond.notify_all()
        if self.inference is not None:
            self.inference.join(5)
            self.inference.stop()  # the worker first: only then are the slots it could read given back
        with self._cond:
            leftovers = [(reader, frame) for reader in readers for frame in reader.queue.drain()]
        for reader in readers:
            self.metrics.queue_depth.labels(reader.name).set(0)
        for reader, frame in leftovers:
            self.metrics.frames_dropped.labels(reader.name, "shutdown").inc()
            reader.release(frame)
        for out in [*self.outputs.values(), *self._closing_outputs]:
            out.close()
        for reader in readers:
            reader.close()
        for name in dict.fromkeys(r.name for r in readers):
            line = self.metrics.accounting(name)
            (log.warning if " != " in line else log.info)("%s", line)
        for reader in readers:
            self.events_out.source_state(reader.name, False)
        self.events_out.stop()  # after the outputs: their last events (tracks ending) go out too
        for d in self._outdirs:
            d.close()
        if self.http is not None:
            if linger_s > 0 and not self._interrupted.is_set():
                log.info("serving metrics for %.0f s more (metrics.linger_s)", linger_s)
                self._interrupted.wait(linger_s)
            self.http.stop()
            self.http = None

    # results -------------------------------------------------------------------------------------------
    def _deliver(self, reader: SourceReader, frame: Frame, result: WorkResult) -> None:
        """The collector's hand-off: to the source's current outputs (in frame order)."""
        with self._cond:  # under the lock: an output being replaced gets nothing after the swap
            output = self.outputs.get(reader.id)
            if output is not None:
                output.put(frame, result)
                return
        # Its source was removed meanwhile: still counted.
        self.metrics.frames_dropped.labels(reader.name, "retired").inc()
        reader.release(frame)
