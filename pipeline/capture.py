"""One thread per source: decode into shared-memory slots, stamp, and queue with the source's drop policy.

Live sources never wait for the worker: when their queue is full the oldest waiting frame is dropped,
so latency stays flat. Files wait instead (nothing dropped) unless they are paced in real time.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.errors import SourceError, SourceUnsupported
from pipeline.frame import Frame
from pipeline.metrics import Metrics
from pipeline.settings import SourceSettings
from pipeline.shm import SlotPool
from pipeline.sources import VideoSource

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Reconnection delays: initial, doubling with +-20% jitter up to a cap; attempts 0 = forever."""

    initial_s: float = 1.0
    max_s: float = 30.0
    max_attempts: int = 0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * (2 ** attempt)) * random.uniform(0.8, 1.2)


class FrameQueue:
    """A bounded queue of frames for one source.

    Blocking (files): FIFO; a full queue makes the reader wait, nothing is dropped. Dropping (live): a full
    queue evicts its oldest frame, and the dispatcher always takes the newest frame, dropping the older
    ones: they would only reach the worker late, and latency must stay flat when the worker is behind.
    """

    def __init__(self, maxsize: int, drop_oldest: bool, on_drop, changed: threading.Condition):
        self._items: deque[Frame] = deque()
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self._on_drop = on_drop  # called with the dropped frame (outside no lock: it only releases a slot)
        self._changed = changed  # shared with the dispatcher: notified on every put and pop

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Queue `frame`; files block while full, live sources evict the oldest. False if stopped first."""
        with self._changed:
            while len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    self._on_drop(self._items.popleft(), "queue_full")
                    continue
                if stop.is_set():
                    return False
                self._changed.wait(0.1)
            self._items.append(frame)
            self._changed.notify_all()
        return True

    def pop(self) -> Frame | None:
        """The next frame for the worker (the newest, for dropping queues). Caller holds the condition."""
        if not self._items:
            return None
        if not self.drop_oldest:
            return self._items.popleft()
        newest = self._items.pop()
        while self._items:
            self._on_drop(self._items.popleft(), "queue_full")
        return newest

    def drain(self) -> list[Frame]:
        with self._changed:
            items = list(self._items)
            self._items.clear()
            self._changed.notify_all()
            return items

    def __len__(self) -> int:
        return len(self._items)


class SourceReader:
    """Runs one VideoSource on its own thread until it ends, fails for good, or stop() is called."""

    def __init__(self, source_id: int, settings: SourceSettings, source: VideoSource, pool_slots: int,
                 queue_size: int, drop_policy: str, metrics: Metrics, changed: threading.Condition,
                 backoff: Backoff = Backoff()):
        self.id = source_id
        self.settings = settings
        self.name = settings.name
        self.source = source
        self.metrics = metrics
        self.live = source.live or settings.realtime
        drop_oldest = drop_policy == "drop_oldest" or (drop_policy == "auto" and self.live)
        self.queue = FrameQueue(queue_size, drop_oldest, self._drop, changed)
        self._pool_slots = pool_slots
        self.pool: SlotPool | None = None
        self._pools: dict[str, SlotPool] = {}  # by shm name: the current pool and retired ones in use
        self._pools_lock = threading.Lock()  # sinks release from their threads, the reader from its own
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self.finished = threading.Event()  # no more frames will come from this source
        self.frames_read = 0
        self.reconnects = 0
        self.backoff = backoff
        self.state = "connecting"  # connecting | up | down | finished (for /readyz and STATUS=)
        self.error: BaseException | None = None

    # lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Files arrive opened (start-up errors surface before any output is written); a live source
        that is not open yet is opened, and retried with backoff, on the reader's own thread."""
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            # Still inside a blocking read (a network stream within its timeout): releasing the capture
            # under it could crash the decoder; the process exit cleans up instead.
            log.warning("source '%s': reader still busy at shutdown; leaving its capture open", self.name)
        else:
            self.source.close()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        self.pool = None

    # slots -------------------------------------------------------------------------------------------
    def _ensure_pool(self, h: int, w: int) -> SlotPool:
        if self.pool is None or not self.pool.fits((h, w, 3)):
            if self.pool is not None:
                # In-flight frames still point into the old pool: it is closed when they are all back.
                log.warning("source '%s': frame size changed to %dx%d; new slot pool", self.name, w, h)
            self.pool = SlotPool(self._pool_slots, h * w * 3, self.name)
            with self._pools_lock:
                self._pools[self.pool.name] = self.pool
        return self.pool

    def pool_offset(self, frame: Frame) -> int:
        return self._pools[frame.pool].offset(frame.slot)

    def release(self, frame: Frame) -> None:
        with self._pools_lock:
            pool = self._pools.get(frame.pool)
            if pool is None:
                return
            pool.release(frame.slot)
            retired = pool is not self.pool and pool.free == pool.n_slots
            if retired:
                del self._pools[pool.name]
        if retired:
            pool.close()

    def _drop(self, frame: Frame, reason: str) -> None:
        self.metrics.frames_dropped.labels(self.name, reason).inc()
        self.release(frame)

    # the loop ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.source.info is not None or self._connect(first=True):
                self._read_loop()
        except BaseException as exc:  # reported by the runner; never kill the process from a thread
            self.error = exc
            log.exception("source '%s' failed", self.name)
        finally:
            self._set_state("finished")
            self.finished.set()

    def _set_state(self, state: str) -> None:
        self.state = state
        self.metrics.source_up.labels(self.name).set(1 if state == "up" else 0)

    def _connect(self, first: bool) -> bool:
        """(Re)open a live source until it works, stop() is called, or the attempts run out."""
        attempt = 0
        while not self._stop.is_set():
            try:
                self.source.open()
            except SourceUnsupported as exc:
                log.error("%s", exc)
                return False
            except SourceError as exc:
                if self.backoff.max_attempts and attempt + 1 >= self.backoff.max_attempts:
                    log.error("%s; giving up after %d attempts", exc, attempt + 1)
                    return False
                delay = self.backoff.delay(attempt)
                attempt += 1
                self._set_state("down" if not first or attempt > 1 else "connecting")
                log.warning("%s; retrying in %.1f s", exc, delay)
                if self._stop.wait(delay):
                    return False
                continue
            if not first:
                self.reconnects += 1
                self.metrics.source_reconnects.labels(self.name).inc()
                log.info("source '%s': reconnected to %s", self.name, self.source.shown_uri)
            self._set_state("up")
            return True
        return False

    def _read_loop(self) -> None:
        s = self.settings
        info = self.source.info
        self._set_state("up")
        pace = s.realtime and info.fps > 0
        interval_ns = int(1e9 / (info.fps * s.speed)) if pace else 0
        next_due = time.monotonic_ns()
        scratch: np.ndarray | None = None
        while not self._stop.is_set():
            if s.max_frames is not None and self.frames_read >= s.max_frames:
                return
            pool = self._ensure_pool(info.height, info.width)
            # Files wait for a free slot; live sources must keep reading (a stream's buffer must drain),
            # so with every slot busy they decode into scratch memory and drop the frame.
            slot = pool.acquire(timeout=None if not self.live else 0)
            while slot is None and not self.live and not self._stop.is_set():
                slot = pool.acquire(timeout=0.1)
            if self._stop.is_set():
                if slot is not None:
                    pool.release(slot)
                return
            if pace:
                delay = next_due - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                next_due = max(next_due + interval_ns, time.monotonic_ns() - interval_ns)
            shape = (info.height, info.width, 3)
            if slot is not None:
                target = pool.view(slot, shape)
            else:
                if scratch is None or scratch.shape != shape:
                    scratch = np.empty(shape, np.uint8)
                target = scratch
            t_capture = time.monotonic_ns()
            ok, image, pts_ms = self.source.read(target)
            t_decoded = time.monotonic_ns()
            if not ok:
                if slot is not None:
                    pool.release(slot)
                if not self._on_end():
                    return
                info = self.source.info
                continue
            if image.shape != shape:
                info = self.source.info = type(info)(image.shape[1], image.shape[0], info.fps, info.frame_count)
                if slot is not None:
                    pool.release(slot)
                pool = self._ensure_pool(image.shape[0], image.shape[1])
                slot = pool.acquire(timeout=None if not self.live else 0)
                shape = image.shape
                target = pool.view(slot, shape) if slot is not None else image
            if slot is not None and image is not target:
                np.copyto(target, image)  # OpenCV allocated its own buffer (backend could not decode in place)
            index = self.frames_read
            self.frames_read += 1
            self.metrics.frames_captured.labels(self.name).inc()
            if slot is None:
                self.metrics.frames_dropped.labels(self.name, "pipeline_full").inc()
                continue
            frame = Frame(self.name, index, pts_ms, t_capture, t_decoded, pool.name, slot, target)
            if not self.queue.put(frame, self._stop):
                self._drop(frame, "shutdown")
                return

    def _on_end(self) -> bool:
        """The source gave no frame. True to keep reading (looped or reconnected), False when done."""
        if not self.source.live:
            if self.settings.loop and self.frames_read > 0:
                if self.source.rewind():
                    return True
                try:  # some containers cannot seek: reopening starts from the beginning too
                    self.source.open()
                    return True
                except SourceError as exc:
                    log.error("%s", exc)
                    return False
            log.info("source '%s': end of file after %d frames", self.name, self.frames_read)
            return False
        # A live source that errors, ends or stalls (no frame within its read timeout) is reopened.
        self._set_state("down")
        log.warning("source '%s': no frame from %s; reconnecting", self.name, self.source.shown_uri)
        self.source.close()
        return self._connect(first=False)
