"""H.264 recordings: what `codec: auto` picks here, checked with ffprobe and decoded back frame by frame; played
in a real headless Chromium (which refuses mp4v); a fragmented MP4 killed with SIGKILL recovered as playable,
by the writer and by the daemon; the GStreamer writers run under the system Python, whose OpenCV (Debian's
python3-opencv) is built with GStreamer."""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline import encoders
from pipeline.encoders.base import keyframe_interval
from pipeline.encoders.gstreamer import pipeline as gst_pipeline
from pipeline.errors import UserError
from pipeline.settings import SinkSettings
from pipeline.sinks.files import video_encoder
from pipeline.sinks.outdir import OutputDir
from tests.conftest import REPO, count_video_frames, decoded_frames, perceptd_env, run_perceptd, video_stream
from tests.daemon import Daemon
from tests.test_service import need
from tests.test_web import chromium

SYSTEM_PYTHON = "/usr/bin/python3"


def decoded(path: Path) -> list[np.ndarray]:
    """Every frame of `path`, decoded by PyAV (FFmpeg's H.264 decoder), as BGR."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


def assert_in_order(got: list[np.ndarray], sources: list[np.ndarray]) -> None:
    """Each decoded frame is closest to the source frame it was made from (drawn boxes and codec loss aside)."""
    for k in sorted({0, len(got) // 2, len(got) - 1}):
        errors = [np.abs(got[k].astype(int) - s[:got[k].shape[0], :got[k].shape[1]].astype(int)).mean()
                  for s in sources]
        assert int(np.argmin(errors)) == k, (k, int(np.argmin(errors)))


def top_level_boxes(path: Path) -> list[str]:
    data = path.read_bytes()
    names, i = [], 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        size = struct.unpack(">Q", data[i + 8:i + 16])[0] if size == 1 else (size or len(data) - i)
        names.append(kind.decode("latin-1"))
        i += size
    return names


KILLED_RECORDER = """
import os, sys
from pathlib import Path
import cv2
from pipeline.encoders import PyAVEncoder
from pipeline.sinks.files import VideoFileSink
from pipeline.sinks.outdir import OutputDir
directory, clip, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
out = OutputDir(directory)
out.open()
cap = cv2.VideoCapture(clip)
frames = []
while True:
    ok, image = cap.read()
    if not ok:
        break
    frames.append(image)
sink = VideoFileSink(out, "cam", out.claim("cam", (".mp4",)), PyAVEncoder(), ".mp4", lambda: 29.97)
for i in range(n):
    sink.write(frames[i % len(frames)])
print(sink.frames, flush=True)
os.kill(os.getpid(), 9)
"""


@pytest.fixture(scope="module")
def recording(carphone, tmp_path_factory, cache_dir) -> tuple[Path, str]:
    """perceptd's own recording of carphone with the default codec (auto), and its log."""
    out = tmp_path_factory.mktemp("h264") / "out"
    proc = run_perceptd("run", "--source", f"car={carphone}", "--output", str(out), "--metrics-port", "0",
                        cache_dir=cache_dir, check=True)
    return out / "car.mp4", proc.stderr


@pytest.fixture(scope="module")
def killed(carphone, tmp_path_factory) -> tuple[Path, int, list[Path]]:
    """A recorder (VideoFileSink with PyAV) SIGKILLed after 150 frames, then the next start's recovery:
    (directory, frames written, what recovery finalised)."""
    directory = tmp_path_factory.mktemp("killed")
    proc = subprocess.run([sys.executable, "-c", KILLED_RECORDER, str(directory), str(carphone), "150"],
                          capture_output=True, text=True, cwd=REPO, env=perceptd_env(directory))
    assert proc.returncode == -9, proc.stderr
    written = int(proc.stdout.split()[-1])
    out = OutputDir(directory)
    recovered = out.open()
    out.close()
    return directory, written, recovered


