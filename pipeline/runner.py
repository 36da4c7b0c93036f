"""Wires sources -> dispatcher -> inference worker -> result reader -> per-source sinks, and runs them.

Start-up validates everything a user can get wrong (config, files, model, output directory, port) before
any output file is opened, so a bad start never touches earlier outputs. Live sources that are down at
start are retried by their readers. Sources can be added and retired while running (reload).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from pipeline.capture import Backoff, SourceReader
from pipeline.errors import SourceError, SourceUnsupported, UserError
from pipeline.frame import Frame, WorkItem
from pipeline.http import HttpServer
from pipeline.metrics import Metrics
from pipeline.progress import Progress
from pipeline.settings import Settings, SourceSettings
from pipeline.sinks import SourceOutput, retention
from pipeline.sinks.preview import Preview
from pipeline.sinks.files import check_output_dir
from pipeline.sources import VideoSource, make_source
from pipeline.spec import adapter_params, build_worker_spec
from pipeline.supervisor import WorkerClient, WorkerDied

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 30.0
RETENTION_EVERY_S = 60.0


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()  # guards queues, in-flight map, source maps, worker readiness
        self._inflight: dict[tuple[int, int], Frame] = {}
        self._stop = threading.Event()  # stop reading; drain what is in flight
        self._abort = threading.Event()  # stop everything now
        self._interrupted = threading.Event()  # a signal arrived: also cuts metrics.linger_s short
        self._worker_ready = False
        self._pending_spec = None  # a reload's new worker, swapped in by the collect thread
        self.readers: dict[int, SourceReader] = {}
        self.outputs: dict[int, SourceOutput] = {}
        self._retiring: set[int] = set()
        self._ids = itertools.count()
        self._stems: dict[str, int] = {}  # output files written per source name in this run
        self.worker: WorkerClient | None = None
        self.http: HttpServer | None = None
        self.out_dir: Path | None = None
        self.failure: BaseException | None = None
        self.started = False
        self.last_result_ns = time.monotonic_ns()
        self._inflight_limit = 2 * settings.engine.max_batch  # one batch running, one ready to go
        self._per_source: dict[int, int] = {}  # frames in flight by source id
        self._live_inflight = settings.pipeline.live_inflight
        self._threads: list[threading.Thread] = []
        self._next_retention = 0.0

    # start-up ------------------------------------------------------------------------------------------
    def open(self, routes: dict | None = None, streams: dict | None = None, access=None) -> None:
        """Everything that can fail on user input, in the order a user fixes things."""
        s = self.settings
        sources: list[tuple[SourceSettings, VideoSource]] = []
        try:
            for src in s.sources:
                source = make_source(src)
                if not source.live:
                    source.open()  # SourceError for missing, unreadable, not-video files
                sources.append((src, source))
            self._probe_live([x for _, x in sources if x.live])
            opened = [x.info for _, x in sources if x.info is not None]
            source_hw = (max(i.height for i in opened), max(i.width for i in opened)) if opened else (480, 640)
            spec, model = build_worker_spec(s, source_hw)
            self.out_dir = check_output_dir(s.sinks.output_dir)
            if s.metrics.enabled:
                self.http = HttpServer(s.metrics.host, s.metrics.port, self.metrics.registry, routes, streams,
                                       access)
            self.worker = WorkerClient(spec)
            info = self.worker.start(s.pipeline.worker_start_timeout_s)
        except BaseException:
            for _, source in sources:
                source.close()
            if self.http is not None:
                self.http.stop()
            raise
        self.metrics.set_engine(model.name, info["backend"], info["precision"], info["device"])
        self._worker_ready = True
        for src, source in sources:
            self._add(src, source)

    @staticmethod
    def _probe_live(sources: list[VideoSource]) -> None:
        """Open live sources once, in parallel, so their resolution is known; those that fail are
        retried by their readers (a camera that is down at boot is not a configuration error)."""
        def attempt(source: VideoSource) -> None:
            try:
                source.open()
            except SourceUnsupported:
                raise
            except SourceError as exc:
                log.warning("%s; will keep retrying", exc)

        if sources:
            with ThreadPoolExecutor(max_workers=min(8, len(sources))) as pool:
                list(pool.map(attempt, sources))  # re-raises SourceUnsupported: exit 2

    def _add(self, src: SourceSettings, source: VideoSource) -> int:
        s = self.settings
        sid = next(self._ids)
        self.metrics.add_source(src.name)
        p = s.pipeline
        reader = SourceReader(sid, src, source, p.queue_size + self._inflight_limit + 4, p.queue_size,
                              p.drop_policy, self.metrics, self._cond,
                              Backoff(p.reconnect_initial_s, p.reconnect_max_s, p.reconnect_max_attempts))
        # A source restarted by a reload gets new files: an output written earlier in this run is kept.
        n = self._stems.get(src.name, 0)
        self._stems[src.name] = n + 1
        stem = src.name if n == 0 else f"{src.name}-{datetime.now():%Y%m%d-%H%M%S}"
        w = s.web
        preview = (Preview(w.preview_fps, w.jpeg_quality, w.max_width, self.metrics.preview_viewers.labels(src.name),
                           self.metrics.preview_frames.labels(src.name)) if w.enabled and s.metrics.enabled else None)
        output = SourceOutput(src.name, s.sinks, self.out_dir, lambda: source.info.fps if source.info else 0.0,
                              self.metrics, reader.release, stem, preview)
        with self._cond:
            self.readers[sid] = reader
            self.outputs[sid] = output
        if self.started:
            output.start()
            reader.start()
        return sid

    def start(self) -> None:
        if self.http is not None:
            self.http.start()
        self.started = True
        for sid in list(self.readers):
            self.outputs[sid].start()
            self.readers[sid].start()
        for target, name in ((self._dispatch, "dispatch"), (self._collect, "collect")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    # running -------------------------------------------------------------------------------------------
    def interrupt(self) -> None:
        """SIGINT/SIGTERM: stop as request_stop does, and do not linger afterwards."""
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

    def pending(self) -> int:
        """Frames decoded and not yet back from the worker."""
        with self._cond:
            return len(self._inflight) + sum(len(r.queue) for r in self.readers.values())

    def done(self) -> bool:
        if self.failure is not None or self._abort.is_set():
            return True
        with self._cond:
            return (all(r.finished.is_set() for r in self.readers.values()) and not self._inflight
                    and all(len(r.queue) == 0 for r in self.readers.values()))

    def step(self) -> None:
        """Housekeeping, called about ten times a second by whoever runs the pipeline."""
        for reader in list(self.readers.values()):
            self.metrics.queue_depth.labels(reader.name).set(len(reader.queue))
        self._reap()
        sinks = self.settings.sinks
        if (sinks.retention_days or sinks.max_disk_gb) and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_EVERY_S
            retention.enforce(self.out_dir, sinks.retention_days, sinks.max_disk_gb)

    def run(self, progress: Progress | None = None, drain_timeout_s: float = 10.0, tick=None) -> None:
        """Block until every source has ended (or stop was requested) and everything is written."""
        drain_deadline = None
        while not self.done():
            if self._stop.is_set() and drain_deadline is None:
                drain_deadline = time.monotonic() + drain_timeout_s
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
            fps, latency = self.outputs[sid].stats()
            out[reader.name] = {"state": reader.state, "fps": round(fps, 1), "latency_ms": round(latency, 1),
                                "frames": self.outputs[sid].processed, "reconnects": reader.reconnects}
        return out

    @property
    def ready(self) -> bool:
        return self.started and self._worker_ready and self.worker is not None and self.worker.alive()

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
                busy = (not reader.finished.is_set() or len(reader.queue)
                        or any(k[0] == sid for k in self._inflight))
                if busy:
                    continue
                self._retiring.discard(sid)
                output = self.outputs.pop(sid)
                del self.readers[sid]
            output.close()
            reader.close()
            log.info("source '%s' retired", reader.name)

    def add_source(self, src: SourceSettings) -> None:
        """A source added by a reload. Files must open (SourceError otherwise); live ones may retry."""
        source = make_source(src)
        if not source.live:
            source.open()
        else:
            self._probe_live([source])
        self._add(src, source)

    def set_params(self, settings: Settings) -> None:
        """New thresholds/filters for the running worker (no restart)."""
        params = adapter_params(settings, self.worker.info.get("family", "auto"))
        self.worker.spec = dataclasses.replace(self.worker.spec, params=params)
        self.worker.send_params(params)

    def replace_worker(self, settings: Settings) -> None:
        """A reload changed the model or engine: the collect thread swaps workers between batches.
        Raises UserError now (and changes nothing) when the new model cannot be resolved."""
        infos = [r.source.info for r in self.readers.values() if r.source.info is not None]
        hw = (max(i.height for i in infos), max(i.width for i in infos)) if infos else (480, 640)
        spec, _ = build_worker_spec(settings, hw)
        with self._cond:
            self._worker_ready = False  # the dispatcher pauses; in-flight frames finish on the old worker
            self._pending_spec = spec
            self._cond.notify_all()

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
        for t in self._threads:
            t.join(5)
        with self._cond:
            leftovers = self._clear_inflight()
            for reader in readers:
                leftovers.extend((reader, frame) for frame in reader.queue.drain())
        for reader in readers:
            self.metrics.queue_depth.labels(reader.name).set(0)
        self._drop(leftovers, "shutdown")
        if self.worker is not None:
            self.worker.stop()
            self.metrics.worker_up.set(0)
        for out in list(self.outputs.values()):
            out.close()
        for reader in readers:
            reader.close()
        if self.http is not None:
            if linger_s > 0 and not self._interrupted.is_set():
                log.info("serving metrics for %.0f s more (metrics.linger_s)", linger_s)
                self._interrupted.wait(linger_s)
            self.http.stop()
            self.http = None

    # threads -------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Move frames from the source queues to the worker, round-robin, within the in-flight limit."""
        turn = 0
        while not self._abort.is_set():
            batch: list[tuple[SourceReader, Frame]] = []
            with self._cond:
                while not self._abort.is_set():
                    room = self._inflight_limit - len(self._inflight)
                    if self._worker_ready and room > 0 and any(len(r.queue) and self._may_send(r)
                                                               for r in self.readers.values()):
                        break
                    self._cond.wait(0.5)
                if self._abort.is_set():
                    return
                readers = list(self.readers.values())
                n = len(readers)
                room = self._inflight_limit - len(self._inflight)
                while room > 0:
                    took = False
                    for k in range(n):
                        reader = readers[(turn + k) % n]
                        if reader.live and self._per_source.get(reader.id, 0) >= self._live_inflight:
                            continue  # its next frame goes when this one is back: the newest then
                        frame = reader.queue.pop()
                        if frame is not None:
                            batch.append((reader, frame))
                            self._inflight[(reader.id, frame.index)] = frame
                            self._per_source[reader.id] = self._per_source.get(reader.id, 0) + 1
                            room -= 1
                            took = True
                            if room == 0:
                                break
                    if not took:
                        break
                turn = (turn + 1) % max(n, 1)
                self._cond.notify_all()  # blocked file readers: there is queue space now
                worker = self.worker
            try:
                worker.submit([WorkItem(reader.id, f.index, f.pool, f.slot, reader.pool_offset(f), f.height,
                                        f.width, f.t_capture_ns) for reader, f in batch])
            except (ValueError, OSError):
                pass  # the worker died meanwhile: _restart counts these frames as lost

    def _may_send(self, reader: SourceReader) -> bool:
        return not reader.live or self._per_source.get(reader.id, 0) < self._live_inflight

    def _took_back(self, key: tuple[int, int]) -> Frame | None:
        """Remove a frame from the in-flight books (caller holds the condition)."""
        frame = self._inflight.pop(key, None)
        if frame is not None:
            self._per_source[key[0]] -= 1
        return frame

    def _clear_inflight(self) -> list[tuple[SourceReader, Frame]]:
        """Empty the in-flight books, returning each frame with its reader (caller holds the condition).
        By source id, not name: after a reload a retiring and a new source may share a name."""
        taken = [(self.readers[sid], frame) for (sid, _), frame in self._inflight.items()]
        self._inflight.clear()
        self._per_source.clear()
        return taken

    def _drop(self, frames: list[tuple[SourceReader, Frame]], reason: str) -> None:
        for reader, frame in frames:
            self.metrics.frames_dropped.labels(reader.name, reason).inc()
            reader.release(frame)

    def _collect(self) -> None:
        """Hand the worker's results to the sinks in order; restart the worker when it dies."""
        backoff = self.settings.pipeline.restart_backoff_s
        while not self._abort.is_set():
            if self._pending_spec is not None and not self._inflight:
                self._swap_worker()
            try:
                results = self.worker.results(timeout=0.2)
            except WorkerDied as exc:
                if self._abort.is_set():
                    return
                self._restart(str(exc), backoff)
                backoff = min(max(backoff, 0.5) * 2, RESTART_BACKOFF_MAX_S)
                continue
            if results:
                backoff = self.settings.pipeline.restart_backoff_s
                self.last_result_ns = time.monotonic_ns()
                self.metrics.batch_size.observe(results[0].batch_size)
            for r in results:
                with self._cond:
                    frame = self._took_back((r.source_id, r.index))
                    output = self.outputs.get(r.source_id)
                    self._cond.notify_all()
                if frame is not None and output is not None:
                    output.put(frame, r)
            for out in list(self.outputs.values()):
                if out.error is not None and self.failure is None:
                    self.failure = out.error

    def _swap_worker(self) -> None:
        spec, self._pending_spec = self._pending_spec, None
        log.info("reload: starting a new worker for %s", spec.model_name)
        self.worker.stop()
        self.worker.spec = spec
        self._start_worker_until_ready()
        info = self.worker.info
        self.metrics.set_engine(spec.model_name, info["backend"], info["precision"], info["device"])

    def _restart(self, why: str, delay: float) -> None:
        with self._cond:
            self._worker_ready = False
            lost = self._clear_inflight()
            self._cond.notify_all()
        log.error("%s; %d frame(s) in flight lost; restarting it in %.1f s", why, len(lost), delay)
        self.metrics.worker_restarts.inc()
        self.metrics.worker_up.set(0)
        self._drop(lost, "worker_restart")
        self.worker.kill()
        if self._abort.wait(delay):
            return
        self._start_worker_until_ready()
        log.info("worker restarted (pid %s)", self.worker.pid)

    def _start_worker_until_ready(self) -> None:
        while not self._abort.is_set():
            try:
                self.worker.start(self.settings.pipeline.worker_start_timeout_s)
                break
            except (WorkerDied, RuntimeError, UserError) as exc:
                log.error("starting the worker failed: %s; trying again in %.0f s", exc, RESTART_BACKOFF_MAX_S)
                if self._abort.wait(RESTART_BACKOFF_MAX_S):
                    return
        self.metrics.worker_up.set(1)
        with self._cond:
            self._worker_ready = True
            self._cond.notify_all()
