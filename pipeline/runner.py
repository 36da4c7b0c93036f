"""Wires sources -> dispatcher -> inference worker -> result reader -> per-source sinks, and runs them.

Start-up validates everything a user can get wrong (config, sources, model, output directory, port)
before any output file is opened, so a bad start never touches earlier outputs.
"""

from __future__ import annotations

import logging
import threading
import time

from engines.adapters import AdapterParams, read_labels
from engines.base import EngineOptions
from engines.zoo import resolve_model
from pipeline.capture import SourceReader
from pipeline.errors import UserError
from pipeline.frame import Frame, WorkItem
from pipeline.http import HttpServer
from pipeline.metrics import Metrics
from pipeline.progress import Progress
from pipeline.settings import Settings
from pipeline.sinks import SourceOutput
from pipeline.sinks.files import check_output_dir
from pipeline.sources import make_source
from pipeline.supervisor import WorkerClient, WorkerDied
from pipeline.worker import WorkerSpec

log = logging.getLogger(__name__)

FAMILY_CONFIDENCE = {"retinaface": 0.8, "yolo": 0.25, "classifier": 0.0, "auto": 0.25}
RESTART_BACKOFF_MAX_S = 30.0


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._cond = threading.Condition()  # guards queues, in-flight map, worker readiness
        self._inflight: dict[tuple[int, int], Frame] = {}
        self._stop = threading.Event()  # stop reading; drain what is in flight
        self._abort = threading.Event()  # stop everything now
        self._interrupted = threading.Event()  # a signal arrived: also cuts metrics.linger_s short
        self._worker_ready = False
        self.readers: list[SourceReader] = []
        self.outputs: list[SourceOutput] = []
        self.worker: WorkerClient | None = None
        self.http: HttpServer | None = None
        self.failure: BaseException | None = None
        p = settings.engine.max_batch
        self._inflight_limit = 2 * p  # one batch running, one ready to go
        self._threads: list[threading.Thread] = []

    # start-up ------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Everything that can fail on user input, in the order a user fixes things."""
        s = self.settings
        sources = []
        try:
            for src in s.sources:
                source = make_source(src)
                source.open()  # raises SourceError for missing, unreadable, not-video inputs
                sources.append((src, source))
            m = s.model
            model = resolve_model(m.name, m.family, m.labels, m.input_size, s.engine.cache_dir, read_labels)
            out_dir = check_output_dir(s.sinks.output_dir)
            if s.metrics.enabled:
                self.http = HttpServer(s.metrics.host, s.metrics.port, self.metrics.registry)
            confidence = m.confidence if m.confidence is not None else FAMILY_CONFIDENCE[model.family]
            spec = WorkerSpec(
                model_name=model.name, model_path=str(model.path), family=model.family, labels=model.labels,
                input_size=model.input_size,
                params=AdapterParams(confidence, m.iou, m.max_detections, m.top_k, tuple(m.classes)),
                backend=s.engine.backend,
                options=EngineOptions(s.engine.max_batch, s.engine.threads, s.engine.precision),
                batch_timeout_s=s.pipeline.batch_timeout_ms / 1000.0,
                log_level=logging.getLogger().getEffectiveLevel(),
                source_hw=(max(x.info.height for _, x in sources), max(x.info.width for _, x in sources)))
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
        slots = s.pipeline.queue_size + self._inflight_limit + 4
        for i, (src, source) in enumerate(sources):
            self.metrics.add_source(src.name)
            reader = SourceReader(i, src, source, slots, s.pipeline.queue_size, s.pipeline.drop_policy,
                                  self.metrics, self._cond)
            self.readers.append(reader)
            self.outputs.append(SourceOutput(src.name, s.sinks, out_dir, source.info.fps, self.metrics,
                                             reader.release))

    def start(self) -> None:
        if self.http is not None:
            self.http.start()
        for out in self.outputs:
            out.start()
        for reader in self.readers:
            reader.start()
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
        for reader in self.readers:
            reader.stop()

    def done(self) -> bool:
        if self.failure is not None or self._abort.is_set():
            return True
        with self._cond:
            return (all(r.finished.is_set() for r in self.readers) and not self._inflight
                    and all(len(r.queue) == 0 for r in self.readers))

    def run(self, progress: Progress | None = None, drain_timeout_s: float = 10.0) -> None:
        """Block until every source has ended (or stop was requested) and everything is written."""
        drain_deadline = None
        while not self.done():
            if self._stop.is_set() and drain_deadline is None:
                drain_deadline = time.monotonic() + drain_timeout_s
            if drain_deadline is not None and time.monotonic() > drain_deadline:
                log.warning("frames still in flight after %.0f s; dropping them", drain_timeout_s)
                break
            for reader in self.readers:
                self.metrics.queue_depth.labels(reader.name).set(len(reader.queue))
            if progress is not None:
                progress.update(self)
            time.sleep(0.1)
        if progress is not None:
            progress.finish(self)

    def close(self, linger_s: float = 0.0) -> None:
        """Stop everything, finalise every output, free shared memory. Safe to call more than once."""
        self.request_stop()
        deadline = time.monotonic() + max((r.settings.open_timeout_s for r in self.readers), default=0) + 1
        for reader in self.readers:
            reader.join(max(0.1, deadline - time.monotonic()))
        self._abort.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)
        with self._cond:
            leftovers = list(self._inflight.values())
            self._inflight.clear()
            for reader in self.readers:
                leftovers.extend(reader.queue.drain())
        for frame in leftovers:
            reader = next(r for r in self.readers if r.name == frame.source)
            self.metrics.frames_dropped.labels(frame.source, "shutdown").inc()
            reader.release(frame)
        if self.worker is not None:
            self.worker.stop()
            self.metrics.worker_up.set(0)
        for out in self.outputs:
            out.close()
        for reader in self.readers:
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
        n = len(self.readers)
        while not self._abort.is_set():
            batch: list[tuple[int, Frame]] = []
            with self._cond:
                while not self._abort.is_set():
                    room = self._inflight_limit - len(self._inflight)
                    if self._worker_ready and room > 0 and any(len(r.queue) for r in self.readers):
                        break
                    self._cond.wait(0.5)
                if self._abort.is_set():
                    return
                room = self._inflight_limit - len(self._inflight)
                while room > 0:
                    took = False
                    for k in range(n):
                        sid = (turn + k) % n
                        frame = self.readers[sid].queue.pop()
                        if frame is not None:
                            batch.append((sid, frame))
                            self._inflight[(sid, frame.index)] = frame
                            room -= 1
                            took = True
                            if room == 0:
                                break
                    if not took:
                        break
                turn = (turn + 1) % n
                self._cond.notify_all()  # blocked file readers: there is queue space now
                worker = self.worker
            now = time.monotonic_ns()
            try:
                for sid, f in batch:
                    worker.submit(WorkItem(sid, f.index, f.pool, f.slot, self.readers[sid].pool_offset(f),
                                           f.height, f.width, f.t_capture_ns, now))
            except (ValueError, OSError):
                pass  # the worker died meanwhile: _restart counts these frames as lost

    def _collect(self) -> None:
        """Hand the worker's results to the sinks in order; restart the worker when it dies."""
        backoff = self.settings.pipeline.restart_backoff_s
        while not self._abort.is_set():
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
                self.metrics.batch_size.observe(results[0].batch_size)
            for r in results:
                with self._cond:
                    frame = self._inflight.pop((r.source_id, r.index), None)
                    self._cond.notify_all()
                if frame is not None:
                    self.outputs[r.source_id].put(frame, r)
            for out in self.outputs:
                if out.error is not None and self.failure is None:
                    self.failure = out.error

    def _restart(self, why: str, delay: float) -> None:
        with self._cond:
            self._worker_ready = False
            lost = list(self._inflight.values())
            self._inflight.clear()
            self._cond.notify_all()
        log.error("%s; %d frame(s) in flight lost; restarting it in %.1f s", why, len(lost), delay)
        self.metrics.worker_restarts.inc()
        self.metrics.worker_up.set(0)
        for frame in lost:
            self.metrics.frames_dropped.labels(frame.source, "worker_restart").inc()
            next(r for r in self.readers if r.name == frame.source).release(frame)
        self.worker.kill()
        if self._abort.wait(delay):
            return
        while not self._abort.is_set():
            try:
                self.worker.start(self.settings.pipeline.worker_start_timeout_s)
                break
            except (WorkerDied, RuntimeError, UserError) as exc:
                log.error("restarting the worker failed: %s; trying again in %.0f s", exc, RESTART_BACKOFF_MAX_S)
                if self._abort.wait(RESTART_BACKOFF_MAX_S):
                    return
        self.metrics.worker_up.set(1)
        with self._cond:
            self._worker_ready = True
            self._cond.notify_all()
        log.info("worker restarted (pid %s)", self.worker.pid)