def test_recording_when_codec_is_auto_is_fragmented_main_profile_h264_holding_every_frame(recording, carphone):
    path, log = recording
    assert "video codec for .mp4: h264 (libx264 via pyav)" in log  # PyAV is in the test extra
    stream = video_stream(path)
    assert (stream["codec_name"], stream["profile"], stream["pix_fmt"]) == ("h264", "Main", "yuv420p"), stream
    assert (stream["width"], stream["height"], stream["nb_read_frames"]) == (176, 144, 120), stream
    boxes = top_level_boxes(path)
    # Fragmented: the header first, then a fragment (moof + mdat) per keyframe, 2 s each; finalised, so the
    # random-access index closes the file.
    assert boxes[:2] == ["ftyp", "moov"] and boxes.count("moof") == 2 and boxes[-1] == "mfra", boxes
    got = decoded(path)
    assert len(got) == 120 and count_video_frames(path) == 120  # OpenCV (the tests' counter) reads it too
    assert_in_order(got, decoded_frames(carphone))


def test_recovery_when_a_fragmented_recording_was_killed_keeps_it_playable_up_to_its_last_fragment(killed, carphone):
    directory, written, recovered = killed
    assert written == 150
    assert recovered == [directory / "cam.mp4"]  # under its own name: not *.unfinished.mp4
    got = decoded(directory / "cam.mp4")
    # Fragments close at each keyframe (every 60 frames at 29.97 fps): the open one dies with the process.
    assert written - keyframe_interval(29.97) <= len(got) < written, len(got)
    assert len(got) % keyframe_interval(29.97) == 0
    assert_in_order(got, decoded_frames(carphone))
    assert video_stream(directory / "cam.mp4")["nb_read_frames"] == len(got)


def test_daemon_when_killed_mid_recording_then_restarted_recovers_an_h264_file_that_plays(carphone, tmp_path,
                                                                                          cache_dir):
    src = [{"name": "car", "uri": str(carphone), "loop": True, "realtime": True}]
    sinks = {"video": {"segment_s": 0}}
    with Daemon(tmp_path, cache_dir, src, name="killed", sinks=sinks) as killed:
        killed.start()
        killed.wait_processed("car", 150)  # past two keyframes: at least two whole fragments on disk
        killed.kill_group()
    assert ".car.partial.mp4" in [p.name for p in killed.out.glob(".*.partial.*")]
    with Daemon(tmp_path, cache_dir, src, name="clean", sinks=sinks) as clean:
        clean.start()
        assert "recovered " in clean.log and "players cannot open it" not in clean.log, clean.log
        assert clean.stop() == 0, clean.log
    assert not list(clean.out.glob("*unfinished*"))
    stream = video_stream(clean.out / "car.mp4")  # the killed run's file, recovered under its own name
    assert stream["codec_name"] == "h264" and stream["nb_read_frames"] >= keyframe_interval(29.97)


def test_recording_when_opened_in_headless_chromium_plays_to_the_end_and_mp4v_does_not(recording, killed, carphone,
                                                                                      tmp_path):
    mp4v = tmp_path / "mp4v.mp4"
    writer = encoders.OpenCVEncoder("mp4v").open(mp4v, 29.97, (176, 144))
    for image in decoded_frames(carphone):
        writer.write(image)
    writer.close()
    videos = {"h264": recording[0], "recovered": killed[0] / "cam.mp4", "mp4v": mp4v}
    page = tmp_path / "page.html"
    page.write_text("<!doctype html><html><body></body></html>")
    # A <video> loads the file, decodes its first frame, then seeks to its last fraction of a second.
    script = """
        const [src, done] = [arguments[0], arguments[arguments.length - 1]];
        const v = document.createElement('video');
        v.muted = true; v.preload = 'auto';
        const report = what => done({what, width: v.videoWidth, height: v.videoHeight, ready: v.readyState,
                                     duration: v.duration, at: v.currentTime, error: v.error && v.error.code});
        v.onerror = () => report('error');
        v.onloadeddata = () => { v.onseeked = () => report('seeked'); v.currentTime = v.duration - 0.1; };
        v.src = src;
        document.body.appendChild(v);
    """
    driver = chromium(tmp_path, "--allow-file-access-from-files")
    try:
        driver.set_script_timeout(60)
        driver.get(page.as_uri())
        played = {name: driver.execute_async_script(script, path.as_uri()) for name, path in videos.items()}
    finally:
        driver.quit()
    for name in ("h264", "recovered"):
        r = played[name]
        assert r["what"] == "seeked" and (r["width"], r["height"]) == (176, 144) and r["ready"] >= 2, (name, r)
        assert r["at"] > r["duration"] - 0.2, (name, r)
    assert abs(played["h264"]["duration"] - 120 / 29.97) < 0.1, played["h264"]
    assert played["mp4v"]["what"] == "error" and played["mp4v"]["error"] == 4, played["mp4v"]  # not supported


