"""The pipeline's inference side: frames in flight to the worker process, and the worker's whole lifecycle.

Two threads. The dispatcher moves frames from the source queues to the worker, round-robin, within the
in-flight limit. The collector hands results back in order, and is the only thread that changes workers:

- a worker that dies is restarted (with backoff); its frames in flight are dropped as `worker_restart`;
- a worker that is alive but answers no batch within the hang bound (a GPU hang, a wedged driver call) is
  killed and restarted; its frames are dropped as `worker_hang`;
- a reload that changes the model or engine prepares a new worker beside the running one (`stage`), which
  keeps serving until the new one is ready; then the dispatcher pauses, the old worker finishes what it has,
  and the new one takes over between batches. A new worker that fails to load changes nothing. Where both
  cannot be in memory at once (`pipeline.reload_strategy: replace`, or the new one ran out of memory beside
  the old), the old one is stopped first and restarted if the new one fails.

A frame's slot goes back to its source only once the worker that could read it has answered or is dead.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections import deque
from typing import Callable

from pipeline.cadence import Cadence, OrderGate, predicted
from pipeline.errors import UserError
from pipeline.frame import Frame, WorkItem
from pipeline.metrics import Metrics
from pipeline.supervisor import StartCancelled, WorkerClient, WorkerDied
from pipeline.worker import WorkerSpec

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 30.0
HANG_FIRST_BATCHES = 20  # the first batches after a start can be slow (kernel selection, lazy loading)
HANG_FIRST_S = 60.0
HANG_MIN_S = 5.0
HANG_FACTOR = 10.0  # times the slowest recent batch
UNRECOVERABLE_STARTS = 3  # consecutive failed worker starts: let systemd try a fresh process
# A new worker that could not load beside the running one for lack of memory is retried in its place.
_OUT_OF_MEMORY = re.compile(r"out of memory|outofmemory|cannot allocate memory|memoryerror|"
                            r"cuda_error_out_of_memory|cudaerrormemoryallocation|exit(ed)? with code -9", re.I)


@dataclasses.dataclass
class _Flight:
    reader: object  # capture.SourceReader
    frame: Frame


class Inference:
    def __init__(self, spec: WorkerSpec, settings, cond: threading.Condition, readers: Callable[[], dict],
                 deliver: Callable, metrics: Metrics, abort: threading.Event):
        """`readers()` gives the running sources by id; `deliver(reader, frame, result)` takes each result;
        `settings()` the current Settings (a reload's limits apply from the next pass)."""
        self.spec = spec  # what the next (re)start runs
        self._settings = settings
        self._cond = cond
        self._readers = readers
        self._deliver = deliver
        self.metrics = metrics
        self._abort = abort
        self.worker = WorkerClient(spec)
        self.ready = False
        self._inflight: dict[tuple[int, int], _Flight] = {}
        self._cadence = Cadence()  # sources[].detect_fps
        self._gate = OrderGate()  # their frames, in order
        self._per_source: dict[int, int] = {}
        self.last_result_ns = time.monotonic_ns()
        self._waiting_since_ns = 0  # first dispatch with nothing in flight: the hang clock's start
        self.beat_ns = time.monotonic_ns()  # the collector's last sign of life
        self._batches = 0  # since the current worker started
        self._batch_ns: deque[int] = deque(maxlen=200)
        self.start_failures = 0  # consecutive
        self.progress: Callable[[str], None] | None = None  # the worker's load progress (TensorRT builds)
        self.on_reload: Callable[[str, str], None] | None = None  # (result, message) once a reload settles:
        # the service counts it (perceptd_reloads_total) and tells systemd
        self.state = "starting"  # starting | ready | restarting | reloading: for STATUS= and /readyz
        self._staged: WorkerClient | None = None  # loaded beside the running worker, waiting to take over
        self._stage_cancel: threading.Event | None = None
        self._replace_spec: WorkerSpec | None = None  # a reload that stops the running worker first
        self._params_since_stage = False  # thresholds reloaded after the newest stage() call
        self._threads: list[threading.Thread] = []

    # lifecycle -------------------------------------------------------------------------------------------
    def start_worker(self, cancel: threading.Event) -> dict:
        """The first worker, before any frame flows (UserError for a bad model: nothing else has started)."""
        info = self.worker.start(self._start_timeout(), cancel=cancel, progress=self._progress, beat=self._beat)
        self._ready()
        return info

    def start(self) -> None:
        for target, name in ((self._dispatch, "dispatch"), (self._collect, "collect")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def join(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def stop(self) -> None:
        """After join(): stop the worker, then return the frames it still had (it can read them no more)."""
        if self._stage_cancel is not None:
            self._stage_cancel.set()
        self.worker.stop()
        self.metrics.worker_up.set(0)
        with self._cond:
            left = self._take_all()
        self._drop(left, "shutdown")

    # what the rest of the pipeline asks ----------------------------------------------------------------
    def pending(self) -> int:
        with self._cond:
            return len(self._inflight)

    def inflight_of(self, sid: int) -> int:
        with self._cond:
            return self._per_source.get(sid, 0)

    def hang_bound_s(self) -> float:
        configured = self._settings().pipeline.hang_timeout_s
        if configured:
            return configured
        if self._batches < HANG_FIRST_BATCHES or not self._batch_ns:
            return HANG_FIRST_S
        return max(HANG_MIN_S, HANG_FACTOR * max(self._batch_ns) / 1e9)

    def health(self, period_s: float) -> str | None:
        """None while inference moves or is recovering by itself; else why it cannot (the watchdog stops)."""
        now = time.monotonic_ns()
        if self.start_failures >= UNRECOVERABLE_STARTS:
            return f"the inference worker failed to start {self.start_failures} times in a row"
        if (now - self.beat_ns) / 1e9 > max(period_s, 5.0):
            return f"the result collector has not run for {(now - self.beat_ns) / 1e9:.0f} s"
        with self._cond:
            waiting = self._waiting_since_ns if self._inflight else 0
        stuck = (now - max(waiting, self.last_result_ns)) / 1e9 if waiting else 0.0
        if stuck > self.hang_bound_s() + max(period_s, 5.0) + 15.0:  # a kill and a restart included
            return f"no result from the worker for {stuck:.0f} s with frames waiting"
        return None

    def set_params(self, params) -> None:
        """New thresholds: the running worker gets them between batches, the next one from its spec, and a
        reload's worker when it takes over (_swap)."""
        self.spec = dataclasses.replace(self.spec, params=params)
        self.worker.spec = self.spec
        self.worker.send_params(params)
        self._params_since_stage = True

    def stage(self, spec: WorkerSpec) -> None:
        """A reload's new model or engine: prepared without stopping the running worker (see module doc).
        A reload that comes while another is loading replaces it."""
        if self._stage_cancel is not None:
            self._stage_cancel.set()
        self._params_since_stage = False  # `spec` carries the newest thresholds
        with self._cond:
            if self._staged is not None:
                self._staged.stop()
                self._staged = None
        if self._settings().pipeline.reload_strategy == "replace":
            with self._cond:
                self._replace_spec = spec
                self._cond.notify_all()
            return
        cancel = self._stage_cancel = threading.Event()
        threading.Thread(target=self._load_beside, args=(spec, cancel), name="reload-worker", daemon=True).start()

    # the dispatcher -------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        turn = 0
        while not self._abort.is_set():
            batch: list[_Flight] = []
            with self._cond:
                while not self._abort.is_set() and not self._may_dispatch():
                    self._cond.wait(0.5)
                if self._abort.is_set():
                    return
                readers = list(self._readers().values())
                n = len(readers)
                limit = self._limit()
                live_limit = self._settings().pipeline.live_inflight
                for reader in readers:
                    if reader.settings.detect_fps:
                        batch.extend(self._pace(reader, limit, live_limit))
                while len(self._inflight) < limit:
                    took = False
                    for k in range(n):
                        reader = readers[(turn + k) % n]
                        if reader.settings.detect_fps:
                            continue  # paced above
                        if reader.live and self._per_source.get(reader.id, 0) >= live_limit:
                            continue  # its next frame goes when this one is back: the newest then
                        frame = reader.queue.pop()
                        if frame is not None:
                            batch.append(self._send(reader, frame))
                            took = True
                            if len(self._inflight) >= limit:
                                break
                    if not took:
                        break
                turn = (turn + 1) % max(n, 1)
                self._cond.notify_all()  # blocked file readers: there is queue space now
                worker = self.worker
            if not batch:
                continue
            try:
                worker.submit([WorkItem(f.reader.id, f.frame.index, f.frame.pool, f.frame.slot,
                                        f.reader.pool_offset(f.frame), f.frame.height, f.frame.width,
                                        f.frame.t_capture_ns) for f in batch])
            except (ValueError, OSError):
                pass  # the worker died meanwhile: the collector counts these frames as lost

    def _send(self, reader, frame: Frame) -> _Flight:
        """Book a frame as in flight (caller holds the condition); the caller submits it."""
        flight = _Flight(reader, frame)
        if not self._inflight:
            self._waiting_since_ns = time.monotonic_ns()
        self._inflight[(reader.id, frame.index)] = flight
        self._per_source[reader.id] = self._per_source.get(reader.id, 0) + 1
        return flight

    def _pace(self, reader, limit: int, live_limit: int) -> list[_Flight]:
        """A source with a detection rate, oldest frame first (caller holds the condition): frames due for
        the model go to the worker, the others straight to the sinks, in order. A live source's due frame
        that finds the worker busy skips too (the next one is due at once); a file's waits for room."""
        sent = []
        while True:
            frame = reader.queue.take_oldest()
            if frame is None:
                return sent
            due = self._cadence.due(reader.id, reader.live, frame, reader.settings.detect_fps)
            room = len(self._inflight) < limit and (not reader.live
                                                    or self._per_source.get(reader.id, 0) < live_limit)
            self._gate.sent(reader.id, frame.index)
            if due and room:
                self._cadence.inferred(reader.id, reader.live, frame)
                sent.append(self._send(reader, frame))
            elif due and not reader.live:
                self._gate.forget(reader.id, frame.index)
                reader.queue.put_back(frame)
                return sent
            else:
                for item in self._gate.done(reader.id, frame.index, (reader, frame, predicted(reader.id, frame))):
                    self._deliver(*item)

    def _limit(self) -> int:
        # One batch running and one ready to go; with engine.instances, one frame per lane of each.
        return 2 * max(self._settings().engine.max_batch, self.worker.info.get("instances", 1))

    def _may_dispatch(self) -> bool:
        """Caller holds the condition."""
        if not self.ready or self._staged is not None or self._replace_spec is not None:
            return False  # no worker, or one is being swapped: the old one finishes what it has first
        live_limit = self._settings().pipeline.live_inflight
        room = len(self._inflight) < self._limit()
        return any(len(r.queue) and (r.settings.detect_fps  # its skipping frames need no room
                                     or (room and (not r.live or self._per_source.get(r.id, 0) < live_limit)))
                   for r in self._readers().values())

    # the collector --------------------------------------------------------------------------------------
    def _collect(self) -> None:
        backoff = self._settings().pipeline.restart_backoff_s
        while not self._abort.is_set():
            self._beat()
            with self._cond:
                swap = (self._staged is not None or self._replace_spec is not None) and not self._inflight
            if swap:
                self._swap()
                continue
            try:
                results = self.worker.results(timeout=0.2)
            except WorkerDied as exc:
                if self._abort.is_set():
                    return
                self._recover(str(exc), "worker_restart", backoff)
                backoff = min(max(backoff, 0.5) * 2, RESTART_BACKOFF_MAX_S)
                continue
            if not results:
                hung = self._hung_for()
                if hung is not None:
                    self.metrics.worker_hangs.inc()
                    self._recover(f"inference worker {self.worker.pid} answered no batch for {hung:.1f} s "
                                  f"(bound {self.hang_bound_s():.1f} s; pipeline.hang_timeout_s)", "worker_hang",
                                  backoff)
                continue
            backoff = self._settings().pipeline.restart_backoff_s
            self.last_result_ns = time.monotonic_ns()
            self._batches += 1
            self._batch_ns.append(results[0].inference_ns)
            self.metrics.batch_size.observe(results[0].batch_size)
            self.metrics.inference_call.observe(results[0].inference_ns / 1e9)
            for r in results:
                with self._cond:
                    flight = self._inflight.pop((r.source_id, r.index), None)
                    if flight is not None:
                        self._per_source[r.source_id] -= 1
                        if self._inflight:
                            self._waiting_since_ns = self.last_result_ns
                        if flight.reader.settings.detect_fps:  # behind the frames that skipped the model
                            for item in self._gate.done(r.source_id, r.index, (flight.reader, flight.frame, r)):
                                self._deliver(*item)
                        else:
                            self._deliver(flight.reader, flight.frame, r)
                    self._cond.notify_all()

    def _hung_for(self) -> float | None:
        with self._cond:
            if not self._inflight:
                return None
            since = max(self._waiting_since_ns, self.last_result_ns)
        waited = (time.monotonic_ns() - since) / 1e9
        return waited if waited > self.hang_bound_s() else None

    def _recover(self, why: str, reason: str, delay: float) -> None:
        """The worker died or hung: kill it, drop what it had, then the staged one takes over, or a new one."""
        with self._cond:
            self.ready = False
            self._cond.notify_all()
        self.state = "restarting"
        self.metrics.worker_restarts.inc()
        self.metrics.worker_up.set(0)
        dead = self.worker.kill()  # first: a slot goes back only once nothing can read it
        with self._cond:
            lost = self._take_all()
        self._drop(lost, reason, release=dead)  # still reading, perhaps: then its slots stay taken
        log.error("%s; %d frame(s) in flight dropped", why, len(lost))
        if self._staged is not None or self._replace_spec is not None:
            return  # the collector's next pass swaps in the reload's worker
        log.info("restarting the inference worker in %.1f s", delay)
        if self._wait_beating(delay) or self._staged is not None or self._replace_spec is not None:
            return  # stopping; or a reload's worker became ready meanwhile and takes over instead
        self._start_until_ready(self.worker)
        if self.ready:
            log.info("worker restarted (pid %s)", self.worker.pid)

    def _start_until_ready(self, client: WorkerClient) -> None:
        delay = max(self._settings().pipeline.restart_backoff_s, 0.5)
        while not self._abort.is_set():
            try:
                client.start(self._start_timeout(), cancel=self._abort, progress=self._progress, beat=self._beat)
                break
            except StartCancelled:
                return
            except (WorkerDied, RuntimeError, UserError) as exc:
                self.start_failures += 1
                log.error("starting the worker failed (%d in a row): %s; trying again in %.0f s", self.start_failures,
                          exc, delay)
                if self._wait_beating(delay):
                    return
                delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
        else:
            return
        self.worker = client
        self._ready()

    def _ready(self) -> None:
        self.start_failures = 0
        self._batches = 0
        self._batch_ns.clear()
        self.last_result_ns = time.monotonic_ns()
        self.metrics.worker_up.set(1)
        self.state = "ready"
        with self._cond:
            self.ready = True
            self._cond.notify_all()

    # reloads --------------------------------------------------------------------------------------------
    def _load_beside(self, spec: WorkerSpec, cancel: threading.Event) -> None:
        client = WorkerClient(spec)
        log.info("reload: loading %s beside the running worker", spec.model_name)
        self.state = "reloading"
        try:
            client.start(self._start_timeout(), cancel=cancel, progress=self._progress)
        except StartCancelled:
            return
        except (WorkerDied, RuntimeError, UserError) as exc:
            client.kill()
            if _OUT_OF_MEMORY.search(str(exc)) and not cancel.is_set():
                log.warning("reload: %s does not fit beside the running worker (%s); replacing the running one "
                            "instead, inference pauses while it loads", spec.model_name, exc)
                with self._cond:
                    self._replace_spec = spec
                    self._cond.notify_all()
                return
            if self.ready:
                self.state = "ready"
            self._reload_done("failed", f"the new model did not load, the running one stays: {exc}")
            return
        with self._cond:
            if cancel.is_set():
                client.stop()
                return
            self._staged = client  # the collector swaps it in once the running worker has answered
            self._cond.notify_all()

    def _swap(self) -> None:
        """Collector: nothing is in flight. Switch to the staged worker, or stop-then-start for `replace`."""
        with self._cond:
            staged, spec = self._staged, self._replace_spec
            self._staged = self._replace_spec = None
            self.ready = False
        old = self.worker
        if staged is not None:
            threading.Thread(target=old.stop, name="old-worker-stop", daemon=True).start()
            self._newest_params(staged)
            self.spec = staged.spec
            self.worker = staged
            self._ready()
            self._reload_done("ok", f"now running {staged.spec.model_name} (worker {staged.pid})")
            return
        self.state = "reloading"
        log.info("reload: stopping the running worker to load %s in its place", spec.model_name)
        old.stop()
        client = WorkerClient(spec)
        try:
            client.start(self._start_timeout(), cancel=self._abort, progress=self._progress, beat=self._beat)
        except StartCancelled:
            return
        except (WorkerDied, RuntimeError, UserError) as exc:
            client.kill()
            self._reload_done("failed", f"the new model did not load, restarting the previous one: {exc}")
            self._start_until_ready(WorkerClient(self.spec))
            return
        self._newest_params(client)
        self.spec = client.spec
        self.worker = client
        self._ready()
        self._reload_done("ok", f"now running {spec.model_name} (worker {client.pid})")

    def _newest_params(self, client: WorkerClient) -> None:
        """Thresholds reloaded while a new worker loaded are newer than the ones it was built with."""
        if self._params_since_stage and client.spec.params != self.spec.params:
            client.spec = dataclasses.replace(client.spec, params=self.spec.params)
            client.send_params(self.spec.params)

    def _reload_done(self, result: str, message: str) -> None:
        if result == "ok":
            info = self.worker.info
            self.metrics.set_engine(self.spec.model_name, info["backend"], info["precision"], info["device"])
            log.info("reload: %s", message)
        else:
            log.error("reload: %s", message)
        if self.on_reload is not None:
            self.on_reload(result, message)

    # helpers -------------------------------------------------------------------------------------------
    def _take_all(self) -> list[_Flight]:
        """Empty the in-flight books (caller holds the condition)."""
        taken = list(self._inflight.values())
        self._inflight.clear()
        self._per_source.clear()
        self._cond.notify_all()
        return taken

    def _drop(self, flights: list[_Flight], reason: str, release: bool = True) -> None:
        for f in flights:
            self.metrics.frames_dropped.labels(f.reader.name, reason).inc()
            if release:
                f.reader.release(f.frame)
        with self._cond:  # frames that skipped the model waited behind these: they may go now
            for f in flights:
                for item in self._gate.forget(f.reader.id, f.frame.index):
                    self._deliver(*item)

    def _start_timeout(self) -> float:
        return self._settings().pipeline.worker_start_timeout_s

    def _progress(self, what: str) -> None:
        if self.progress is not None:
            self.progress(what)

    def _beat(self) -> None:
        self.beat_ns = time.monotonic_ns()

    def _wait_beating(self, seconds: float) -> bool:
        """Wait, staying visibly alive for the watchdog; True if aborted meanwhile."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._beat()
            if self._abort.wait(min(1.0, deadline - time.monotonic())):
                return True
        return False
