"""Event clips and snapshots, per source.

A clip runs from `pre_s` before a track of the configured labels appears to `post_s` after the last such
track ends (at most `max_s`), in `<output_dir>/clips/<source>/`; tracks that overlap share one clip instead
of encoding the same frames twice. A snapshot is the annotated frame of a track's best score, and a crop of
it around the track, in `<output_dir>/snapshots/<source>/`, written when the track ends. Every event names
its clip, and `end` its snapshot and crop (paths relative to the output directory).

Two halves. `EventMedia` runs in the source's sink thread: it decides when a clip starts and stops, claims
file names (so that events can carry them at once) and hands frames over. `MediaWriter` is a thread of its
own: it keeps the pre-roll as JPEG (bounded in time and bytes), encodes clips and writes snapshots, so none of
that is on the frame's latency path. Its queue is bounded: when it falls behind, frames are dropped from the
clips and counted, never waited for. Files are finalised like every output (partial name, fsync, rename).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from pathlib import Path

import cv2
import numpy as np

from pipeline import encoders
from pipeline.metrics import Metrics
from pipeline.sinks.guard import SinkGuard
from pipeline.sinks.outdir import OutputDir, partial_of

log = logging.getLogger(__name__)

QUEUE_FRAMES = 64  # frames waiting for the writer thread before new ones are dropped (counted)


class EventMedia:
    """The sink thread's half: which frames go into which clip, which track gets which snapshot."""

    def __init__(self, name: str, settings, out: OutputDir, metrics: Metrics, fps, guard: SinkGuard):
        clips, snaps = settings.clips, settings.snapshots
        self.name = name
        self.clips, self.snaps = clips, snaps
        self.root = out.path
        self._clip_dir = out.subdir("clips", name) if clips.enabled else None
        self._snap_dir = out.subdir("snapshots", name) if snaps.enabled else None
        self._labels = frozenset(clips.labels)
        self._alive: set[int] = set()  # tracks of interest in the current clip
        self._clip: Path | None = None
        self._clip_start = self._end_at = 0.0
        self._snapshots: dict[int, tuple[Path, Path]] = {}
        self.last_t = 0.0  # the last frame's time: tracks that end at a stop end then
        self.writer = MediaWriter(name, clips, snaps, fps, metrics, guard, self._clip_dir, self._snap_dir)

    def start(self) -> None:
        self.writer.start()

    def frame(self, t: float, image: np.ndarray, detections, ids, events: list[dict]) -> None:
        """One annotated frame (stream time `t`, seconds): annotate its events with their files (in place)
        and hand the frame over."""
        self.last_t = t
        self.annotate(t, events)
        boxes = {int(i): d.box for d, i in zip(detections, ids) if i > 0 and int(i) in self._snapshots}
        scores = {int(i): d.score for d, i in zip(detections, ids) if i > 0 and int(i) in self._snapshots}
        self.writer.put(("frame", t, image.copy(), self._clip, boxes, scores))
        if self._clip is not None and self._end_at and (t >= self._end_at or t - self._clip_start >= self.clips.max_s):
            self._finish_clip()

    def annotate(self, t: float, events: list[dict]) -> None:
        """Give events their clip, and `end` events their snapshot (queued for writing)."""
        if self._clip_dir is not None:
            self._follow_clip(t, events)
        if self._snap_dir is not None:
            for e in events:
                if e["type"] == "new":
                    self._snapshots[e["track_id"]] = self._claim_snapshot(e["track_id"])
                elif e["type"] == "end" and e["track_id"] in self._snapshots:
                    shot, crop = self._snapshots.pop(e["track_id"])
                    e["snapshot"] = self._rel(shot)
                    if self.snaps.crop:
                        e["crop"] = self._rel(crop)
                    self.writer.put(("snapshot", e["track_id"], shot, crop if self.snaps.crop else None))

    def close(self) -> None:
        if self._clip is not None:
            self._finish_clip()
        self.writer.close()

    # internals -----------------------------------------------------------------------------------------
    def _follow_clip(self, t: float, events: list[dict]) -> None:
        for e in events:
            interesting = not self._labels or e["label"] in self._labels
            if e["type"] == "new" and interesting:
                if self._clip is None:
                    stem = self._clip_dir.claim(self.name, (self.clips.extension,), stamped=True)
                    self._clip = self._clip_dir.path / f"{stem}{self.clips.extension}"
                    self._clip_start = t - self.clips.pre_s
                    self.writer.put(("open", self._clip, self._clip_start))
                self._alive.add(e["track_id"])
                self._end_at = 0.0  # a new track keeps the clip going
            elif e["type"] == "end" and e["track_id"] in self._alive:
                self._alive.discard(e["track_id"])
                if not self._alive:
                    self._end_at = t + self.clips.post_s
            if self._clip is not None and (e["track_id"] in self._alive or e["type"] == "end"):
                e["clip"] = self._rel(self._clip)
        if self._clip is not None and t - self._clip_start >= self.clips.max_s and not self._end_at:
            self._end_at = t  # capped: the next clip starts with the next new track

    def _finish_clip(self) -> None:
        self.writer.put(("close", self._clip))
        self._clip, self._end_at = None, 0.0
        self._alive.clear()

    def _claim_snapshot(self, track_id: int) -> tuple[Path, Path]:
        stem = self._snap_dir.claim(f"{self.name}.{track_id}", (".jpg", ".crop.jpg"), stamped=True)
        return self._snap_dir.path / f"{stem}.jpg", self._snap_dir.path / f"{stem}.crop.jpg"

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))