def test_pyav_writer_when_a_side_is_odd_crops_it_and_keeps_an_ntsc_rate(tmp_path, carphone):
    """4:2:0 H.264 needs even sides: one column and one row are dropped, not the picture scaled."""
    sources = [f[:143, :175] for f in decoded_frames(carphone)[:30]]
    writer = encoders.PyAVEncoder().open(tmp_path / "odd.mp4", 30000 / 1001, (175, 143))
    for image in sources:
        writer.write(image)
    writer.close()
    stream = video_stream(tmp_path / "odd.mp4")
    assert (stream["width"], stream["height"], stream["nb_read_frames"]) == (174, 142, 30)
    import av

    with av.open(str(tmp_path / "odd.mp4")) as container:
        assert container.streams.video[0].average_rate == Fraction(30000, 1001)
    assert_in_order(decoded(tmp_path / "odd.mp4"), sources)


def test_video_encoder_when_the_old_fourcc_key_is_used_keeps_its_codec_and_logs_the_new_name(tmp_path, caplog):
    video = SinkSettings(video={"fourcc": "MJPG", "extension": ".avi"}).video
    assert video.codec == "MJPG"
    with caplog.at_level(logging.WARNING, logger="pipeline.sinks.files"):
        encoder = video_encoder(video, tmp_path)
    assert (encoder.backend, encoder.name) == ("opencv", "MJPG")
    assert "sinks.video.fourcc is the old name of sinks.video.codec" in caplog.text
    with pytest.raises(Exception, match="fourcc is the old name of codec: keep only codec"):
        SinkSettings(video={"fourcc": "MJPG", "codec": "auto"})
    with pytest.raises(Exception, match="use auto, h264, or a 4-character OpenCV FourCC"):
        SinkSettings(video={"codec": "h265x"})


def test_video_encoder_when_no_encoder_writes_the_codec_fails_in_one_line_naming_the_key(tmp_path):
    with pytest.raises(UserError) as err:
        video_encoder(SinkSettings(video={"codec": "zzzz"}).video, tmp_path)
    message = str(err.value)
    assert message.startswith("sinks.video.codec: no encoder here writes zzzz into .mp4 files (zzzz: ")
    assert "\n" not in message and "codec: auto" in message
    assert not list(tmp_path.iterdir())  # the probe's file is gone


def test_jetson_pipeline_when_nvenc_is_chosen_uploads_to_nvmm_and_writes_fragmented_mp4():
    """The string OpenCV hands GStreamer on a Jetson (not run here: no NVENC on this machine)."""
    launch = gst_pipeline("nvv4l2h264enc", Path("/rec/front door.mp4"), 25.0, (1280, 720))
    assert launch == (
        "appsrc ! videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! video/x-raw(memory:NVMM),format=NV12 ! "
        "nvv4l2h264enc profile=2 insert-sps-pps=true iframeinterval=50 idrinterval=50 bitrate=2304000 ! "
        'h264parse ! mp4mux fragment-duration=2000 ! filesink location="/rec/front door.mp4" buffer-mode=unbuffered')


