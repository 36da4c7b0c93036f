"""Decoding through GStreamer (sources[].decoder): the decoder chosen from the registry as it is here
(software) and from a Jetson's and a desktop NVIDIA's element lists; a real file and a real RTSP stream
decoded through Debian's GStreamer-enabled OpenCV, with the same detections as the FFmpeg path; and the
one-line refusal where OpenCV has no GStreamer."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from engines.zoo import materialise
from pipeline.sources import gst
from tests import system_opencv
from tests.conftest import read_jsonl, run_perceptd
from tests.test_service import need, rtsp_server_available, start_rtsp

JETSON = {"nvv4l2decoder", "nvvidconv", "h264parse", "h265parse", "jpegparse", "qtdemux", "rtph264depay",
          "rtspsrc", "avdec_h264"}
DESKTOP_NVIDIA = {"nvh264dec", "nvh265dec", "avdec_h264", "avdec_h265", "h264parse", "qtdemux"}


def test_decoder_choice_when_a_jetson_has_nvdec_uses_it_and_converts_out_of_nvmm():
    pipeline, what = gst.build("rtsp://cam:pw@10.0.0.5/stream", "h264", live=True, exists=gst.present(JETSON))
    assert what == "nvv4l2decoder (Jetson NVDEC)"
    assert pipeline == ('rtspsrc location="rtsp://cam:pw@10.0.0.5/stream" latency=200 protocols=tcp ! rtph264depay '
                        "! h264parse ! nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
                        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")
    file_pipeline, _ = gst.build("/data/door.mp4", "h264", live=False, exists=gst.present(JETSON))
    assert file_pipeline.startswith('filesrc location="/data/door.mp4" ! qtdemux ! h264parse ! nvv4l2decoder')
    assert file_pipeline.endswith("appsink sync=false")  # a file is read in full, not newest-first


def test_decoder_choice_when_hardware_is_absent_falls_to_software_and_unknown_codecs_to_decodebin():
    assert gst.build("/x.mp4", "h265", False, gst.present(DESKTOP_NVIDIA))[1] == "nvh265dec (NVIDIA NVDEC)"
    assert gst.choose_decoder("h264", gst.present({"avdec_h264"})) == "avdec_h264"
    pipeline, what = gst.build("/x.webm", "vp9", False, gst.present({"avdec_h264"}))
    assert what == "decodebin (software)" and " ! decodebin ! videoconvert" in pipeline
    assert gst.codec_of(cv2_fourcc("avc1")) == "h264" and gst.codec_of("hev1") == "h265" and gst.codec_of("VP90") is None


def test_decoder_auto_when_only_software_decoders_exist_keeps_ffmpeg_and_takes_hardware_ones():
    assert not gst.worth_it("h264", gst.present({"avdec_h264"}))  # software: FFmpeg is cheaper
    assert gst.worth_it("h264", gst.present(JETSON)) and gst.worth_it("h265", gst.present(DESKTOP_NVIDIA))
    assert not gst.worth_it(None, gst.present(JETSON))  # an unknown codec: decodebin would be software


def test_decoder_choice_when_asked_of_this_machines_registry_finds_its_software_decoders():
    need(shutil.which("gst-inspect-1.0") is not None, "gst-inspect-1.0 (Debian's gstreamer1.0-tools)")
    assert gst.choose_decoder("h264") == "avdec_h264"  # gstreamer1.0-libav; no NVDEC or VA-API here
    assert not gst.element_exists("nvv4l2decoder")


def cv2_fourcc(code: str) -> int:
    return sum(ord(c) << (8 * i) for i, c in enumerate(code))


def test_decoder_gstreamer_when_opencv_lacks_it_exits_2_naming_the_source(carphone, tmp_path, cache_dir):
    from pipeline.sources.csi import opencv_has_gstreamer

    if opencv_has_gstreamer():
        pytest.skip("this venv's OpenCV has GStreamer")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"name": "car", "uri": str(carphone), "decoder": "gstreamer"}],
                                   "sinks": {"output_dir": str(tmp_path / "out")}, "metrics": {"enabled": False}}))
    proc = run_perceptd("run", "-c", str(cfg), cache_dir=cache_dir)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "perceptd: error: source 'car': decoder gstreamer, but this OpenCV")
    # Under 'auto' the same machine decodes with FFmpeg, quietly.
    auto = run_perceptd("run", "--source", f"car={carphone}", "--max-frames", "5", "--output", str(tmp_path / "o2"),
                        "--metrics-port", "0", cache_dir=cache_dir, check=True)
    assert "decoding with FFmpeg" in auto.stderr and "GStreamer could not" not in auto.stderr


def system_run(tmp_path, cache_dir, sources: list, name: str) -> subprocess.CompletedProcess:
    """perceptd under Debian's OpenCV; the built-in model by its file (the retinaface package's own
    import needs a newer OpenCV than Debian's 4.6)."""
    model = materialise("retinaface", cache_dir)
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump({"sources": sources, "model": {"name": str(model), "family": "retinaface"},
                                   "sinks": {"output_dir": str(tmp_path / name)}, "metrics": {"enabled": False}}))
    return system_opencv.run("pipeline", "run", "-c", str(cfg), cache_dir=cache_dir)


