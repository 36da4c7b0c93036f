"""The recorder thread: real decoded frames into a real video file, in order, every slot handed back."""

from __future__ import annotations

import os
import threading
import time

import cv2
import numpy as np

from pipeline.frame import Frame
from pipeline.sinks.files import VideoFileSink
from pipeline.sinks.recorder import RECORDER_NICE, Recorder
from tests.conftest import count_video_frames


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

    video = VideoFileSink(tmp_path / "car.avi", "MJPG", lambda: 30.0)
    rec = Recorder("car", video, release, times.append)
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
    assert rec.error is None
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


def test_recorder_when_the_video_cannot_be_written_reports_it_and_still_frees_every_slot(carphone, tmp_path):
    frames = frames_of(carphone, 10)
    released = []
    video = VideoFileSink(tmp_path / "car.mp4", "ZZZZ", lambda: 30.0)  # no such codec: opening fails
    rec = Recorder("car", video, lambda f: released.append(f.index), lambda t: None)
    rec.start()
    for f in frames:
        rec.put(f)
    rec.close()
    assert rec.error is not None and "sinks.video.fourcc" in str(rec.error)
    assert sorted(released) == list(range(10))
    assert not (tmp_path / "car.mp4").exists()
