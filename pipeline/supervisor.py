"""The parent's side of the inference worker: start it, feed it, read its results, restart it if it dies."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
from typing import Callable

from pipeline.errors import UserError
from pipeline.frame import WorkItem, WorkResult
from pipeline.worker import WorkerSpec, worker_main

log = logging.getLogger(__name__)

# spawn, not fork: the parent runs threads (decoders, sinks, HTTP) and, on GPUs, a CUDA context must
# be created fresh inside the worker.
_CTX = mp.get_context("spawn")


class WorkerDied(RuntimeError):
    pass


class StartCancelled(RuntimeError):
    """start() was cancelled (shutdown, or a newer reload) and the half-started worker killed."""


class WorkerClient:
    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.info: dict = {}
        self._proc: mp.Process | None = None
        self._inq: mp.Queue | None = None
        self._outq: mp.Queue | None = None

    def start(self, timeout_s: float, cancel: threading.Event | None = None,
              progress: Callable[[str], None] | None = None, beat: Callable[[], None] | None = None) -> dict:
        """Spawn the worker and wait until its engine is loaded. UserError for a bad model; StartCancelled
        when `cancel` is set meanwhile (the worker is killed: a TensorRT build cannot be paused). `progress`
        gets the worker's progress lines (a TensorRT build); `beat` is called while waiting."""
        # Fresh queues each time: a process killed while holding a queue's lock would wedge the old ones.
        self._inq, self._outq = _CTX.Queue(), _CTX.Queue()
        self._proc = _CTX.Process(target=worker_main, args=(self.spec, self._inq, self._outq),
                                  name="perceptd-worker", daemon=True)
        self._proc.start()
        deadline = time.monotonic() + timeout_s
        while True:
            if beat is not None:
                beat()
            if cancel is not None and cancel.is_set():
                self.kill()
                raise StartCancelled(f"loading {self.spec.model_name} was cancelled")
            try:
                msg = self._outq.get(timeout=0.2)
            except queue.Empty:
                if not self._proc.is_alive():
                    raise WorkerDied(f"inference worker exited with code {self._proc.exitcode} while loading "
                                     f"{self.spec.model_name}") from None
                if time.monotonic() > deadline:
                    self.kill()
                    raise UserError(f"model {self.spec.model_name}: the engine did not load within "
                                    f"{timeout_s:.0f} s; raise pipeline.worker_start_timeout_s") from None
                continue
            kind = msg[0]
            if kind == "progress":  # a long load (TensorRT build) that is moving: keep waiting
                deadline = time.monotonic() + timeout_s
                log.info("worker: %s", msg[1])
                if progress is not None:
                    progress(msg[1])
                continue
            if kind == "ready":
                self.info = msg[1]
                i = self.info
                log.info("worker %d ready: %s (%s) on %s %s %s, input %dx%d, max batch %d", self._proc.pid,
                         i["model"], i["family"], i["backend"], i["device"], i["precision"], i["input_size"][1],
                         i["input_size"][0], i["max_batch"])
                return self.info
            if kind == "error":
                self._proc.join(5)
                if msg[1] == "user":
                    raise UserError(msg[2])
                raise RuntimeError(f"inference worker failed to start: {msg[2]}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def submit(self, items: list[WorkItem]) -> None:
        """One message per dispatch pass: one pickle and one pipe write, and the worker sees them together."""
        self._inq.put(items)

    def send_params(self, params) -> bool:
        """New thresholds for the adapter, applied between batches (queued behind frames already sent).
        False when there is no running worker to tell: the spec carries them to the next one."""
        if not self.alive():
            return False
        try:
            self._inq.put(("params", params))
        except (ValueError, OSError):  # closed by kill() meanwhile (a restart)
            return False
        return True

    def results(self, timeout: float) -> list[WorkResult]:
        """The next batch of results, [] on timeout. WorkerDied when the process is gone."""
        try:
            msg = self._outq.get(timeout=timeout)
        except queue.Empty:
            if not self.alive():
                code = self._proc.exitcode if self._proc else None
                raise WorkerDied(f"inference worker died (exit code {code})") from None
            return []
        except (EOFError, OSError) as exc:
            raise WorkerDied(f"inference worker's result queue broke: {exc}") from None
        if msg[0] == "results":
            return msg[1]
        if msg[0] == "progress":
            return []
        log.warning("unexpected message from worker: %r", msg[0])
        return []

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to finish what it has and exit; kill it if it does not."""
        if self._proc is None:
            return
        if self._proc.is_alive():
            try:
                self._inq.put(None)
            except (OSError, ValueError):
                pass
            self._proc.join(timeout)
        self.kill()

    def kill(self, wait_s: float = 10.0) -> bool:
        """SIGKILL (it works on a stopped or hung process too) and reap; False if it is still not gone
        after `wait_s` (stuck in the kernel, e.g. a GPU driver call): its slots must then stay taken."""
        dead = True
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(wait_s)
            dead = not self._proc.is_alive()
            if not dead:
                log.error("inference worker %d did not exit within %.0f s of SIGKILL", self._proc.pid, wait_s)
        for q in (self._inq, self._outq):
            if q is not None:
                q.cancel_join_thread()  # never block exit on a dead reader
                q.close()
        return dead
