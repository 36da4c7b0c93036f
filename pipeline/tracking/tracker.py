"""A ByteTrack-style multi-object tracker in numpy: one per source.

Written from the ByteTrack paper (Zhang et al., 2022): Kalman-predicted tracks are matched first to the
confident detections, then the tracks still unmatched to the low-score ones (a person half hidden behind a
pillar scores low but is still there), so identities survive occlusions that plain score thresholds break.
A track is born from a confident detection and confirmed after `min_hits` consecutive matches; it is kept,
lost, for `lost_s` without a match (re-found by IoU against its prediction), then ends. Only the same label
matches. Ids are given at confirmation, so tentative tracks that never confirm use none: ids count up from
1 and are never reused by this Tracker.

Association is greedy by IoU, best pair first: on boxes where tracks rarely contend it agrees with an
optimal assignment, and costs O(pairs) instead of O(n^3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.tracking.kalman import KalmanBoxes, xyxy_to_xyah

NEW, TRACKED, LOST = 0, 1, 2


@dataclass(frozen=True)
class TrackerSettings:
    high_score: float = 0.5  # detections at or above it are matched first and may start tracks
    low_score: float = 0.1  # below it detections are ignored; between the two they only extend tracks
    new_track_score: float = 0.6  # a new track needs at least this score
    match_iou: float = 0.1  # first association (confident detections to every track)
    low_match_iou: float = 0.5  # second association (low-score detections to tracked tracks)
    new_match_iou: float = 0.3  # a tentative track's next detection
    min_hits: int = 2  # consecutive matches that confirm a track (1: at once)
    lost_s: float = 1.0  # a lost track ends after this long without a match
    fps: float = 30.0  # frames per second assumed when update() is given no timestamp


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] (x1, y1, x2, y2)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def greedy_match(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (row, column) of an IoU matrix, best first, each row and column used once, IoU >= threshold."""
    rows, cols = np.nonzero(iou >= threshold)
    if not len(rows):
        return rows, cols
    if np.bincount(rows).max() == 1 and np.bincount(cols).max() == 1:
        return rows, cols  # the usual frame: no track or detection has two candidates
    order = np.argsort(-iou[rows, cols], kind="stable")
    used_r, used_c, out_r, out_c = set(), set(), [], []
    for k in order:
        r, c = int(rows[k]), int(cols[k])
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        out_r.append(r)
        out_c.append(c)
    return np.asarray(out_r, dtype=np.int64), np.asarray(out_c, dtype=np.int64)


