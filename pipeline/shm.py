"""Shared-memory frame slots: sources decode straight into them, the worker reads them in place.

Only the main process allocates and frees slots; the worker attaches by name and reads. A slot is held
from decode until the sink has written the frame, so the pixels are copied once, by the decoder.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import threading
from collections import OrderedDict
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


# Blocks are named for the process that owns them, so that a start after a crash (SIGKILL, OOM killer: no
# cleanup ran, not even multiprocessing's resource tracker) can tell its predecessor's leftovers in /dev/shm.
PREFIX = "perceptd_"
SHM_DIR = Path("/dev/shm")
_serial = itertools.count()


def block_name() -> str:
    return f"{PREFIX}{os.getpid()}_{next(_serial)}"


def _alive(pid: int) -> bool:
    """/dev/shm is emptied at boot, so a live process of that number is the owner (or, after the pid
    counter wrapped, a stranger: its block is then kept, never a live one removed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_blocks(directory: Path = SHM_DIR) -> list[str]:
    """Unlink the frame blocks of perceptd processes that are gone; returns their names."""
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:  # no /dev/shm (not Linux): nothing to clean
        return removed
    for entry in entries:
        owner = entry.name[len(PREFIX):].split("_", 1)[0]
        if not entry.name.startswith(PREFIX) or not owner.isdigit() or _alive(int(owner)):
            continue
        try:
            entry.unlink()
            removed.append(entry.name)
        except OSError as exc:
            log.warning("cannot remove stale shared memory %s: %s", entry, exc)
    if removed:
        log.warning("removed %d shared-memory block(s) left by a perceptd that did not exit cleanly", len(removed))
    return removed


class SlotPool:
    """`n_slots` frames of up to `capacity` bytes in one shared-memory block."""

    def __init__(self, n_slots: int, capacity: int, tag: str = ""):
        self.n_slots = n_slots
        self.capacity = capacity
        self.shm = shared_memory.SharedMemory(name=block_name(), create=True, size=max(1, n_slots * capacity))
        self.name = self.shm.name
        self._free = list(range(n_slots - 1, -1, -1))
        self._cond = threading.Condition()
        self._closed = False
        log.debug("slot pool %s for %s: %d x %d bytes", self.name, tag, n_slots, capacity)

    def acquire(self, timeout: float | None = None) -> int | None:
        """A free slot id, waiting up to `timeout` (None: forever, 0: not at all); None when none came."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._free or self._closed, timeout=timeout):
                return None
            if self._closed:
                return None
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._cond:
            self._free.append(slot)
            self._cond.notify()

    @property
    def free(self) -> int:
        with self._cond:
            return len(self._free)

    def offset(self, slot: int) -> int:
        return slot * self.capacity

    def view(self, slot: int, shape: tuple[int, int, int]) -> np.ndarray:
        return np.ndarray(shape, dtype=np.uint8, buffer=self.shm.buf, offset=self.offset(slot))

    def fits(self, shape: tuple[int, ...]) -> bool:
        return math.prod(shape) <= self.capacity  # per frame: np.prod's overhead showed in profiles

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        try:
            self.shm.close()
        except BufferError:
            # A numpy view still points into the block (a sink that has not let go); unlinking is
            # what matters for not leaking /dev/shm, the mapping goes with the process.
            log.debug("slot pool %s still has views at close", self.name)
        try:
            self.shm.unlink()
        except FileNotFoundError:
            pass


def attach(name: str) -> shared_memory.SharedMemory:
    """Attach to a block another process owns, without making this process responsible for it.

    Before Python 3.13 every attach registers the block with the resource tracker, which then unlinks
    (or warns about) the owner's block when this process exits; `track=False` exists only from 3.13.
    """
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    original = resource_tracker.register
    resource_tracker.register = lambda *args, **kwargs: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = original


class Attachments:
    """The worker's cache of attached blocks, oldest dropped first (pools are replaced on resize)."""

    def __init__(self, limit: int = 64):
        self._blocks: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()  # the worker's lanes attach from several threads

    def view(self, name: str, offset: int, shape: tuple[int, int, int]) -> np.ndarray:
        with self._lock:
            return self._view(name, offset, shape)

    def _view(self, name: str, offset: int, shape: tuple[int, int, int]) -> np.ndarray:
        block = self._blocks.get(name)
        if block is None:
            block = self._blocks[name] = attach(name)
            while len(self._blocks) > self._limit:
                _, old = self._blocks.popitem(last=False)
                _close_quietly(old)
        else:
            self._blocks.move_to_end(name)
        return np.ndarray(shape, dtype=np.uint8, buffer=block.buf, offset=offset)

    def close(self) -> None:
        for block in self._blocks.values():
            _close_quietly(block)
        self._blocks.clear()


def _close_quietly(block: shared_memory.SharedMemory) -> None:
    try:
        block.close()
    except BufferError:
        pass
