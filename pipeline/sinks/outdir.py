"""The output directory of one daemon: held under a lock, file names never reused, files a killed run left
unfinalised recovered at start, and every finalising rename made durable.

Naming (README, "What each run writes"): a source's first files are `<name>.mp4` and `<name>.jsonl` when no
output of that name exists yet; otherwise, and for every later segment, `<name>.<date>-<time>.<ext>` (the
local time the file was opened), with `-2`, `-3`... if that name is taken too. A file is written as
`.<final name>.partial.<ext>` and becomes `<final name>.<ext>` when finalised; nothing here ever replaces
an existing file, so only retention deletes a finalised output.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import re
import threading
from datetime import datetime
from pathlib import Path

import cv2

from pipeline.errors import UserError

log = logging.getLogger(__name__)

LOCK_NAME = ".perceptd.lock"
PARTIAL = re.compile(r"^\.(?P<stem>.+)\.partial(?P<ext>\.[A-Za-z0-9]+)$")
UNFINISHED = ".unfinished"  # a recovered video that players cannot open (an mp4v MP4 killed before its index)
# Filesystems without hard links (vfat, exfat on SD cards) answer link() with one of these.
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS}


def check_output_dir(path: Path) -> Path:
    """Create the output directory (or fail with a one-line fix) before any work starts."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"output directory {path}: cannot create it ({exc.strerror}); pass --output with a "
                        "writable directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"output directory {path}: not writable by this user; pass --output with a writable "
                        "directory")
    return path


def partial_of(final: Path) -> Path:
    return final.with_name(f".{final.stem}.partial{final.suffix}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class OutputDir:
    """One per daemon and output directory. `open()` takes the lock and recovers leftovers."""

    def __init__(self, path: Path):
        self.path = check_output_dir(path)
        self._lock_fd: int | None = None
        self._claimed: set[str] = set()  # file names handed out in this run (some not created yet)
        self._mutex = threading.Lock()
        self._children: dict[str, OutputDir] = {}

    # lifecycle -----------------------------------------------------------------------------------------
    def open(self) -> list[Path]:
        """Lock the directory (UserError if another perceptd holds it) and finalise what a killed run left."""
        lock = self.path / LOCK_NAME
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"output directory {self.path}: cannot create {LOCK_NAME} ({exc.strerror}); pass "
                            "--output with a writable directory") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            # Two daemons in one directory would give their sources the same file names.
            raise UserError(f"output directory {self.path} is in use by another perceptd (pid {holder}); give "
                            "each instance its own sinks.output_dir (or --output)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return self.recover()

    def subdir(self, *parts: str) -> "OutputDir":
        """A folder of this directory (clips/<source>): created, and what a killed run left in it recovered,
        once per run; covered by this directory's lock; one claimer of its names, however many outputs use
        it (a reload replaces outputs while the old ones still finish)."""
        key = "/".join(parts)
        with self._mutex:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = OutputDir(self.path.joinpath(*parts))
                child.recover()
            return child

    def close(self) -> None:
        # The file stays: unlinking it would let a second daemon lock a new file while a third holds the old.
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # names -----------------------------------------------------------------------------------------------
    def claim(self, stem: str, suffixes: tuple[str, ...], stamped: bool = False) -> str:
        """A stem that no file of this run or an earlier one uses with any of `suffixes` (final, partial
        or unfinished): `stem` itself unless `stamped` or taken, else `stem.<date>-<time>`, then `-2`..."""
        with self._mutex:
            stamp = f"{stem}.{datetime.now():%Y%m%d-%H%M%S}"
            first = [] if stamped else [stem]
            for candidate in itertools.chain(first, [stamp], (f"{stamp}-{n}" for n in itertools.count(2))):
                names = [candidate + s for s in suffixes]
                if not any(self._taken(n) for n in names):
                    self._claimed.update(names)
                    return candidate
        raise AssertionError("unreachable")

    def _taken(self, name: str) -> bool:
        final = self.path / name
        unfinished = final.with_name(f"{final.stem}{UNFINISHED}{final.suffix}")
        return name in self._claimed or any(p.exists() for p in (final, partial_of(final), unfinished))

    # finalising ------------------------------------------------------------------------------------------
    def finalise(self, partial: Path, final: Path) -> Path:
        """Move a written file to its final name, durably and without replacing anything: fsync the file,
        link it under the final name (a taken name gets a stamped one), drop the partial, fsync the
        directory. Returns where it landed. OSError when the file system refuses (the partial stays)."""
        fsync_path(partial)
        target = final
        while True:
            try:
                os.link(partial, target)  # fails on an existing name, where rename would replace it
                os.unlink(partial)
                break
            except FileExistsError:
                pass
            except OSError as exc:
                if exc.errno not in _NO_LINKS:
                    raise
                if not target.exists():  # no hard links here: the directory lock keeps this check honest
                    os.rename(partial, target)
                    break
            target = target.with_name(self.claim(_stem_of(final), (final.suffix,), stamped=True) + final.suffix)
        fsync_path(self.path)
        return target

    def recover(self) -> list[Path]:
        """Finalise the partial files a killed run left (call with the lock held): JSONL up to its last
        whole line; a video under its own name when it plays, else as `<name>.unfinished.<ext>`."""
        recovered = []
        for p in sorted(self.path.iterdir()):
            m = PARTIAL.match(p.name)
            if m is None or not p.is_file():
                continue
            stem, ext = m.group("stem"), m.group("ext")
            try:
                if ext == ".jsonl":
                    _trim_to_last_line(p)
                    playable = True
                elif ext in (".jpg", ".jpeg", ".png"):
                    playable = cv2.imread(str(p)) is not None  # a snapshot cut short does not decode
                else:
                    playable = _plays(p)
                if p.stat().st_size == 0:
                    p.unlink()
                    continue
                final = self.path / (f"{stem}{ext}" if playable else f"{stem}{UNFINISHED}{ext}")
                if final.exists():
                    final = final.with_name(self.claim(_stem_of(final), (ext,), stamped=True) + ext)
                landed = self.finalise(p, final)
            except OSError as exc:
                log.error("output directory %s: cannot recover %s (%s); it stays as it is", self.path, p.name,
                          exc.strerror or exc)
                continue
            recovered.append(landed)
            if playable:
                log.warning("recovered %s, left unfinalised by a run that was killed", landed)
            else:
                log.warning("recovered %s, left unfinalised by a run that was killed: players cannot open it "
                            "(an mp4v MP4 gets its index only when finalised; H.264 (sinks.video.codec: auto, "
                            "written as fragmented MP4) and .mkv files play up to the kill)", landed)
        return recovered


def _stem_of(final: Path) -> str:
    return final.name[: -len(final.suffix)] if final.suffix else final.name


def _trim_to_last_line(path: Path) -> None:
    """Cut a line a killed writer left half-written, so that every line of the file parses."""
    with open(path, "rb+") as f:
        data = f.read()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            f.truncate(end)


def _plays(path: Path) -> bool:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return bool(cap.isOpened() and cap.grab())
    finally:
        cap.release()