def test_gstreamer_decode_when_a_file_is_decoded_both_ways_gives_the_same_detections(carphone, tmp_path, cache_dir):
    need(system_opencv.available(), "Debian's python3-opencv built with GStreamer")
    auto = system_run(tmp_path, cache_dir, [{"name": "car", "uri": str(carphone), "max_frames": 5}], "auto")
    assert "decoding with FFmpeg" in auto.stderr  # no hardware decoder here: auto keeps FFmpeg (less CPU)
    gst_run = system_run(tmp_path, cache_dir, [{"name": "car", "uri": str(carphone), "decoder": "gstreamer"}], "gst")
    assert gst_run.returncode == 0, gst_run.stderr[-3000:]
    assert "decoding with avdec_h264 (software) through GStreamer" in gst_run.stderr
    ff_run = system_run(tmp_path, cache_dir, [{"name": "car", "uri": str(carphone), "decoder": "ffmpeg"}], "ff")
    assert ff_run.returncode == 0 and "decoding with FFmpeg" in ff_run.stderr
    a, b = read_jsonl(tmp_path / "gst" / "car.jsonl"), read_jsonl(tmp_path / "ff" / "car.jsonl")
    assert [r["frame"] for r in a] == [r["frame"] for r in b] == list(range(120))
    assert [r["pts_ms"] for r in a][:5] == pytest.approx([r["pts_ms"] for r in b][:5], abs=1.0)
    pairs = [(x["detections"][0]["box"], y["detections"][0]["box"]) for x, y in zip(a, b)
             if x["detections"] and y["detections"]]
    assert len(pairs) >= 110  # the face in nearly every frame, both ways
    assert all(iou(p, q) > 0.9 for p, q in pairs), min(iou(p, q) for p, q in pairs)


def iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_gstreamer_decode_when_an_rtsp_stream_is_live_decodes_it_newest_first_with_credentials_hidden(
        tmp_path, cache_dir):
    need(system_opencv.available(), "Debian's python3-opencv built with GStreamer")
    need(rtsp_server_available(), "GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, python3-gi)")
    server, port = start_rtsp()
    try:
        source = {"name": "cam", "uri": f"rtsp://viewer:pw123@127.0.0.1:{port}/live", "max_frames": 60,
                  "decoder": "gstreamer"}
        proc = system_run(tmp_path, cache_dir, [source], "rtsp")
    finally:
        server.kill()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"source 'cam': opened network rtsp://viewer:\*\*\*@127\.0\.0\.1:\d+/live 320x240 .*decoding "
                     r"with jpegdec \(software\) through GStreamer", proc.stderr), proc.stderr[-2000:]
    assert "pw123" not in proc.stderr
    records = read_jsonl(tmp_path / "rtsp" / "cam.jsonl")
    assert 0 < len(records) <= 60 and [r["frame"] for r in records] == sorted(r["frame"] for r in records)
