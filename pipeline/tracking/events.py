"""From tracks to events, per source: a track appearing (`new`) and ending (`end`), entering and leaving
zones (`enter`, `exit`), and crossing lines (`cross`, with the side it went to).

A reference point jitters at a zone's edge or on a line; a change of side counts only once the point has
stayed on the new side for `inertia` consecutive frames of that track (Frigate's zone inertia), so one
person standing in a doorway is one crossing, not ten. A line is crossed only where its segment is: the
path from the last point on the old side to the first steady point on the new one must cut it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from pipeline.tracking.zones import Line, Zone, inside, reference_points, segments_cross, side


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Track:
    id: int
    label: str
    first_t: float
    best_score: float
    last_t: float = 0.0
    last_box: tuple = ()
    last_score: float = 0.0
    zones: dict = field(default_factory=dict)  # zone -> steady inside?
    lines: dict = field(default_factory=dict)  # line -> steady side (+1/-1)
    pending: dict = field(default_factory=dict)  # ("zone"|"line", name) -> (state seen, frames in a row)
    anchors: dict = field(default_factory=dict)  # line -> last point on its steady side


class SceneEvents:
    def __init__(self, source: str, zones: tuple[Zone, ...] = (), lines: tuple[Line, ...] = (),
                 anchor: str = "auto", inertia: int = 3):
        self.source = source
        self.zones = zones
        self.lines = lines
        self.anchor = anchor
        self.inertia = max(1, inertia)
        self._tracks: dict[int, _Track] = {}
        self.crossings: dict[tuple[str, str, str], int] = {}  # (line, label, direction) -> count

    def carry_tracks(self, old: "SceneEvents") -> None:
        """Take over another scene's live tracks (new zones or a new frame size): they stay known, so they
        end with an `end` event, and their zone and line state starts afresh here."""
        for track_id, tr in old._tracks.items():
            tr.zones, tr.lines, tr.pending, tr.anchors = {}, {}, {}, {}
            self._tracks[track_id] = tr

    def occupancy(self) -> dict[tuple[str, str], int]:
        """(zone, label) -> tracks steadily inside it now."""
        out: dict[tuple[str, str], int] = {}
        for tr in self._tracks.values():
            for zone, now_inside in tr.zones.items():
                if now_inside:
                    out[(zone, tr.label)] = out.get((zone, tr.label), 0) + 1
        return out

    def update(self, frame: int, pts_ms: float, t: float, boxes, scores, labels, ids, ended=()) -> list[dict]:
        """One frame's tracked detections (rows whose id is -1 are ignored) and the ids that ended; `t` is
        the frame's wall-clock time (epoch seconds). Returns the events, in order."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = np.asarray(ids)
        rows = np.nonzero(ids > 0)[0]
        labels = [str(labels[i]) for i in rows]
        points = reference_points(boxes[rows], labels, self.anchor)
        in_zone = {z.name: inside(points, z.polygon) for z in self.zones}
        on_side = {ln.name: side(points, ln.a, ln.b) for ln in self.lines}
        events: list[dict] = []
        at = {"frame": frame, "pts_ms": round(float(pts_ms), 3), "time": iso(t)}
        for k, row in enumerate(rows):
            track_id, label, score = int(ids[row]), labels[k], float(scores[row])
            tr = self._tracks.get(track_id)
            if tr is None:
                tr = self._tracks[track_id] = _Track(track_id, label, t, score)
                tr.last_box, tr.last_score = tuple(round(float(v), 1) for v in boxes[row]), score
                events.append(self._event("new", tr, at))
            tr.last_t, tr.last_score, tr.best_score = t, score, max(tr.best_score, score)
            tr.last_box = tuple(round(float(v), 1) for v in boxes[row])
            for z in self.zones:
                seen = bool(in_zone[z.name][k])
                if z.counts(label) and self._steady(tr, ("zone", z.name), seen, tr.zones.get(z.name, False)):
                    tr.zones[z.name] = seen
                    events.append(self._event("enter" if tr.zones[z.name] else "exit", tr, at, zone=z.name))
            for ln in self.lines:
                if ln.counts(label):
                    events.extend(self._line(tr, ln, int(on_side[ln.name][k]), points[k], at))
        for track_id in ended:
            events.extend(self._end(int(track_id), at))
        return events

    def close(self, frame: int, pts_ms: float, t: float) -> list[dict]:
        """The source stops: every live track leaves its zones and ends."""
        at = {"frame": frame, "pts_ms": round(float(pts_ms), 3), "time": iso(t)}
        events = []
        for track_id in list(self._tracks):
            events.extend(self._end(track_id, at))
        return events

    # internals -----------------------------------------------------------------------------------------
    def _steady(self, tr: _Track, key: tuple, seen, current) -> bool:
        """Has `seen` (differing from the steady `current`) now been seen `inertia` frames in a row?"""
        if seen == current:
            tr.pending.pop(key, None)
            return False
        state, count = tr.pending.get(key, (seen, 0))
        count = count + 1 if state == seen else 1
        if count >= self.inertia:
            tr.pending.pop(key, None)
            return True
        tr.pending[key] = (seen, count)
        return False

    def _line(self, tr: _Track, ln: Line, now: int, point: np.ndarray, at: dict) -> list[dict]:
        if now == 0:
            return []  # exactly on the line: wait for a side
        steady = tr.lines.get(ln.name)
        if steady is None:  # the first side a track is seen on is where it starts: no crossing
            tr.lines[ln.name], tr.anchors[ln.name] = now, point
            return []
        if now == steady:
            tr.anchors[ln.name] = point
            tr.pending.pop(("line", ln.name), None)
            return []
        if not self._steady(tr, ("line", ln.name), now, steady):
            return []
        before = tr.anchors.get(ln.name, point)
        tr.lines[ln.name], tr.anchors[ln.name] = now, point
        if not segments_cross(before, point, ln.a, ln.b):
            return []  # it went round the end of the line
        direction = ln.sides[now]
        key = (ln.name, tr.label, direction)
        self.crossings[key] = self.crossings.get(key, 0) + 1
        return [self._event("cross", tr, at, line=ln.name, direction=direction)]

    def _end(self, track_id: int, at: dict) -> list[dict]:
        tr = self._tracks.pop(track_id, None)
        if tr is None:
            return []
        events = [self._event("exit", tr, at, zone=z) for z, now_inside in tr.zones.items() if now_inside]
        end = self._event("end", tr, at)
        end.update(first_seen=iso(tr.first_t), last_seen=iso(tr.last_t), best_score=round(tr.best_score, 4))
        return events + [end]

    def _event(self, kind: str, tr: _Track, at: dict, **where) -> dict:
        return {"type": kind, "source": self.source, "track_id": tr.id, "label": tr.label,
                "score": round(tr.last_score, 4), "box": list(tr.last_box), **at, **where}
