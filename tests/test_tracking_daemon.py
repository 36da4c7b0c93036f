"""Tracking in the daemon, end to end on real video: faces keep their ids, a clip made from a real photo
moving across a line gives exactly the crossings it was made with (and the zone the matching enter/exit
pairs), events and metrics agree, and bad zone or line settings get the usual one-line errors."""

from __future__ import annotations

import re

import cv2
import pytest

from tests.conftest import photo_bgr, read_jsonl, run_perceptd
from tests.daemon import Daemon


@pytest.fixture(scope="module")
def crossing_clip(tmp_path_factory):
    """The astronaut's face (a real photo) gliding right across the middle of a 640x360 frame, then back:
    two crossings of x = 320 made on purpose, and nothing else moving."""
    face = photo_bgr("astronaut")[20:240, 150:330]  # her head and shoulders, 180x220
    h, w = face.shape[:2]
    background = cv2.GaussianBlur(cv2.resize(photo_bgr("coffee"), (640, 360)), (0, 0), 8)
    clip = tmp_path_factory.mktemp("clips") / "crossing.avi"
    path = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 360))
    xs = list(range(40, 420, 10)) + list(range(420, 40, -10))  # the face's left edge: centre 130 -> 510 -> 130
    for x in xs:
        frame = background.copy()
        frame[70:70 + h, x:x + w] = face
        path.write(frame)
    path.release()
    return clip, len(xs)


def test_tracking_when_a_face_moves_across_a_line_and_a_zone_reports_exactly_the_crossings_made(
        crossing_clip, tmp_path, cache_dir):
    clip, frames = crossing_clip
    source = {"name": "hall", "uri": str(clip),
              "lines": [{"name": "middle", "points": [[0.5, 0.0], [0.5, 1.0]]}],
              "zones": [{"name": "east", "polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]],
                         "labels": ["face"]}]}
    with Daemon(tmp_path, cache_dir, [source], metrics={"linger_s": 60}) as d:
        d.start()
        d.wait_log(r"source 'hall': \d+ captured", timeout=120)  # the file ended and everything is written
        m = d.scrape()
        assert d.stop() == 0, d.log
    records = read_jsonl(d.out / "hall.jsonl")
    assert len(records) == frames and all(r["inferred"] for r in records)
    ids = [det["track_id"] for r in records for det in r["detections"]]
    tracked = [i for i in ids if i > 0]
    assert len(set(tracked)) == 1 and len(tracked) >= 0.95 * frames  # one face, one id, nearly every frame
    events = read_jsonl(d.out / "hall.events.jsonl")
    kinds = [(e["type"], e.get("line") or e.get("zone"), e.get("direction")) for e in events]
    assert kinds == [("new", None, None), ("enter", "east", None), ("cross", "middle", "right"),
                     ("exit", "east", None), ("cross", "middle", "left"), ("end", None, None)] or kinds == [
        ("new", None, None), ("cross", "middle", "right"), ("enter", "east", None), ("cross", "middle", "left"),
        ("exit", "east", None), ("end", None, None)], kinds
    assert {e["track_id"] for e in events} == set(tracked)
    frames_of = {e["type"] + (e.get("direction") or ""): e["frame"] for e in events}
    assert frames_of["new"] < frames_of["crossright"] < frames_of["crossleft"] < frames_of["end"]
    end = events[-1]
    assert end["first_seen"] <= end["last_seen"] and end["best_score"] >= end["score"] > 0.8
    assert m['perceptd_line_crossings_total{direction="right",label="face",line="middle",source="hall"}'] == 1
    assert m['perceptd_line_crossings_total{direction="left",label="face",line="middle",source="hall"}'] == 1
    assert m['perceptd_tracks_total{label="face",source="hall"}'] == 1
    assert m['perceptd_zone_objects{label="face",source="hall",zone="east"}'] == 0  # left again, then ended