GSTREAMER_WRITER = """
import json, logging, os, sys
from pathlib import Path
import cv2
from pipeline import encoders
logging.basicConfig(level=logging.INFO, format="%(message)s")
directory, clip, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
cap = cv2.VideoCapture(clip)
frames = []
while True:
    ok, image = cap.read()
    if not ok:
        break
    frames.append(image)
if mode == "kill":  # written, then killed once two fragments are on disk (mp4mux works in its own thread)
    writer = encoders.GStreamerEncoder("x264enc").open(directory / ".cam.partial.mp4", 29.97, (176, 144))
    for i in range(150):
        writer.write(frames[i % len(frames)])
    import time
    deadline = time.monotonic() + 60
    while (directory / ".cam.partial.mp4").read_bytes().count(b"moof") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(os.getpid(), 9)
chosen = encoders.choose("h264", ".mp4", directory)
for name in ("x264enc", "openh264enc"):
    writer = encoders.GStreamerEncoder(name).open(directory / f"{name}.mp4", 29.97, (176, 144))
    for image in frames:
        writer.write(image)
    writer.close()
print(json.dumps({"chosen": chosen.name}))
"""


def system_python_with_gstreamer() -> None:
    ok = Path(SYSTEM_PYTHON).exists() and subprocess.run(
        [SYSTEM_PYTHON, "-c", "import cv2, sys; sys.exit('GStreamer:                   YES' not in "
                              "cv2.getBuildInformation())"], capture_output=True).returncode == 0
    need(ok, "Debian's python3-opencv (an OpenCV built with GStreamer) for the system Python")


def test_gstreamer_writers_when_opencv_has_gstreamer_write_h264_that_decodes_back(tmp_path, carphone):
    system_python_with_gstreamer()
    proc = subprocess.run([SYSTEM_PYTHON, "-c", GSTREAMER_WRITER, str(tmp_path), str(carphone), "write"],
                          capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # No Jetson here and no PyAV in the system Python: the chain passes over both and takes x264enc.
    assert json.loads(proc.stdout.splitlines()[-1]) == {"chosen": "x264enc"}, proc.stderr
    assert "nvv4l2h264enc: GStreamer cannot start a pipeline with nvv4l2h264enc" in proc.stderr
    assert "libx264: PyAV is not installed" in proc.stderr
    sources = decoded_frames(carphone)
    for name, profile in (("x264enc", "Main"), ("openh264enc", "Constrained Baseline")):
        stream = video_stream(tmp_path / f"{name}.mp4")
        assert (stream["codec_name"], stream["profile"], stream["pix_fmt"]) == ("h264", profile, "yuv420p"), stream
        assert (stream["width"], stream["height"], stream["nb_read_frames"]) == (176, 144, 120), stream
        assert "moof" in top_level_boxes(tmp_path / f"{name}.mp4")  # fragmented, as the PyAV path
        assert_in_order(decoded(tmp_path / f"{name}.mp4"), sources)


def test_gstreamer_writer_when_killed_mid_write_is_recovered_playable(tmp_path, carphone):
    system_python_with_gstreamer()
    proc = subprocess.run([SYSTEM_PYTHON, "-c", GSTREAMER_WRITER, str(tmp_path), str(carphone), "kill"],
                          capture_output=True, text=True, cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"},
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    out = OutputDir(tmp_path)
    assert out.open() == [tmp_path / "cam.mp4"]
    out.close()
    got = decoded(tmp_path / "cam.mp4")
    assert keyframe_interval(29.97) <= len(got) < 150  # two 2-second fragments at least
    assert_in_order(got, decoded_frames(carphone))


def test_encoder_benchmark_when_run_briefly_reports_cpu_and_bitrate(cache_dir):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.encoders", "--clip", "sample:carphone", "--encoders",
                           "libx264,mp4v", "--frames", "10", "--warmup", "2", "--repeats", "1", "--held", "5",
                           "--json"], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=perceptd_env(cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["encoders"]) == {"libx264", "mp4v"}
    for r in result["encoders"].values():
        assert r["cpu_ms_per_frame"]["median"] > 0 and r["mbit_s"]["median"] > 0, r