class MediaWriter:
    """The writer thread: pre-roll, clip encoding, snapshots."""

    def __init__(self, name: str, clips, snaps, fps, metrics: Metrics, guard: SinkGuard,
                 clip_dir: OutputDir | None, snap_dir: OutputDir | None):
        self.name = name
        self._dirs = {"clip": clip_dir, "snapshot": snap_dir}
        self.clips, self.snaps = clips, snaps
        self._fps = fps
        self._guard = guard
        self._q: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
        self._dropped = metrics.media_dropped.labels(name)
        self._preroll: deque[tuple[float, bytes]] = deque()
        self._preroll_bytes = 0
        self._writer: encoders.Writer | None = None
        self._clip: Path | None = None
        self._clip_frames = 0
        self._size: tuple[int, int] | None = None
        self._best: dict[int, tuple[float, bytes, bytes]] = {}  # track -> (score, frame jpeg, crop jpeg)
        self._thread = threading.Thread(target=self._run, name=f"media-{name}", daemon=True)
        self.encoder: encoders.Encoder | None = None
        self.written: list[Path] = []

    def start(self) -> None:
        self._thread.start()

    def put(self, item: tuple) -> None:
        if item[0] == "frame":
            try:
                self._q.put_nowait(item)
            except queue.Full:  # the writer is behind: this frame is missing from its clip, not waited for
                self._dropped.inc()
            return
        self._q.put(item)  # opens, closes and snapshots are few: they wait for room

    def close(self) -> None:
        if self._thread.ident is not None:
            self._q.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                self._close_clip()
                return
            kind = item[0]
            if kind == "frame":
                self._guard.run(lambda: self._frame(*item[1:]))
            elif kind == "open":
                self._guard.run(lambda: self._open_clip(*item[1:]))
            elif kind == "close":
                self._guard.run(self._close_clip)
            elif kind == "snapshot":
                self._guard.run(lambda: self._snapshot(*item[1:]))

    def _frame(self, t: float, image: np.ndarray, clip, boxes: dict, scores: dict) -> None:
        quality = [cv2.IMWRITE_JPEG_QUALITY, self.clips.quality]
        jpeg = None
        if self.clips.enabled:
            jpeg = cv2.imencode(".jpg", image, quality)[1].tobytes()
            self._preroll.append((t, jpeg))
            self._preroll_bytes += len(jpeg)
            while self._preroll and (self._preroll[0][0] < t - self.clips.pre_s
                                     or self._preroll_bytes > self.clips.preroll_mb * 1e6):
                self._preroll_bytes -= len(self._preroll.popleft()[1])
            if clip is not None and self._writer is not None:
                self._write(image)
        for track_id, score in scores.items():
            if score > self._best.get(track_id, (-1.0,))[0]:
                full = jpeg if jpeg is not None and self.snaps.quality == self.clips.quality else \
                    cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.snaps.quality])[1].tobytes()
                self._best[track_id] = (score, full, _crop(image, boxes[track_id], self.snaps.quality))

    def _open_clip(self, path: Path, since: float) -> None:
        self._close_clip()
        self._clip = path
        self._clip_frames = 0
        for t, jpeg in list(self._preroll):
            if t >= since:
                image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                if self._writer is None:
                    self._start_writer(image)
                self._write(image)
        # Without pre-roll frames the writer opens with the clip's first live frame.

    def _start_writer(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        self._size = (w, h)
        if self.encoder is None:  # the recording's choice when the settings match (probed once a process)
            self.encoder = encoders.choose(self.clips.codec, self.clips.extension, self._clip.parent)
        self._writer = self.encoder.open(partial_of(self._clip), self._fps() or 25.0, self._size)

    def _write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self._start_writer(image)
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self._clip_frames += 1

    def _close_clip(self) -> None:
        if self._clip is None:
            return
        clip, self._clip = self._clip, None
        if self._writer is None:
            return  # no frame came: no file
        writer, self._writer = self._writer, None
        writer.close()
        landed = self._dirs["clip"].finalise(partial_of(clip), clip)
        self.written.append(landed)
        log.info("wrote clip %s (%d frames, %s)", landed, self._clip_frames, self.encoder)

    def _snapshot(self, track_id: int, shot: Path, crop: Path | None) -> None:
        best = self._best.pop(track_id, None)
        if best is None:
            return
        _, full, cropped = best
        for path, data in ((shot, full), (crop, cropped)):
            if path is not None:
                partial = partial_of(path)
                partial.write_bytes(data)
                self._dirs["snapshot"].finalise(partial, path)


def _crop(image: np.ndarray, box, quality: int) -> bytes:
    """The track's box with a margin (a quarter of its size on each side), as JPEG."""
    h, w = image.shape[:2]
    x1, y1, x2, y2 = box
    mx, my = (x2 - x1) * 0.25, (y2 - y1) * 0.25
    x1, y1 = int(max(0, x1 - mx)), int(max(0, y1 - my))
    x2, y2 = int(min(w, x2 + mx)), int(min(h, y2 + my))
    region = image[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
    return cv2.imencode(".jpg", region, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
