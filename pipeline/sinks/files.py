"""Output files: the annotated video and the JSONL events.

Both are written under a partial name and moved into place when finalised (outdir.py), so the file under a
final name is always complete, and nothing ever replaces an earlier output. A write that fails (disk full,
permissions, I/O error) raises OSError after closing the current file as well as it can: the source's
SinkGuard pauses the output, and the next write after it opens a new file.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from pipeline import encoders
from pipeline.encoders import Encoder, Writer
from pipeline.errors import UserError
from pipeline.sinks.outdir import UNFINISHED, OutputDir, _plays, check_output_dir, free_bytes, partial_of

log = logging.getLogger(__name__)

SPACE_CHECK_NS = 1_000_000_000  # statvfs once a second per file, not per frame

__all__ = ["EventsSink", "VideoFileSink", "check_output_dir"]


def disk_full(directory: Path, free: int, reserve: int) -> OSError:
    return OSError(errno.ENOSPC, f"{free / 1e6:.0f} MB free in {directory}, under sinks.reserve_mb "
                                 f"({reserve / 1e6:.0f} MB); free space there, or let retention delete older "
                                 "outputs (sinks.min_free_percent, max_disk_gb)")


def video_encoder(video, directory: Path) -> Encoder | None:
    """The encoder for `sinks.video` (None when disabled), probed in `directory`; UserError naming the key
    when its codec cannot be written here."""
    if not video.enabled:
        return None
    if video.fourcc is not None:
        log.warning("sinks.video.fourcc is the old name of sinks.video.codec (still read: %s records %s); "
                    "codec: auto records H.264, which browsers play", video.fourcc, video.fourcc)
    try:
        return encoders.choose(video.codec, video.extension, directory)
    except encoders.NoEncoder as exc:
        key = "fourcc" if video.fourcc is not None else "codec"
        raise UserError(f"sinks.video.{key}: {exc}; codec: auto takes H.264 where it can, else mp4v") from None


class _Segmented:
    """An output cut into files of `segment_s` seconds. The first file takes the stem the source claimed
    for all its outputs; each later one claims `<name>.<date>-<time>` for itself (outdir.OutputDir.claim).

    Each file is finalised as it closes, so operators can open it while the daemon runs and retention can
    delete old ones; for video it also bounds memory, since a muxer keeps every frame's index entry until
    its file is closed (~0.1 KB a frame, for months otherwise).
    """

    def __init__(self, out: OutputDir, name: str, stem: str, suffix: str, segment_s: float = 0.0,
                 reserve_bytes: int = 0):
        self._out = out
        self._name = name
        self._first_stem: str | None = stem
        self.suffix = suffix
        self._segment_ns = int(segment_s * 1e9)
        self._reserve = reserve_bytes
        self._opened_ns = 0
        self._next_space_check = 0
        self.final: Path | None = None  # the open file's final name
        self.files: list[Path] = []  # finalised so far
        self.unfinalised: list[tuple[Path, Path, str]] = []  # closed, but the rename was refused: retried

    @property
    def partial(self) -> Path:
        return partial_of(self.final)

    def _is_open(self) -> bool:
        raise NotImplementedError

    def _open_file(self) -> None:
        raise NotImplementedError

    def _close_file(self) -> str:
        """Flush and close the open file; returns what it holds, for the log."""
        raise NotImplementedError

    def _ensure_open(self) -> None:
        now = time.monotonic_ns()
        if self._is_open() and self._segment_ns and now - self._opened_ns >= self._segment_ns:
            self.close()
        if self.unfinalised:
            self._finalise_pending()
        if self._reserve and (now >= self._next_space_check or not self._is_open()):
            self._next_space_check = now + SPACE_CHECK_NS
            free = free_bytes(self._out.path)
            if free < self._reserve:  # stop while the file can still be finalised, not at the last byte
                raise disk_full(self._out.path, free, self._reserve)
        if not self._is_open():
            if self._first_stem is not None:
                stem, self._first_stem = self._first_stem, None
            else:
                stem = self._out.claim(self._name, (self.suffix,), stamped=True)
            self.final = self._out.path / f"{stem}{self.suffix}"
            # Created here, so a refusal (EACCES, EROFS, ENOSPC) is an OSError that names the file.
            with open(self.partial, "xb"):
                pass
            try:
                self._open_file()
            except BaseException:
                self.partial.unlink(missing_ok=True)  # empty: nothing to keep
                raise
            self._opened_ns = now

    def write_guarded(self, write: Callable[[], None]) -> None:
        """Run one write; when the file system refuses it, close what is open (finalising what it holds) and
        re-raise. Any other error belongs to the frame: the file stays open for the next one."""
        try:
            self._ensure_open()
            write()
        except OSError:
            self._abandon()
            raise

    def _abandon(self) -> None:
        try:
            self.close()
        except OSError as exc:
            log.debug("closing %s after a failed write: %s", self.final, exc)

    def close(self) -> None:
        """Finalise the open file (and any whose rename was refused before). OSError if the file system
        still refuses: the partial file stays, and the next start recovers it if nothing here manages to."""
        if self._is_open():
            what = "unfinished: closing it failed"
            try:
                what = self._close_file()
            finally:  # a file that could not be finished is still finalised, or kept as unfinished
                self.unfinalised.append((self.partial, self.final, what))
        self._finalise_pending()

    def _finalise_pending(self) -> None:
        while self.unfinalised:
            partial, final, what = self.unfinalised[0]
            if not partial.exists():  # nothing was ever written to it
                self.unfinalised.pop(0)
                continue
            if not self.suffix.endswith(".jsonl") and not _plays(partial):
                final = final.with_name(f"{final.stem}{UNFINISHED}{final.suffix}")
                log.error("%s does not play (the encoder could not finish it); kept as %s", partial.name, final.name)
            landed = self._out.finalise(partial, final)
            self.unfinalised.pop(0)
            self.files.append(landed)
            log.info("wrote %s (%s)", landed, what)


class VideoFileSink(_Segmented):
    """Annotated frames into a video container with `encoder` (pipeline.encoders.choose); opened at the
    first frame (its size is known then)."""

    def __init__(self, out: OutputDir, name: str, stem: str, encoder: Encoder, extension: str,
                 fps: Callable[[], float], segment_s: float = 0.0, reserve_bytes: int = 0):
        super().__init__(out, name, stem, extension, segment_s, reserve_bytes)
        self.encoder = encoder
        self._fps = fps
        self._writer: Writer | None = None
        self._size: tuple[int, int] | None = None
        self.frames = 0  # in the current file

    def _is_open(self) -> bool:
        return self._writer is not None

    def write(self, image: np.ndarray) -> None:
        if self._size is None:  # segments keep the first size: players expect one
            self._size = (image.shape[1], image.shape[0])
        self.write_guarded(lambda: self._write(image))

    def _open_file(self) -> None:
        fps = self._fps() or 25.0  # streams that do not say play back at a common camera rate
        self._writer = self.encoder.open(self.partial, fps, self._size)
        self.frames = 0

    def _write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self._size:  # a stream that changed resolution: one size a file
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def _close_file(self) -> str:
        writer, self._writer = self._writer, None
        writer.close()  # the encoder drained, the container finished: the file plays from here on
        return f"{self.frames} frames, {self.encoder.codec} ({self.encoder.name})"


class EventsSink(_Segmented):
    """One JSON object per processed frame, one line each, written whole with one system call per line
    (tail -f friendly); a failed write is cut back to the last whole line before the file is closed."""

    def __init__(self, out: OutputDir, name: str, stem: str, segment_s: float = 0.0, reserve_bytes: int = 0,
                 suffix: str = ".jsonl"):
        super().__init__(out, name, stem, suffix, segment_s, reserve_bytes)
        self._fd: int | None = None  # opened at the first frame: a source that never delivers writes nothing
        self._good = 0  # bytes of whole lines in the open file
        self.lines = 0  # in the current file

    def _is_open(self) -> bool:
        return self._fd is not None

    def _open_file(self) -> None:
        self._fd = os.open(self.partial, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._good = 0
        self.lines = 0

    def write(self, record: dict) -> None:
        # allow_nan=False: a NaN from a misbehaving model would make the line invalid JSON; it fails this
        # frame's write instead (counted by the guard) and the file stays parseable.
        data = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        self.write_guarded(lambda: self._write(data))

    def _write(self, data: bytes) -> None:
        try:
            done = os.write(self._fd, data)
            while done < len(data):  # a short write (a full disk answers with one first)
                done += os.write(self._fd, data[done:])
        except OSError:
            os.ftruncate(self._fd, self._good)  # never leave half a line
            raise
        self._good += len(data)
        self.lines += 1

    def _close_file(self) -> str:
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return f"{self.lines} lines"
