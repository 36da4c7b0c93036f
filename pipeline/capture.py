"""One thread per source: decode into shared-memory slots, stamp, and queue with the source's drop policy.

Live sources never wait for the worker: when their queue is full the oldest waiting frame is dropped,
so latency stays flat. Files wait instead (nothing dropped) unless they are paced in real time.

A live source whose open or read does not return within its stall bound (a wedged V4L2 driver, an nvargus
deadlock, a GStreamer pipeline or pipe that stops delivering) is abandoned: its thread cannot be
interrupted, so it is left blocked, counted as a stuck read, and a new thread with a new capture reopens
the source with backoff. If the stuck call ever returns, that thread cleans up after itself and ends.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.errors import SourceError, SourceUnsupported
from pipeline.frame import Frame
from pipeline.metrics import Metrics
from pipeline.settings import SourceSettings
from pipeline.shm import SlotPool
from pipeline.sources import VideoSource

log = logging.getLogger(__name__)

STALL_GRACE_S = 2.0  # past a source's own timeouts (FFmpeg's), so that they act first where they exist


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

    def put(self, frame: Frame, stop: Callable[[], bool]) -> bool:
        """Queue `frame`; files block while full, live sources evict the oldest. False if stopped first."""
        with self._changed:
            while len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    self._on_drop(self._items.popleft(), "queue_full")
                    continue
                if stop():
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

    def take_oldest(self) -> Frame | None:
        """The oldest frame, whatever the policy (a paced source sends every frame somewhere, in order).
        Caller holds the condition."""
        return self._items.popleft() if self._items else None

    def put_back(self, frame: Frame) -> None:
        """Undo take_oldest (caller holds the condition)."""
        self._items.appendleft(frame)

    def drain(self) -> list[Frame]:
        with self._changed:
            items = list(self._items)
            self._items.clear()
            self._changed.notify_all()
            return items

    def __len__(self) -> int:
        return len(self._items)


class SourceReader:
    """Runs one VideoSource on its own thread until it ends, fails for good, or stop() is called.

    Each thread is a generation: abandoning a stuck one starts the next with a fresh capture (`reopen`),
    and a thread that is no longer the current generation touches nothing shared but its own slot.
    """

    def __init__(self, source_id: int, settings: SourceSettings, source: VideoSource, metrics: Metrics,
                 changed: threading.Condition, reopen: Callable[[], VideoSource] | None = None):
        """Call configure() before start()."""
        self.id = source_id
        self.settings = settings
        self.name = settings.name
        self.source = source
        self._reopen = reopen or (lambda: type(source)(source.uri, source.name))
        self.metrics = metrics
        self.live = source.live or settings.realtime
        self.queue = FrameQueue(4, self.live, self._drop, changed)
        self._pool_slots = 0
        self.pool: SlotPool | None = None
        self._pools: dict[str, SlotPool] = {}  # by shm name: the current pool and retired ones in use
        self._lock = threading.Lock()  # pools (sinks release from their threads) and generations
        self._stop = threading.Event()
        self._gen = 0
        self._thread = threading.Thread(target=self._run, args=(0, source), name=f"source-{self.name}", daemon=True)
        self._call_since_ns = 0  # the current generation's open/read started then; 0 while outside one
        self._call_what = ""
        self.stuck_reads = 0  # abandoned calls still blocked
        self._abandoned: dict[int, tuple[str, int]] = {}  # generation -> (its stuck call, since when)
        self.finished = threading.Event()  # no more frames will come from this source
        self.frames_read = 0
        self.reconnects = 0
        self.backoff = Backoff()
        self.state = "connecting"  # connecting | up | down | finished (for /readyz and STATUS=)
        self.error: BaseException | None = None

    def configure(self, settings) -> None:
        """The daemon's flow settings (Settings), at start and after a reload: queue length and policy, slot
        count (queued + two batches in flight + a few in the sinks), reconnection backoff. A new slot count
        takes effect at the next frame, in a new pool; frames in the old one finish normally."""
        p = settings.pipeline
        self.queue.maxsize = p.queue_size
        self.queue.drop_oldest = p.drop_policy == "drop_oldest" or (p.drop_policy == "auto" and self.live)
        self._pool_slots = p.queue_size + 2 * settings.engine.max_batch + 4
        self.backoff = Backoff(p.reconnect_initial_s, p.reconnect_max_s, p.reconnect_max_attempts)

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
        with self._lock:
            pools, self._pools, self.pool = list(self._pools.values()), {}, None
        for pool in pools:
            pool.close()  # a view a stuck thread still holds keeps its mapping alive (SlotPool.close)

    # stalls ------------------------------------------------------------------------------------------
    def check_stall(self) -> None:
        """Called periodically (Pipeline.step): abandon a live source's open or read that is overdue."""
        since = self._call_since_ns
        if not since or not self.live or self._stop.is_set() or not self.source.live:
            return
        s = self.settings
        bound = s.stall_timeout_s + (s.open_timeout_s if self._call_what == "open" else 0.0) + STALL_GRACE_S
        waited = (time.monotonic_ns() - since) / 1e9
        if waited < bound:
            return
        with self._lock:
            if self._call_since_ns != since:  # it returned meanwhile
                return
            self._abandoned[self._gen] = (self._call_what, since)
            self._gen += 1
            self._call_since_ns = 0
            self.stuck_reads += 1
            self.pool = None  # the stuck thread may still write into its slot: the next generation gets a new pool
            self.source = self._reopen()
            gen, source = self._gen, self.source
        self.metrics.source_stuck_reads.labels(self.name).set(self.stuck_reads)
        self._set_state("down")
        log.error("source '%s': %s did not return for %.0f s (stall_timeout_s %.0f); left it blocked in the "
                  "driver (%d stuck) and reopening the source", self.name, self._call_what, waited,
                  s.stall_timeout_s, self.stuck_reads)
        self._thread = threading.Thread(target=self._run, args=(gen, source), name=f"source-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _call(self, gen: int, what: str, fn, *args):
        """An open or read of the source, timed for check_stall."""
        if gen == self._gen:
            self._call_what, self._call_since_ns = what, time.monotonic_ns()
        try:
            return fn(*args)
        finally:
            if gen == self._gen:
                self._call_since_ns = 0

    def _current(self, gen: int) -> bool:
        return gen == self._gen

    # slots -------------------------------------------------------------------------------------------
    def _ensure_pool(self, h: int, w: int) -> SlotPool:
        with self._lock:
            old = self.pool
            if old is not None and old.fits((h, w, 3)) and old.n_slots == self._pool_slots:
                return old
            if old is not None and not old.fits((h, w, 3)):
                log.warning("source '%s': frame size changed to %dx%d; new slot pool", self.name, w, h)
            self.pool = SlotPool(self._pool_slots, h * w * 3, self.name)
            self._pools[self.pool.name] = self.pool
            # In-flight frames may still point into the old pool: it is closed when the last comes back.
            close_old = old is not None and old.free == old.n_slots and self._pools.pop(old.name, None)
        if close_old:
            old.close()
        return self.pool

    def pool_offset(self, frame: Frame) -> int:
        return self._pools[frame.pool].offset(frame.slot)

    def release(self, frame: Frame) -> None:
        self._release_slot(frame.pool, frame.slot)

    def _release_slot(self, pool_name: str, slot: int) -> None:
        with self._lock:
            pool = self._pools.get(pool_name)
            if pool is None:
                return
            pool.release(slot)
            retired = pool is not self.pool and pool.free == pool.n_slots
            if retired:
                del self._pools[pool.name]
        if retired:
            pool.close()

    def _drop(self, frame: Frame, reason: str) -> None:
        self.metrics.frames_dropped.labels(self.name, reason).inc()
        self.release(frame)

    # the loop ----------------------------------------------------------------------------------------
    def _run(self, gen: int, source: VideoSource) -> None:
        try:
            if source.info is not None or self._connect(gen, source, first=gen == 0):
                self._read_loop(gen, source)
        except BaseException as exc:  # reported by the runner; never kill the process from a thread
            if self._current(gen):
                self.error = exc
                log.exception("source '%s' failed", self.name)
        finally:
            if self._current(gen):
                self._set_state("finished")
                self.finished.set()
            else:
                self._abandoned_returned(gen, source)

    def _abandoned_returned(self, gen: int, source: VideoSource) -> None:
        source.close()  # this thread's own capture: nothing else uses it
        with self._lock:
            self.stuck_reads -= 1
            what, since = self._abandoned.pop(gen)
        self.metrics.source_stuck_reads.labels(self.name).set(self.stuck_reads)
        log.info("source '%s': an abandoned %s returned at last, after %.0f s (%d still stuck)", self.name, what,
                 (time.monotonic_ns() - since) / 1e9, self.stuck_reads)

    def _set_state(self, state: str) -> None:
        self.state = state
        self.metrics.source_up.labels(self.name).set(1 if state == "up" else 0)

    def _stopped(self, gen: int) -> bool:
        return self._stop.is_set() or not self._current(gen)

    def _connect(self, gen: int, source: VideoSource, first: bool) -> bool:
        """(Re)open a live source until it works, stop() is called, or the attempts run out."""
        attempt = 0
        while not self._stopped(gen):
            try:
                self._call(gen, "open", source.open)
            except SourceUnsupported as exc:
                log.error("%s", exc)
                return False
            except SourceError as exc:
                if not self._current(gen):
                    return False
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
            if not self._current(gen):
                return False
            if not first:
                self.reconnects += 1
                self.metrics.source_reconnects.labels(self.name).inc()
                log.info("source '%s': reconnected to %s", self.name, source.shown_uri)
            self._set_state("up")
            return True
        return False

    def _acquire(self, gen: int, pool: SlotPool) -> int | None:
        """A slot. Files wait for one (stop() still ends the wait); live sources must keep reading (a
        stream's buffer must drain), so with every slot busy they decode into scratch memory and drop."""
        if self.live:
            return pool.acquire(timeout=0)
        while not self._stopped(gen):
            slot = pool.acquire(timeout=0.1)
            if slot is not None:
                return slot
        return None

    def _read_loop(self, gen: int, source: VideoSource) -> None:
        s = self.settings
        info = source.info
        self._set_state("up")
        pace = s.realtime and info.fps > 0
        interval_ns = int(1e9 / (info.fps * s.speed)) if pace else 0
        next_due = time.monotonic_ns()
        scratch: np.ndarray | None = None
        while not self._stopped(gen):
            if s.max_frames is not None and self.frames_read >= s.max_frames:
                return
            pool = self._ensure_pool(info.height, info.width)
            slot = self._acquire(gen, pool)
            if self._stopped(gen):
                if slot is not None:
                    self._release_slot(pool.name, slot)
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
            ok, image, pts_ms = self._call(gen, "read", source.read, target)
            t_decoded = time.monotonic_ns()
            if not self._current(gen):  # abandoned while it read: the frame is nobody's
                if slot is not None:
                    self._release_slot(pool.name, slot)
                return
            if not ok:
                if slot is not None:
                    self._release_slot(pool.name, slot)
                if not self._on_end(gen, source):
                    return
                info = source.info
                continue
            if image.shape != shape:
                info = source.info = type(info)(image.shape[1], image.shape[0], info.fps, info.frame_count)
                if slot is not None:
                    self._release_slot(pool.name, slot)
                pool = self._ensure_pool(image.shape[0], image.shape[1])
                slot = self._acquire(gen, pool)
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
            if not self.queue.put(frame, lambda: self._stopped(gen)):
                self._drop(frame, "shutdown")
                return

    def _on_end(self, gen: int, source: VideoSource) -> bool:
        """The source gave no frame. True to keep reading (looped or reconnected), False when done."""
        if not source.live:
            if self.settings.loop and self.frames_read > 0:
                if source.rewind():
                    return True
                try:  # some containers cannot seek: reopening starts from the beginning too
                    source.open()
                    return True
                except SourceError as exc:
                    log.error("%s", exc)
                    return False
            log.info("source '%s': end of file after %d frames", self.name, self.frames_read)
            return False
        # A live source that errors, ends or stalls (no frame within its read timeout) is reopened.
        self._set_state("down")
        log.warning("source '%s': no frame from %s; reconnecting", self.name, source.shown_uri)
        source.close()
        return self._connect(gen, source, first=False)
