"""Sources on real media: files (looping, pacing), GStreamer's clear refusal, frame stamping."""

from __future__ import annotations

import time

import cv2
import pytest

from pipeline.errors import SourceError
from pipeline.settings import SourceSettings
from pipeline.sources import make_source
from pipeline.sources.csi import opencv_has_gstreamer
from tests.conftest import read_jsonl, run_perceptd


def test_file_source_when_read_to_the_end_gives_every_frame_with_rising_pts(carphone):
    src = make_source(SourceSettings(name="car", uri=str(carphone)))
    info = src.open()
    assert (info.width, info.height, info.frame_count) == (176, 144, 120) and abs(info.fps - 29.97) < 0.01
    pts = []
    while True:
        ok, image, t = src.read()
        if not ok:
            break
        assert image.shape == (144, 176, 3)
        pts.append(t)
    src.close()
    assert len(pts) == 120
    assert pts == sorted(pts) and pts[0] == 0 and 3900 < pts[-1] < 4000


def test_file_source_when_given_an_output_buffer_decodes_into_it(carphone):
    import numpy as np

    src = make_source(SourceSettings(name="car", uri=str(carphone)))
    src.open()
    src.read()  # the probe frame
    buf = np.zeros((144, 176, 3), np.uint8)
    ok, image, _ = src.read(buf)
    src.close()
    assert ok and image.shape == buf.shape and image.any()


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer")
def test_gstreamer_source_when_opencv_lacks_gstreamer_says_so():
    src = make_source(SourceSettings(name="csi", uri="videotestsrc ! videoconvert ! appsink"))
    with pytest.raises(SourceError, match="without GStreamer.*JetPack"):
        src.open()


def test_camera_source_when_the_device_does_not_exist_names_it():
    src = make_source(SourceSettings(name="cam", uri="/dev/video97"))
    with pytest.raises(SourceError, match="/dev/video97"):
        src.open()


def test_sample_uri_when_resolved_is_the_packaged_clip(carphone):
    src = make_source(SourceSettings(name="s", uri="sample:carphone"))
    assert src.path == carphone


def test_run_when_a_file_loops_numbers_frames_across_loops(carphone, tmp_path, cache_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources:\n  - {{name: car, uri: '{carphone}', loop: true, max_frames: 300}}\n"
                   f"sinks: {{output_dir: '{tmp_path / 'out'}'}}\nmetrics: {{enabled: false}}\n")
    run_perceptd("run", "-c", str(cfg), cache_dir=cache_dir, check=True)
    records = read_jsonl(tmp_path / "out" / "car.jsonl")
    assert [r["frame"] for r in records] == list(range(300))
    assert records[120]["pts_ms"] < records[119]["pts_ms"]  # the clip started again


def test_run_when_a_file_is_paced_takes_at_least_its_duration(carphone, tmp_path, cache_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources:\n  - {{name: car, uri: '{carphone}', realtime: true, speed: 2, max_frames: 60}}\n"
                   f"sinks: {{output_dir: '{tmp_path / 'out'}'}}\nmetrics: {{enabled: false}}\n"
                   "pipeline: {drop_policy: block}\n")
    t0 = time.monotonic()
    proc = run_perceptd("run", "-c", str(cfg), cache_dir=cache_dir, check=True)
    elapsed = time.monotonic() - t0
    # 60 frames at 2 x 29.97 fps cannot come faster than ~1 s (a lower bound only: the machine may be slow).
    assert elapsed >= 60 / (2 * 29.97) - 0.05, proc.stderr
    assert len(read_jsonl(tmp_path / "out" / "car.jsonl")) == 60


def test_run_when_the_source_is_a_gstreamer_pipeline_without_gstreamer_exits_2(tmp_path, cache_dir):
    if opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    proc = run_perceptd("run", "--source", "gst:videotestsrc ! appsink", "--output", str(tmp_path),
                        "--metrics-port", "0", cache_dir=cache_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("perceptd: error: source 'gst'")
    assert "Traceback" not in proc.stderr
    assert cv2.__version__ in proc.stderr


def test_run_when_video_is_segmented_writes_playable_files_that_add_up(carphone, tmp_path, cache_dir):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"sources:\n  - {{name: car, uri: '{carphone}', realtime: true, speed: 2, loop: true, "
                   "max_frames: 150}\n"
                   f"sinks: {{output_dir: '{tmp_path / 'out'}', video: {{segment_s: 1}}, events: {{segment_s: 1}}}}\n"
                   "metrics: {enabled: false}\npipeline: {drop_policy: block}\n")
    run_perceptd("run", "-c", str(cfg), cache_dir=cache_dir, check=True)
    from tests.conftest import count_video_frames

    files = sorted((tmp_path / "out").glob("car*.mp4"))
    logs = sorted(p for p in (tmp_path / "out").glob("car*.jsonl") if not p.name.endswith(".events.jsonl"))
    assert (tmp_path / "out" / "car.mp4") in files and len(files) >= 2, files  # 2.5 s of frames, 1 s files
    assert (tmp_path / "out" / "car.jsonl") in logs and len(logs) >= 2, logs
    records = [r for f in logs for r in read_jsonl(f)]
    assert sorted(r["frame"] for r in records) == list(range(150))
    assert sum(count_video_frames(f) for f in files) == 150
    assert not list((tmp_path / "out").glob(".*partial*"))
