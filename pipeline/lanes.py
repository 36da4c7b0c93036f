"""The worker's lanes: concurrent inference calls while frames queue up (engine.instances, on CPU runtimes).

One thread per lane takes the oldest waiting frame and runs it through preprocess -> engine -> postprocess
on its own engine lane (fewer threads per call), so that the lanes' calls, and one lane's pre/postprocessing
beside another's inference, keep every core busy. A frame that finds every lane idle and nothing behind it
is the case where latency, not throughput, is at stake: it gets one call on all threads (the engine's
infer()), and no lane starts until it is done (more threads than cores would slow both).

Results go back in the order the frames were taken: the sinks see each source's frames in order.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from typing import Callable

log = logging.getLogger(__name__)


class _Lanes:
    def __init__(self, runner, outq) -> None:
        self.runner = runner
        self.outq = outq
        self.cond = threading.Condition()
        self.backlog: deque = deque()  # (WorkItem, when it left the queue)
        self.stop = False
        self.running = 0
        self.wide = False  # a call on every thread is running: no lane starts
        self.failure: BaseException | None = None
        self._next = 0  # sequence number of the next job taken
        self._emit = 0  # the next one to send back
        self._done: dict[int, list] = {}
        self.counts = {"lane": 0, "wide": 0}  # frames run each way (logged at close)

    def lane(self, k: int) -> None:
        try:
            self._loop(k)
        except BaseException as exc:  # the main thread re-raises it: the worker dies and is restarted
            with self.cond:
                self.failure = exc
                self.cond.notify_all()

    def _loop(self, k: int) -> None:
        while True:
            with self.cond:
                while not (self.backlog and not self.wide) and not (self.stop and not self.backlog):
                    if self.failure is not None:
                        return
                    self.cond.wait()
                if not self.backlog:
                    return  # stopping, and every frame taken
                wide = self.running == 0 and len(self.backlog) == 1
                item, t_dequeued = self.backlog.popleft()
                seq, self._next = self._next, self._next + 1
                self.running += 1
                self.wide = wide
            results = self.runner.run_batch([item], [t_dequeued], lane=None if wide else k)
            with self.cond:
                self.running -= 1
                if wide:
                    self.wide = False
                self.counts["wide" if wide else "lane"] += 1
                self._done[seq] = results
                while self._emit in self._done:
                    self.outq.put(("results", self._done.pop(self._emit)))
                    self._emit += 1
                self.cond.notify_all()


def serve_lanes(runner, inq, outq, parent: int, take: Callable) -> None:
    """The worker's loop with lanes: this thread files the parent's messages, the lanes run them. Returns
    after the stop sentinel once every frame sent is answered, or when the daemon is gone."""
    lanes = _Lanes(runner, outq)
    threads = [threading.Thread(target=lanes.lane, args=(k,), name=f"lane-{k}", daemon=True)
               for k in range(runner.engine.lanes)]
    for t in threads:
        t.start()
    try:
        while True:
            if lanes.failure is not None:
                raise lanes.failure
            if lanes.stop:  # the lanes finish what was sent, then end
                alive = [t for t in threads if t.is_alive()]
                if not alive:
                    break
                alive[0].join(0.2)
                continue
            try:
                message = inq.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # orphaned: the daemon is gone
                    return
                continue
            with lanes.cond:
                lanes.stop = take(message, lanes.backlog, runner)
                lanes.cond.notify_all()
    finally:
        with lanes.cond:
            lanes.stop = True
            lanes.cond.notify_all()
        log.info("instances: %d frame(s) ran in lanes (%d at once), %d as a lone frame on every thread",
                 lanes.counts["lane"], len(threads), lanes.counts["wide"])