def test_tracking_when_faces_stay_in_view_keeps_one_id_per_face_through_a_real_clip(carphone, tmp_path, cache_dir):
    proc = run_perceptd("run", "--source", f"car={carphone}", "--output", str(tmp_path), "--metrics-port", "0",
                        cache_dir=cache_dir, check=True)
    records = read_jsonl(tmp_path / "car.jsonl")
    ids = [det["track_id"] for r in records for det in r["detections"]]
    assert ids.count(1) >= 0.95 * len(records) and set(ids) <= {1, -1}, ids  # -1: before it is confirmed
    events = read_jsonl(tmp_path / "car.events.jsonl")
    assert [(e["type"], e["track_id"]) for e in events] == [("new", 1), ("end", 1)]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("bad, message", [
    ({"zones": [{"name": "z", "polygon": [[0, 0], [1, 1]]}]}, r"zones\[0\]\.polygon: a zone needs at least 3 points"),
    ({"lines": [{"name": "l", "points": [[0, 0], [0.5, 0.5], [1, 1]]}]}, r"lines\[0\]\.points: a line needs exactly 2"),
    ({"lines": [{"name": "l", "points": [[-5, 0], [1, 1]]}]}, r"not negative: \[-5, 0\]"),
    ({"lines": [{"name": "l", "points": [[0, 0], [1, 1]]}], "zones": [{"name": "l", "polygon": [[0, 0], [1, 0], [1, 1]]}]},
     r"names must be unique per source: l is used twice"),
])
def test_scene_settings_when_wrong_exit_2_with_the_yaml_line(bad, message, tmp_path, cache_dir):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"name": "door", "uri": "a.mp4", **bad}]}, sort_keys=False))
    proc = run_perceptd("check-config", str(cfg), cache_dir=cache_dir)
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert re.search(rf"perceptd: error: {re.escape(str(cfg))}:\d+: sources\[0\]\.", line), line
    assert re.search(message, line), line
    assert "Traceback" not in proc.stderr


def test_scene_labels_when_a_filter_names_a_label_the_model_never_reports_warns_with_its_labels(
        carphone, tmp_path, cache_dir):
    source = {"name": "car", "uri": str(carphone), "max_frames": 5,
              "zones": [{"name": "porch", "polygon": [[0, 0], [1, 0], [1, 1]], "labels": ["person"]}]}
    with Daemon(tmp_path, cache_dir, [source]) as d:
        d.start()
        assert d.proc.wait(120) == 0
    assert "zone 'porch' counts person, which retinaface never reports; its labels: face" in d.log


def test_detect_fps_when_set_infers_that_often_and_fills_the_frames_between_with_the_tracks(
        carphone, tmp_path, cache_dir):
    """carphone at 29.97 fps with detect_fps 5: about one frame in six goes through the model; every frame is
    still written, in order, the others carrying the face's predicted box and its id."""
    source = {"name": "car", "uri": str(carphone), "detect_fps": 5}
    with Daemon(tmp_path, cache_dir, [source], metrics={"linger_s": 60}) as d:
        d.start()
        d.wait_log(r"source 'car': \d+ captured", timeout=120)
        m = d.scrape()
        assert d.stop() == 0, d.log
    records = read_jsonl(d.out / "car.jsonl")
    assert [r["frame"] for r in records] == list(range(120))
    inferred = [r["frame"] for r in records if r["inferred"]]
    assert 18 <= len(inferred) <= 22 and inferred[0] == 0, inferred  # 4 s of video at 5 per second
    assert all(5 <= b - a <= 7 for a, b in zip(inferred, inferred[1:])), inferred  # evenly, in stream time
    assert m["perceptd_batch_size_frames_sum"] == len(inferred)  # only those reached the worker
    assert m['perceptd_stage_latency_seconds_count{source="car",stage="inference"}'] == len(inferred)
    assert m['perceptd_frames_processed_total{source="car"}'] == 120
    confirmed = inferred[1]  # the second detection confirms the track
    for r in records[confirmed:]:
        assert [det["track_id"] for det in r["detections"]] == [1], r  # predicted or detected, the same face
    assert d.accounting()["car"] == (120, 120, 0)


def test_detect_fps_when_a_live_source_outpaces_the_worker_drops_nothing_it_can_predict(
        carphone, tmp_path, cache_dir):
    source = {"name": "cam", "uri": str(carphone), "realtime": True, "speed": 2, "loop": True, "max_frames": 240,
              "detect_fps": 4}
    with Daemon(tmp_path, cache_dir, [source], model={"input_size": [480, 640]}) as d:
        d.start()
        assert d.proc.wait(120) == 0, d.log
    records = read_jsonl(d.out / "cam.jsonl")
    captured, processed, dropped = d.accounting()["cam"]
    assert captured == 240 and processed + dropped == 240 and processed == len(records)
    inferred = sum(r["inferred"] for r in records)
    # 240 frames at 60 fps are 4 s: about 16 detections; the other frames are predictions, not drops.
    assert 10 <= inferred <= 20 and processed >= 0.9 * 240, (inferred, processed, dropped)
