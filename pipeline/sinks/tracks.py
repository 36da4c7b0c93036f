"""One source's tracking in the daemon: the tracker, its zones and lines, trails for the overlay, and the
metrics. Run by the source's sink thread, frame by frame, in order.

It outlives the source's outputs (a reload that reopens them keeps the tracks and their ids) and its
readers (a restarted source's tracks end, and the next ones carry on the numbering): ids stay unique per
source for the daemon's lifetime.
"""

from __future__ import annotations

import logging
from collections import deque

import cv2
import numpy as np

from engines.detection import Detection
from pipeline.metrics import Metrics
from pipeline.settings_tracking import SceneSettings, TrackingSettings
from pipeline.sinks.overlay import color_for
from pipeline.tracking import Tracker, TrackerSettings
from pipeline.tracking.events import SceneEvents
from pipeline.tracking.zones import Line, Zone, reference_points, resolve

log = logging.getLogger(__name__)

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def tracker_settings(t: TrackingSettings) -> TrackerSettings:
    return TrackerSettings(high_score=t.high_score, low_score=t.low_score, new_track_score=t.new_track_score,
                           match_iou=t.match_iou, min_hits=t.min_hits, lost_s=t.lost_s)


class SourceTracking:
    def __init__(self, name: str, tracking: TrackingSettings, scene: SceneSettings, metrics: Metrics):
        self.name = name
        self.metrics = metrics
        self.tracker = Tracker(tracker_settings(tracking))
        self.configure(tracking, scene)
        self.trails: dict[int, deque] = {}
        self._zone_series: set[tuple[str, str]] = set()
        self.last = (0, 0.0, 0.0)  # frame, pts_ms, wall time of the last frame seen

    def configure(self, tracking: TrackingSettings, scene: SceneSettings) -> None:
        """New settings (start, reload): the tracker keeps its tracks; zones and lines are rebuilt at the
        next frame (their pixels depend on its size)."""
        self.settings = tracking
        self.tracker.settings = tracker_settings(tracking)
        self._scene_cfg = scene
        self.scene: SceneEvents | None = None
        self._size: tuple[int, int] | None = None

    def step(self, index: int, pts_ms: float, wall: float, size: tuple[int, int], detections,
             inferred: bool = True) -> tuple[tuple, np.ndarray, list]:
        """Track one frame; returns (its detections, the track id of each, -1 for none; events). A frame the
        model did not see (detect_fps) gets the confirmed tracks' predicted boxes as its detections."""
        if self.scene is None or size != self._size:
            self._build_scene(size)
        if not inferred:
            ids, boxes, labels, scores = self.tracker.predict()
            detections = tuple(Detection(lb, float(sc), tuple(float(v) for v in b)) for lb, sc, b in
                               zip(labels, scores, boxes))
        else:
            boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
            scores = np.array([d.score for d in detections], dtype=np.float64)
            labels = [d.label for d in detections]
            # Stream time: a file processed faster than real time still loses a track after lost_s of video.
            ids = self.tracker.update(boxes, scores, labels, t=pts_ms / 1000.0)
        events = self.scene.update(index, pts_ms, wall, boxes, scores, labels, ids, self.tracker.ended)
        self.last = (index, pts_ms, wall)
        self._follow(ids, boxes, labels)
        self._count(events)
        return detections, ids, events

    def end(self) -> list:
        """The source stops (or restarts): every track ends; returns the events saying so."""
        self.tracker.end_all()
        events = self.scene.close(*self.last) if self.scene is not None else []
        self.trails.clear()
        self._count(events)
        return events

    # the overlay ---------------------------------------------------------------------------------------
    def draw(self, image: np.ndarray, detections, ids: np.ndarray, thickness: int = 2) -> None:
        """Zones and lines with their counts, each track's trail, and its id by its box."""
        h, w = image.shape[:2]
        scale = max(0.35, min(w, h) / 900)
        if self.scene is not None:
            occupancy = self.scene.occupancy()
            for zone in self.scene.zones:
                pts = zone.polygon.astype(np.int32)
                cv2.polylines(image, [pts], True, (0, 200, 255), thickness, cv2.LINE_AA)
                n = sum(c for (z, _), c in occupancy.items() if z == zone.name)
                _text(image, f"{zone.name}: {n}", tuple(pts.min(axis=0) + 4), scale, (0, 200, 255))
            for line in self.scene.lines:
                a, b = line.a.astype(int), line.b.astype(int)
                cv2.line(image, tuple(a), tuple(b), (255, 0, 255), thickness, cv2.LINE_AA)
                counts = {d: sum(c for (ln, _, dd), c in self.scene.crossings.items() if ln == line.name and dd == d)
                          for d in line.sides.values()}
                _text(image, f"{line.name}: " + " ".join(f"{d} {c}" for d, c in counts.items()),
                      tuple(((a + b) // 2) + 4), scale, (255, 0, 255))
        for track_id, trail in self.trails.items():
            if len(trail) > 1:
                cv2.polylines(image, [np.array(trail, np.int32)], False, color_for(track_id), thickness, cv2.LINE_AA)
        for det, track_id in zip(detections, ids):
            if track_id > 0:
                x1, _, _, y2 = (int(v) for v in det.box)
                _text(image, f"#{track_id}", (x1 + 2, y2 - 4), scale, color_for(int(track_id)))

    # internals -----------------------------------------------------------------------------------------
    def _build_scene(self, size: tuple[int, int]) -> None:
        w, h = size
        cfg = self._scene_cfg
        zones = tuple(Zone(z.name, resolve(z.polygon, w, h), frozenset(z.labels)) for z in cfg.zones)
        lines = tuple(Line(ln.name, *resolve(ln.points, w, h), frozenset(ln.labels)) for ln in cfg.lines)
        shapes = [("zone", z.name, z.polygon) for z in zones] + [("line", ln.name, np.stack([ln.a, ln.b]))
                                                                   for ln in lines]
        for kind, name, pts in shapes:
            if (pts[:, 0] > w).any() or (pts[:, 1] > h).any():  # pixels meant for another resolution
                log.warning("source '%s': %s '%s' reaches outside the %dx%d frame (%s); use fractions of the frame "
                            "(0-1) so that it fits any resolution", self.name, kind, name, w, h,
                            pts.round(1).tolist())
        # Zeros, not gaps, for the labels a zone or line names (any label may count where none is named).
        for z in zones:
            for label in z.labels:
                self.metrics.zone_objects.labels(self.name, z.name, label)
        for ln in lines:
            for label in ln.labels:
                for direction in ln.sides.values():
                    self.metrics.line_crossings.labels(self.name, ln.name, label, direction)
        old = self.scene
        self.scene = SceneEvents(self.name, zones, lines, self.settings.anchor, self.settings.inertia)
        if old is not None:  # a reload or a new frame size: the tracks go on
            self.scene.carry_tracks(old)
        self._size = size

    def _follow(self, ids: np.ndarray, boxes: np.ndarray, labels) -> None:
        if not self.settings.trail:
            return
        points = reference_points(boxes, labels, self.settings.anchor)
        live = set()
        for k, track_id in enumerate(ids):
            if track_id > 0:
                trail = self.trails.setdefault(int(track_id), deque(maxlen=self.settings.trail))
                trail.append((int(points[k, 0]), int(points[k, 1])))
                live.add(int(track_id))
        for track_id in [t for t in self.trails if t not in live and t in set(self.tracker.ended.tolist())]:
            del self.trails[track_id]

    def _count(self, events: list) -> None:
        m = self.metrics
        for e in events:
            if e["type"] == "new":
                m.tracks.labels(self.name, e["label"]).inc()
            elif e["type"] == "cross":
                m.line_crossings.labels(self.name, e["line"], e["label"], e["direction"]).inc()
        if self.scene is not None and self.scene.zones:
            occupancy = self.scene.occupancy()
            for key in self._zone_series | set(occupancy):
                m.zone_objects.labels(self.name, *key).set(occupancy.get(key, 0))
            self._zone_series |= set(occupancy)


def _text(image, text: str, org, scale: float, color) -> None:
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    x, y = int(org[0]), max(th + base, int(org[1]) + th)
    cv2.rectangle(image, (x, y - th - base), (x + tw + 2, y + 2), (0, 0, 0), -1)
    cv2.putText(image, text, (x + 1, y - 1), _FONT, scale, color, 1, cv2.LINE_AA)
