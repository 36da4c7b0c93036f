"""Output retention: finalised videos and event logs older than a limit, beyond a disk budget, or while the
file system is short of free space, are deleted oldest first, so a daemon that runs for months never fills
its disk."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".mp4", ".avi", ".mkv", ".jsonl", ".jpg")


def enforce(directory: Path, max_age_days: float, max_gb: float, min_free_percent: float = 0.0,
            now: float | None = None, usage=None) -> list[Path]:
    """Delete finalised outputs in `directory` past any limit (0 = no limit); returns what was deleted.

    Files being written are `.<name>.partial.*` (dot files) and are never touched; nor is anything that
    does not have an output's suffix. `usage()` gives (free, total) bytes of the file system (statvfs).
    """
    if max_age_days <= 0 and max_gb <= 0 and min_free_percent <= 0:
        return []
    now = time.time() if now is None else now
    usage = usage or (lambda: _usage(directory))
    files = []
    # The directory and its clips/ and snapshots/ folders (one level per source under them).
    for p in Path(directory).rglob("*"):
        if p.name.startswith(".") or p.suffix not in OUTPUT_SUFFIXES or not p.is_file():
            continue
        st = p.stat()
        files.append((st.st_mtime, st.st_size, p))
    files.sort()  # oldest first
    deleted: list[Path] = []
    total = sum(size for _, size, _ in files)
    budget = max_gb * 1e9
    free, capacity = usage() if min_free_percent > 0 else (0, 0)
    want_free = capacity * min_free_percent / 100
    short = 0.0
    for mtime, size, p in files:
        too_old = max_age_days > 0 and now - mtime > max_age_days * 86400
        too_big = max_gb > 0 and total > budget
        too_full = min_free_percent > 0 and free + short < want_free
        if not (too_old or too_big or too_full):
            continue
        try:
            p.unlink()
        except OSError as exc:
            log.warning("retention: cannot delete %s (%s)", p, exc)
            continue
        total -= size
        short += size  # counted, not re-measured: the file system frees blocks lazily
        deleted.append(p)
    if deleted:
        log.info("retention: deleted %d old output file(s) from %s, %.2f GB left", len(deleted), directory,
                 total / 1e9)
    return deleted


def _usage(directory: Path) -> tuple[int, int]:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