class Tracker:
    """`update(boxes, scores, labels)` once per frame; returns each detection's track id (-1: none yet)."""

    def __init__(self, settings: TrackerSettings | None = None, **overrides):
        base = settings or TrackerSettings()
        self.settings = TrackerSettings(**{**base.__dict__, **overrides})
        self._kf = KalmanBoxes()
        self._id = np.zeros(0, np.int64)  # 0 while tentative
        self._label = np.zeros(0, np.int64)
        self._state = np.zeros(0, np.int8)
        self._hits = np.zeros(0, np.int64)
        self._seen = np.zeros(0)  # time of the last match
        self._score = np.zeros(0)  # score of the last match
        self._labels: dict = {}  # label -> small int
        self._next_id = 1
        self._frames = 0
        self.born = np.zeros(0, np.int64)  # ids confirmed by the last update()
        self.ended = np.zeros(0, np.int64)  # ids of confirmed tracks the last update() ended (lost too long)

    # the public surface -------------------------------------------------------------------------------
    def update(self, boxes, scores, labels, t: float | None = None) -> np.ndarray:
        """boxes [N, 4] x1 y1 x2 y2, scores [N], labels N strs or ints; `t` the frame's time in seconds
        (default: frames counted at settings.fps). Returns int64 [N]: the track id of each row, -1 where
        the detection belongs to no confirmed track (yet)."""
        s = self.settings
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        codes = np.asarray([self._labels.setdefault(x, len(self._labels)) for x in labels], dtype=np.int64)
        self._frames += 1
        now = t if t is not None else self._frames / s.fps
        out = np.full(len(boxes), -1, np.int64)
        first_id = self._next_id

        self._kf.predict()
        predicted = self._kf.boxes()
        taken = np.zeros(len(boxes), bool)  # detections matched so far
        high = scores >= s.high_score
        low = (scores >= s.low_score) & ~high
        state = self._state

        # 1. Confident detections against every confirmed track, tracked or lost.
        confirmed = np.nonzero(state != NEW)[0]
        t1, d1 = self._associate(predicted, confirmed, boxes, np.nonzero(high)[0], codes, s.match_iou)
        taken[d1] = True
        # 2. Low-score detections against the tracks that were tracked and are still unmatched.
        free = np.ones(len(state), bool)
        free[t1] = False
        t2, d2 = self._associate(predicted, np.nonzero(free & (state == TRACKED))[0], boxes, np.nonzero(low)[0],
                                 codes, s.low_match_iou)
        # 3. Tentative tracks against the confident detections left.
        t3, d3 = self._associate(predicted, np.nonzero(state == NEW)[0], boxes, np.nonzero(high & ~taken)[0],
                                 codes, s.new_match_iou)
        taken[d3] = True
        rows, dets = np.concatenate([t1, t2, t3]), np.concatenate([d1, d2, d3])
        self._matched(rows, boxes[dets], scores[dets], now)  # one Kalman correction for all of them
        ids = self._id[rows]
        out[dets] = np.where(ids > 0, ids, -1)  # matched but still tentative: no id yet

        # Unmatched: confirmed tracks are lost (and end after lost_s); tentative ones end at once.
        unmatched = np.ones(len(state), bool)
        unmatched[rows] = False
        self._state[unmatched & (self._state == TRACKED)] = LOST
        self._hits[unmatched] = 0
        expired = (self._state == LOST) & (now - self._seen > s.lost_s)
        gone = expired | (unmatched & (self._state == NEW))
        self.ended = self._id[expired]
        if gone.any():
            self._keep(np.nonzero(~gone)[0])
        high_left = np.nonzero(high & ~taken)[0]

        # New tentative tracks from confident detections nobody claimed.
        starts = high_left[scores[high_left] >= s.new_track_score]
        if len(starts):
            start = len(self._state)
            self._add(boxes[starts], codes[starts], scores[starts], now)
            if s.min_hits <= 1:
                rows = np.arange(start, start + len(starts))
                self._confirm(rows)
                out[starts] = self._id[rows]
        self.born = np.arange(first_id, self._next_id, dtype=np.int64)
        return out

    def predict(self) -> tuple[np.ndarray, np.ndarray, list, np.ndarray]:
        """A frame the detector did not see: move every track on by one frame, and return the confirmed,
        tracked ones (ids, predicted boxes [K, 4], labels, last scores). No track is lost for it."""
        self._frames += 1
        self._kf.predict()
        self.born, self.ended = np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = np.nonzero(self._state == TRACKED)[0]
        names = {code: label for label, code in self._labels.items()}
        return self._id[rows], self._kf.boxes()[rows], [names[c] for c in self._label[rows]], self._score[rows]

    def in_view(self) -> dict:
        """Confirmed tracks matched in the last frame (not lost), per label."""
        names = {code: label for label, code in self._labels.items()}
        rows = self._state == TRACKED
        codes, counts = np.unique(self._label[rows], return_counts=True)
        return {names[int(c)]: int(n) for c, n in zip(codes, counts)}

    def end_all(self) -> np.ndarray:
        """End every track (the source stops); returns the ids of the confirmed ones."""
        ids = self._id[self._state != NEW]
        self._keep(np.zeros(0, np.int64))
        return ids

    def tracks(self) -> tuple[np.ndarray, np.ndarray]:
        """The confirmed, currently tracked tracks: (ids [K], predicted boxes [K, 4])."""
        rows = np.nonzero(self._state == TRACKED)[0]
        return self._id[rows], self._kf.boxes()[rows]

    # internals -----------------------------------------------------------------------------------------
    def _associate(self, predicted, track_rows, boxes, det_rows, codes, threshold):
        if not len(track_rows) or not len(det_rows):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        iou = iou_matrix(predicted[track_rows], boxes[det_rows])
        iou[self._label[track_rows][:, None] != codes[det_rows][None, :]] = 0.0  # one label per track
        r, c = greedy_match(iou, threshold)
        return track_rows[r], det_rows[c]

    def _matched(self, rows: np.ndarray, boxes: np.ndarray, scores: np.ndarray, now: float) -> None:
        if not len(rows):
            return
        self._kf.update(rows, xyxy_to_xyah(boxes))
        self._hits[rows] += 1
        self._seen[rows] = now
        self._score[rows] = scores
        confirmed = self._state[rows] != NEW
        self._state[rows[confirmed]] = TRACKED
        ready = rows[(~confirmed) & (self._hits[rows] >= self.settings.min_hits)]
        self._confirm(ready)

    def _confirm(self, rows: np.ndarray) -> None:
        for r in rows:
            self._id[r] = self._next_id
            self._next_id += 1
        self._state[rows] = TRACKED

    def _add(self, boxes: np.ndarray, codes: np.ndarray, scores: np.ndarray, now: float) -> None:
        n = len(boxes)
        self._kf.add(xyxy_to_xyah(boxes))
        self._id = np.concatenate([self._id, np.zeros(n, np.int64)])
        self._label = np.concatenate([self._label, codes])
        self._state = np.concatenate([self._state, np.full(n, NEW, np.int8)])
        self._hits = np.concatenate([self._hits, np.ones(n, np.int64)])
        self._seen = np.concatenate([self._seen, np.full(n, now)])
        self._score = np.concatenate([self._score, scores])

    def _keep(self, rows: np.ndarray) -> None:
        self._kf.keep(rows)
        for name in ("_id", "_label", "_state", "_hits", "_seen", "_score"):
            setattr(self, name, getattr(self, name)[rows])
