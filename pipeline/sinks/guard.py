"""Fault containment for one output of one source: an error pauses that output only.

A write the file system refuses (disk full, permissions, an I/O error) is logged once, counted, and pauses
the output; the frame is still counted as processed, and the source's other outputs and every other source
go on. The output is tried again every `retry_s` and resumes by itself once the cause is gone (space freed,
permissions fixed); the log says when, and how many frames it missed. Any other exception belongs to one
frame (a result the overlay cannot draw): that frame is skipped by that output and counted, nothing pauses,
and the traceback is logged at most once a minute.
"""

from __future__ import annotations

import errno
import logging
import time
from typing import Callable

from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

_CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
           errno.EPERM: "not permitted", errno.EROFS: "read-only file system", errno.EIO: "I/O error"}


def describe(exc: BaseException) -> str:
    """One line: what failed and, for the usual file-system refusals, the cause in plain words."""
    if isinstance(exc, OSError):
        cause = _CAUSES.get(exc.errno)
        where = f" ({exc.filename})" if exc.filename else ""
        text = f"{exc.strerror or exc}{where}"
        return f"{text}: {cause}" if cause and cause.lower() not in text.lower() else text
    return f"{exc.__class__.__name__}: {exc}"


class SinkGuard:
    def __init__(self, source: str, sink: str, metrics: Metrics, retry_s: float = 5.0):
        self.source, self.sink = source, sink
        self.retry_s = retry_s
        self.up = True
        self.error: str | None = None  # the last failure, while paused
        self._cause: tuple | None = None  # its kind: a new kind is logged, the same one again is not
        self._next_try = 0.0
        self._paused_at = 0.0
        self._missed = 0
        self._next_traceback = 0.0
        self._errors = metrics.sink_errors.labels(source, sink)
        self._skipped = metrics.sink_skipped.labels(source, sink)
        self._up = metrics.sink_up.labels(source, sink)
        self._up.set(1)

    def run(self, action: Callable[[], None]) -> bool:
        """Run `action` unless paused and not yet due for a retry. True when it ran and succeeded."""
        if not self.up and time.monotonic() < self._next_try:
            self._skip()
            return False
        try:
            action()
        except Exception as exc:  # contained: the rest of the pipeline never sees it
            self._fail(exc)
            return False
        if not self.up:
            log.info("source '%s': %s resumed after %.0f s (%d frame(s) not written meanwhile)", self.source,
                     self.sink, time.monotonic() - self._paused_at, self._missed)
            self.up, self.error = True, None
            self._up.set(1)
        return True

    def _skip(self) -> None:
        self._missed += 1
        self._skipped.inc()

    def _fail(self, exc: Exception) -> None:
        self._errors.inc()
        if not isinstance(exc, OSError):
            self._skipped.inc()
            if time.monotonic() >= self._next_traceback:
                self._next_traceback = time.monotonic() + 60
                log.exception("source '%s': %s skipped a frame: %s (logged at most once a minute)", self.source,
                              self.sink, describe(exc))
            return
        self._skip()
        self._next_try = time.monotonic() + self.retry_s
        text = describe(exc)
        cause = (type(exc), exc.errno)
        if self.up:  # once per state change: a full disk must not write a log line per frame
            self.up, self._paused_at, self._missed = False, time.monotonic(), 1
            self._up.set(0)
            log.error("source '%s': %s paused: %s; retrying every %g s, the other outputs go on", self.source,
                      self.sink, text, self.retry_s)
        elif cause != self._cause:
            log.warning("source '%s': %s still paused: %s", self.source, self.sink, text)
        self.error, self._cause = text, cause
