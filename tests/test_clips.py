"""Event clips and snapshots on real video: a clip covers its pre-roll, the event and its post-roll and
plays; overlapping tracks share one clip; the snapshot shows the object; retention covers them too."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.conftest import count_video_frames, photo_bgr, read_jsonl, video_stream
from tests.daemon import Daemon

FPS = 25.0


def face() -> np.ndarray:
    return photo_bgr("astronaut")[20:240, 150:330]


def scene(path, spans: list[tuple[int, int, int]], frames: int) -> None:
    """A 640x360 clip where the face is shown at x during each (first, last, x) span, and nothing else."""
    background = cv2.GaussianBlur(cv2.resize(photo_bgr("coffee"), (640, 360)), (0, 0), 8)
    f = face()
    h, w = f.shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 360))
    for k in range(frames):
        image = background.copy()
        for first, last, x in spans:
            if first <= k <= last:
                image[70:70 + h, x + (k % 4):x + (k % 4) + w] = f  # a little motion, as a real face has
        out.write(image)
    out.release()


@pytest.fixture(scope="module")
def appearing(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "appearing.avi"
    scene(path, [(50, 99, 230)], 150)  # empty 2 s, the face 2 s, empty 2 s
    return path


def run(tmp_path, cache_dir, clip, **sinks):
    source = {"name": "hall", "uri": str(clip)}
    settings = {"clips": {"enabled": True, "pre_s": 1, "post_s": 1}, "snapshots": {"enabled": True}, **sinks}
    with Daemon(tmp_path, cache_dir, [source], sinks=settings) as d:
        d.start()
        assert d.proc.wait(120) == 0, d.log
    return d


def test_clip_when_a_face_appears_covers_pre_roll_event_and_post_roll_and_the_snapshot_shows_it(
        appearing, tmp_path, cache_dir):
    d = run(tmp_path, cache_dir, appearing)
    events = read_jsonl(d.out / "hall.events.jsonl")
    assert [e["type"] for e in events] == ["new", "end"]
    new, end = events
    assert new["clip"] == end["clip"] and new["clip"].startswith("clips/hall/hall.")
    clip = d.out / new["clip"]
    frames = count_video_frames(clip)  # it plays, and holds:
    pre, during, post = int(FPS * 1), 50, int(FPS * 1)
    # A second before the face, the 50 frames with it, and a second after its track ended (it ends lost_s
    # after the face went): the clip runs to the end of the file, which comes just after that.
    assert frames >= pre + during + post, frames
    assert frames <= 150 - (new["frame"] - pre) + 1  # and nothing from before its pre-roll
    first = cv2.VideoCapture(str(clip)).read()[1]
    assert cv2.matchTemplate(first, face(), cv2.TM_CCOEFF_NORMED).max() < 0.8  # it starts before the face
    # The snapshot is the best-scored frame, annotated: the face is in it; the crop is around the face.
    shot = cv2.imread(str(d.out / end["snapshot"]))
    crop = cv2.imread(str(d.out / end["crop"]))
    assert shot.shape == (360, 640, 3) and cv2.matchTemplate(shot, face()[60:160, 40:140],
                                                             cv2.TM_CCOEFF_NORMED).max() > 0.8
    assert crop.shape[0] < 360 and cv2.matchTemplate(crop, face()[70:150, 50:130], cv2.TM_CCOEFF_NORMED).max() > 0.8
    assert "wrote clip" in d.log and "(" in d.log.split("wrote clip", 1)[1].split("\n")[0]  # says its codec
    assert video_stream(clip)["codec_name"] == "h264"  # the recording's choice: browsers play clips too
    assert not list(d.out.rglob(".*.partial.*"))


def test_clip_when_tracks_overlap_is_shared_and_a_later_one_gets_its_own(tmp_path, cache_dir):
    path = tmp_path / "overlap.avi"
    # Two faces overlapping in time (one clip), then, after a gap longer than post-roll, a third (a new clip).
    scene(path, [(10, 60, 20), (40, 90, 420), (160, 200, 230)], 230)
    d = run(tmp_path, cache_dir, path)
    events = read_jsonl(d.out / "hall.events.jsonl")
    news = [e for e in events if e["type"] == "new"]
    assert len(news) == 3
    assert news[0]["clip"] == news[1]["clip"] != news[2]["clip"]
    ends = {e["track_id"]: e for e in events if e["type"] == "end"}
    assert all(ends[n["track_id"]]["clip"] == n["clip"] for n in news)
    clips = sorted((d.out / "clips" / "hall").glob("*.mp4"))
    assert len(clips) == 2 and all(count_video_frames(c) > 0 for c in clips)
    assert len(list((d.out / "snapshots" / "hall").glob("*.crop.jpg"))) == 3


def test_clips_when_a_reload_changes_the_sinks_go_on_in_new_files_and_none_is_lost(appearing, tmp_path, cache_dir):
    import re
    import signal

    import yaml

    source = {"name": "hall", "uri": str(appearing), "loop": True, "realtime": True, "speed": 2}
    settings = {"clips": {"enabled": True, "pre_s": 1, "post_s": 1}, "snapshots": {"enabled": True}}
    with Daemon(tmp_path, cache_dir, [source], sinks=settings) as d:
        d.start()
        first = d.wait_log(r"wrote clip (\S+)", timeout=120)
        cfg = yaml.safe_load(d.config_path.read_text())
        cfg["sinks"]["clips"]["post_s"] = 0.5  # the outputs are reopened, the clip folder stays shared
        d.config_path.write_text(yaml.safe_dump(cfg))
        d.signal(signal.SIGHUP)
        reopened = d.wait_log(r"outputs reopened")
        d.wait_log(r"wrote clip (\S+)", after=reopened.end(), timeout=120)
        assert d.stop() == 0, d.log
    assert "reload failed" not in d.log and "Traceback" not in d.log
    clips = sorted((d.out / "clips" / "hall").glob("*.mp4"))
    assert len(clips) >= 2 and all(count_video_frames(c) > 0 for c in clips)
    assert len(set(re.findall(r"wrote clip (\S+)", d.log))) == len(re.findall(r"wrote clip (\S+)", d.log))
    assert first.group(1) in {str(c) for c in clips}
    assert not list(d.out.rglob(".*.partial.*"))
