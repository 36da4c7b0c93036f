"""The recorder thread: real decoded frames into a real video file, in order, every slot handed back."""

from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np

from pipeline.encoders.opencv import OpenCVEncoder
from pipeline.frame import Frame
from pipeline.metrics import Metrics
from pipeline.sinks.files import VideoFileSink
from pipeline.sinks.guard import SinkGuard
from pipeline.sinks.outdir import OutputDir
from pipeline.sinks.recorder import RECORDER_NICE, Recorder
from tests.conftest import count_video_frames, read_jsonl


def recorder(directory, release, observe, fourcc="MJPG", ext=".avi", retry_s=5.0):
    out = OutputDir(directory)
    out.open()
    metrics = Metrics()
    video = VideoFileSink(out, "car", out.claim("car", (ext,)), OpenCVEncoder(fourcc), ext, lambda: 30.0)
    return Recorder("car", video, release, observe, SinkGuard("car", "video", metrics, retry_s)), metrics


def frames_of(clip, n: int) -> list[Frame]:
    cap = cv2.VideoCapture(str(clip))
    out = []
    for i in range(n):
        ok, image = cap.read()
        assert ok
        out.append(Frame("car", i, i * 33.3, 0, 0, "pool", i, image))
    cap.release()
    return out


def test_recorder_when_fed_frames_writes_them_in_order_and_releases_each_once(carphone, tmp_path):
    frames = frames_of(carphone, 40)
    released, times = [], []
    lock = threading.Lock()

    def release(frame):
        with lock:
            released.append(frame.index)

    rec, _ = recorder(tmp_path, release, times.append)
    rec.start()
    for f in frames:
        rec.put(f)
    # Its thread runs below this one's priority, so encoding yields a contended core.
    # (set first thing in the thread: wait for it rather than race it)
    want = os.getpriority(os.PRIO_PROCESS, 0) + RECORDER_NICE
    deadline = time.monotonic() + 10
    while os.getpriority(os.PRIO_PROCESS, rec._thread.native_id) != want and time.monotonic() < deadline:
        time.sleep(0.01)
    assert os.getpriority(os.PRIO_PROCESS, rec._thread.native_id) == want
    rec.close()
    assert rec.guard.up and rec.video.files == [tmp_path / "car.avi"]
    assert released == list(range(40))
    assert len(times) == 40 and all(t > 0 for t in times)
    assert count_video_frames(tmp_path / "car.avi") == 40
    # The frames went in in order: MJPG is intra-only, so each decoded frame is close to its source.
    cap = cv2.VideoCapture(str(tmp_path / "car.avi"))
    for k in (0, 17, 39):
        cap.set(cv2.CAP_PROP_POS_FRAMES, k)
        ok, got = cap.read()
        assert ok
        errors = [np.abs(got.astype(int) - f.image.astype(int)).mean() for f in frames]
        assert int(np.argmin(errors)) == k
    assert not list(tmp_path.glob(".*partial*"))


def test_recorder_when_the_directory_vanishes_pauses_frees_every_slot_and_resumes_in_a_new_file(carphone, tmp_path):
    """An unmounted disk, say: writes fail, the recording pauses (counted), every slot still comes back, and
    once the directory is back the next retry records into a new file; the first file stays whole."""
    frames = frames_of(carphone, 30)
    released = []
    directory = tmp_path / "out"
    directory.mkdir()
    rec, metrics = recorder(directory, lambda f: released.append(f.index), lambda t: None, retry_s=0.2)
    rec.start()
    for f in frames[:10]:
        rec.put(f)
    wait = time.monotonic() + 10
    while len(released) < 10 and time.monotonic() < wait:
        time.sleep(0.01)
    rec.video.close()  # the first file, finalised
    first = directory / "car.avi"
    assert count_video_frames(first) == 10
    kept = directory.with_name("kept")
    directory.rename(kept)  # gone: the next file cannot be created
    for f in frames[10:20]:
        rec.put(f)
    while len(released) < 20 and time.monotonic() < wait:
        time.sleep(0.01)
    assert not rec.guard.up and "No such file" in rec.guard.error
    value = metrics.registry.get_sample_value
    assert value("perceptd_sink_up", {"source": "car", "sink": "video"}) == 0
    assert value("perceptd_sink_errors_total", {"source": "car", "sink": "video"}) >= 1
    kept.rename(directory)
    time.sleep(0.3)  # past retry_s: the next frame is tried again
    for f in frames[20:]:
        rec.put(f)
    rec.close()
    assert sorted(released) == list(range(30))
    assert rec.guard.up
    skipped = value("perceptd_sink_frames_skipped_total", {"source": "car", "sink": "video"})
    assert skipped == 10
    second = [p for p in rec.video.files if p != first]
    assert len(second) == 1 and second[0].name.startswith("car.") and count_video_frames(second[0]) == 10
    assert count_video_frames(first) == 10
    assert not list(directory.glob(".*partial*"))


def test_source_output_when_one_frame_cannot_be_drawn_or_logged_skips_it_alone_and_counts_it(carphone, tmp_path):
    """A misbehaving model's NaN box: the overlay cannot draw it and JSON cannot carry it. That frame is
    skipped by those outputs (counted), nothing pauses, every frame is processed and every slot freed."""
    import math

    from pipeline.frame import Detection, WorkResult
    from pipeline.settings import SinkSettings
    from pipeline.sinks import SourceOutput

    out = OutputDir(tmp_path)
    out.open()
    metrics = Metrics()
    released = []
    settings = SinkSettings(output_dir=tmp_path, video={"codec": "MJPG", "extension": ".avi"})
    output = SourceOutput("car", settings, out, lambda: 30.0, metrics, lambda f: released.append(f.index))
    output.start()
    good = (Detection("face", 0.9, (10.0, 10.0, 50.0, 60.0)),)
    bad = (Detection("face", 0.9, (math.nan, 10.0, 50.0, 60.0)),)
    for f in frames_of(carphone, 3):
        output.put(f, WorkResult(0, f.index, f.slot, bad if f.index == 1 else good, 0, 1, 1, 1, 1))
    output.close()
    value = lambda name, sink: metrics.registry.get_sample_value(name, {"source": "car", "sink": sink})  # noqa: E731
    assert output.processed == 3 and sorted(released) == [0, 1, 2]
    assert value("perceptd_sink_errors_total", "overlay") == 1 and value("perceptd_sink_errors_total", "events") == 1
    assert value("perceptd_sink_up", "overlay") == 1 and value("perceptd_sink_up", "events") == 1
    assert [r["frame"] for r in read_jsonl(tmp_path / "car.jsonl")] == [0, 2]  # every line valid JSON
    assert count_video_frames(tmp_path / "car.avi") == 3  # the bad frame recorded undrawn
