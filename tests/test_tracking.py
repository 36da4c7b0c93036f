"""The tracker on its own: MOTChallenge ground truth (TUD-Campus and TUD-Stadtmitte, read from the installed
motmetrics wheel) damaged as a real detector would, scored with TrackEval (HOTA, IDF1, ID switches) against
Roboflow's `trackers` ByteTrack on the same input in the same run; and the API's promises."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io

import numpy as np
import pytest

from pipeline.tracking import Tracker, iou_matrix

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
SEEDS = range(1, 7)


def ground_truth(seq: str) -> np.ndarray:
    """MOTChallenge gt.txt rows: frame, id, x, y, w, h, ... (the data ships inside the motmetrics wheel)."""
    path = importlib.metadata.distribution("motmetrics").locate_file(f"motmetrics/data/{seq}/gt.txt")
    return np.loadtxt(path, delimiter=",")


def damaged(gt: np.ndarray, rng: np.random.Generator, miss=0.15, jitter=0.04, false_rate=0.1):
    """What a detector makes of the truth: 15% of people missed, boxes jittered by 4% of their height,
    ~10% false positives of person-like shapes, scores spread around 0.75 (some below ByteTrack's high
    threshold, so the second association matters)."""
    frames = {}
    for f in np.unique(gt[:, 0]).astype(int):
        rows = gt[gt[:, 0] == f]
        rows = rows[rng.random(len(rows)) >= miss]
        xywh = rows[:, 2:6].copy()
        xywh[:, :2] += rng.normal(0, jitter, (len(rows), 2)) * xywh[:, 3:4]
        xywh[:, 2:4] *= 1 + rng.normal(0, jitter, (len(rows), 2))
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]], axis=1)
        scores = np.clip(rng.normal(0.75, 0.2, len(rows)), 0.05, 1.0)
        n_false = rng.poisson(false_rate * len(rows) + 0.2)
        w = rng.uniform(30, 90, n_false)
        h = w * rng.uniform(1.8, 3.0, n_false)
        x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
        boxes = np.concatenate([boxes, np.stack([x, y, x + w, y + h], axis=1)])
        scores = np.concatenate([scores, rng.uniform(0.1, 0.7, n_false)])
        frames[f] = (boxes, scores)
    return frames


def track_ours(frames):
    tracker, out = Tracker(), {}
    for f in sorted(frames):
        boxes, scores = frames[f]
        ids = tracker.update(boxes, scores, ["person"] * len(boxes))
        out[f] = (boxes[ids > 0], ids[ids > 0])
    return out


def track_reference(frames):
    import supervision as sv
    from trackers import ByteTrackTracker

    tracker, out = ByteTrackTracker(), {}
    for f in sorted(frames):
        boxes, scores = frames[f]
        found = tracker.update(sv.Detections(xyxy=boxes.astype(np.float32), confidence=scores.astype(np.float32),
                                             class_id=np.zeros(len(boxes), int)))
        ids = found.tracker_id if found.tracker_id is not None else np.zeros(0, int)
        out[f] = (found.xyxy[ids >= 0], ids[ids >= 0].astype(int) + 1)
    return out


def score(gt: np.ndarray, tracked: dict) -> dict:
    import trackeval

    frames = sorted(np.unique(gt[:, 0]).astype(int))
    gt_ids = {g: i for i, g in enumerate(np.unique(gt[:, 1]).astype(int))}
    tr_ids = {t: i for i, t in enumerate(sorted({int(i) for _, ids in tracked.values() for i in ids}))}
    data = {"num_timesteps": len(frames), "num_gt_ids": len(gt_ids), "num_tracker_ids": len(tr_ids),
            "gt_ids": [], "tracker_ids": [], "similarity_scores": [], "num_gt_dets": 0, "num_tracker_dets": 0}
    for f in frames:
        rows = gt[gt[:, 0] == f]
        truth = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
        boxes, ids = tracked.get(f, (np.zeros((0, 4)), np.zeros(0, int)))
        data["gt_ids"].append(np.array([gt_ids[int(i)] for i in rows[:, 1]], int))
        data["tracker_ids"].append(np.array([tr_ids[int(i)] for i in ids], int))
        data["similarity_scores"].append(iou_matrix(truth, boxes))
        data["num_gt_dets"] += len(rows)
        data["num_tracker_dets"] += len(ids)
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):  # TrackEval prints its configuration
        for metric in (trackeval.metrics.HOTA(), trackeval.metrics.Identity(), trackeval.metrics.CLEAR()):
            out.update(metric.eval_sequence(data))
    return {"HOTA": float(np.mean(out["HOTA"])), "IDF1": float(out["IDF1"]), "IDSW": int(out["IDSW"])}


@pytest.mark.parametrize("seq", SEQUENCES)
def test_tracker_when_fed_damaged_mot_ground_truth_scores_no_worse_than_trackers_bytetrack(seq):
    pytest.importorskip("trackers")
    pytest.importorskip("trackeval")
    gt = ground_truth(seq)
    ours, ref = [], []
    for seed in SEEDS:  # the same damaged detections for both trackers, seed by seed
        frames = damaged(gt, np.random.default_rng(seed))
        ours.append(score(gt, track_ours(frames)))
        ref.append(score(gt, track_reference(frames)))
    mean = lambda runs, k: float(np.mean([r[k] for r in runs]))  # noqa: E731
    summary = {k: (round(mean(ours, k), 3), round(mean(ref, k), 3)) for k in ("HOTA", "IDF1", "IDSW")}
    assert mean(ours, "HOTA") >= mean(ref, "HOTA"), summary
    assert mean(ours, "IDF1") >= mean(ref, "IDF1"), summary
    assert mean(ours, "IDSW") <= mean(ref, "IDSW"), summary
    assert mean(ours, "HOTA") > 0.45, summary  # and well above chance, on its own


def boxes_at(centres, size=40.0) -> np.ndarray:
    c = np.asarray(centres, dtype=float)
    return np.concatenate([c - size / 2, c + size / 2], axis=1)


def test_tracker_when_objects_move_keeps_their_ids_and_gives_none_before_confirmation():
    t = Tracker()
    first = t.update(boxes_at([[100, 100], [300, 100]]), [0.9, 0.9], ["person", "person"])
    assert list(first) == [-1, -1]  # tentative: ids come with the second match
    ids = None
    for step in range(1, 20):
        ids = t.update(boxes_at([[100 + 5 * step, 100], [300 - 5 * step, 100 + 2 * step]]), [0.9, 0.8],
                       ["person", "person"])
        if step == 1:
            first_ids = list(ids)
    assert first_ids == [1, 2] and list(ids) == [1, 2]


def test_tracker_when_an_object_is_missed_for_a_while_finds_it_again_within_lost_s_and_not_after():
    t = Tracker(lost_s=0.5, fps=10)
    for step in range(5):
        t.update(boxes_at([[100 + 4 * step, 100]]), [0.9], ["car"])
    for _ in range(3):  # 0.3 s unseen: still the same car when it reappears where it was heading
        assert list(t.update(np.zeros((0, 4)), [], [])) == []
    assert list(t.update(boxes_at([[100 + 4 * 8, 100]]), [0.9], ["car"])) == [1]
    for _ in range(8):  # 0.8 s unseen: that track has ended; a new one, with a new id, starts
        t.update(np.zeros((0, 4)), [], [])
    t.update(boxes_at([[100, 100]]), [0.9], ["car"])
    assert list(t.update(boxes_at([[100, 100]]), [0.9], ["car"])) == [2]


def test_tracker_when_low_score_detections_follow_a_track_they_extend_it_but_never_start_one():
    t = Tracker()
    for step in range(3):
        t.update(boxes_at([[100 + 3 * step, 100]]), [0.9], ["person"])
    # Half hidden: the detector is unsure, the track goes on (ByteTrack's second association).
    assert list(t.update(boxes_at([[109, 100]]), [0.3], ["person"])) == [1]
    # An unsure detection alone starts nothing.
    assert list(t.update(boxes_at([[112, 100], [400, 300]]), [0.9, 0.3], ["person", "person"]))[1] == -1


def test_tracker_when_labels_differ_never_mixes_them_and_never_reuses_an_id():
    t = Tracker(min_hits=1)
    a = t.update(boxes_at([[100, 100], [102, 101]]), [0.9, 0.9], ["person", "dog"])
    b = t.update(boxes_at([[102, 101], [100, 100]]), [0.9, 0.9], ["dog", "person"])  # rows swapped
    assert sorted(a) == [1, 2] and list(b) == [a[1], a[0]]
    seen = set(a)
    for step in range(30):  # objects come and go: every new track gets a new number
        ids = t.update(boxes_at([[50 + 60 * (step % 7), 400]]), [0.9], [step % 3])
        new = {int(i) for i in ids if i > 0} - seen
        assert all(i > max(seen) for i in new)
        seen |= new


def test_tracking_benchmark_when_run_briefly_reports_a_cost_per_frame_for_each_box_count():
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run([sys.executable, "-m", "benchmarks.tracking", "--boxes", "10,50", "--frames", "60",
                           "--repeats", "1", "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"10", "50"}
    assert all(0 < r["p50"]["median"] <= r["p99"]["median"] for r in result.values())
