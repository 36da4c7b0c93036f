"""The whole daemon, end to end: real clips, the real model in the real worker process, real outputs,
and /metrics scraped over HTTP while it runs."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from engines.base import cpu_lanes, usable_cores
from tests.conftest import (REPO, count_video_frames, metrics_port, parse_metrics, perceptd_cmd,
                            perceptd_env, read_jsonl, run_perceptd)


def write_config(path: Path, sources: list, out: Path, port: int, linger: float = 0, **sections) -> Path:
    cfg = {"sources": sources, "sinks": {"output_dir": str(out), "progress": "log", "log_interval_s": 1},
           "metrics": {"port": port, "linger_s": linger}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    path.write_text(yaml.safe_dump(cfg))
    return path


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse_metrics(r.read().decode())


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except OSError as exc:  # server not up yet
            last_exc = exc
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            raise AssertionError(f"perceptd exited {proc.returncode} while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} ({last_exc})")


def start(config: Path, cache_dir: Path, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(perceptd_cmd("run", "-c", str(config), *extra), env=perceptd_env(cache_dir),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), cwd=REPO)


def test_run_when_given_the_carphone_clip_processes_every_frame_once(carphone, tmp_path, cache_dir):
    out = tmp_path / "out"
    cfg = write_config(tmp_path / "c.yaml", [{"name": "car", "uri": str(carphone)}], out, 0, linger=30)
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    port = metrics_port(log, proc)
    try:
        key = 'perceptd_frames_processed_total{source="car"}'
        metrics = wait_for(lambda: (m := scrape(port)).get(key) == 120 and m, 120, "120 processed frames", proc)
        # Every stage histogram and the end-to-end one counted each processed frame exactly once.
        assert metrics['perceptd_end_to_end_latency_seconds_count{source="car"}'] == 120
        for stage in ("capture", "queue", "preprocess", "inference", "postprocess", "sink"):
            assert metrics[f'perceptd_stage_latency_seconds_count{{source="car",stage="{stage}"}}'] == 120, stage
        assert metrics['perceptd_frames_captured_total{source="car"}'] == 120
        # The recorder writes each frame after its results are published: all 120, shortly after.
        wait_for(lambda: scrape(port).get('perceptd_record_seconds_count{source="car"}') == 120, 30,
                 "120 recorded frames", proc)
        assert sum(v for k, v in metrics.items() if k.startswith("perceptd_frames_dropped_total")) == 0
        # Every frame went through exactly one engine call. A file source is ahead of the worker: on a
        # multi-core CPU its frames run side by side in lanes, one per call (engine.instances auto); on one
        # core they fill batches (fewer calls than frames).
        assert metrics["perceptd_batch_size_frames_sum"] == 120
        if cpu_lanes(0, usable_cores())[0] > 1:
            assert metrics["perceptd_batch_size_frames_count"] == 120
        else:
            assert metrics["perceptd_batch_size_frames_count"] < 120
        # Each call's duration, once per call (its sum's rate is the calls in flight).
        assert metrics["perceptd_inference_call_seconds_count"] == metrics["perceptd_batch_size_frames_count"]
        assert 0 < metrics["perceptd_inference_call_seconds_sum"] < 120 * 10
        info = [k for k in metrics if k.startswith("perceptd_info{")][0]
        assert all(f in info for f in ('backend="onnxruntime"', 'model="retinaface"', 'precision="fp32"',
                                       'accelerator="cpu"', 'host="'))
        assert 'codec="h264"' in info and 'encoder="libx264"' in info  # the recording's (PyAV: the test extra)
    finally:
        proc.send_signal(signal.SIGTERM)  # ends the linger early
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    records = read_jsonl(out / "car.jsonl")
    assert [r["frame"] for r in records] == list(range(120))
    assert all(r["source"] == "car" for r in records)
    with_face = sum(1 for r in records if any(d["label"] == "face" for d in r["detections"]))
    assert with_face >= 0.95 * 120
    assert all(r["pts_ms"] >= 0 for r in records) and records[-1]["pts_ms"] > records[0]["pts_ms"]
    stages = set(records[0]["latency_ms"])
    assert stages == {"capture", "queue", "preprocess", "inference", "postprocess", "sink", "total"}
    for r in records:
        box = r["detections"][0]["box"] if r["detections"] else [0, 0, 176, 144]
        assert 0 <= box[0] < box[2] <= 176 and 0 <= box[1] < box[3] <= 144
    assert count_video_frames(out / "car.mp4") == 120
    assert not list(out.glob(".*partial*"))


def test_run_when_two_sources_share_one_worker(carphone, astronaut_clip, tmp_path, cache_dir):
    out = tmp_path / "out"
    proc = run_perceptd("run", "--source", f"car={carphone}", "--source", f"astro={astronaut_clip}",
                        "--output", str(out), "--metrics-port", "0", cache_dir=cache_dir, check=True)
    assert len(re.findall(r"worker \d+ ready", proc.stderr)) == 1
    car, astro = read_jsonl(out / "car.jsonl"), read_jsonl(out / "astro.jsonl")
    assert [r["frame"] for r in car] == list(range(120)) and {r["source"] for r in car} == {"car"}
    assert [r["frame"] for r in astro] == list(range(40)) and {r["source"] for r in astro} == {"astro"}
    assert sum(1 for r in astro if r["detections"]) == 40
    assert count_video_frames(out / "car.mp4") == 120 and count_video_frames(out / "astro.mp4") == 40


def test_run_when_a_live_source_outpaces_the_worker_drops_oldest_and_latency_stays_bounded(
        carphone, tmp_path, cache_dir):
    """carphone paced at 8x its frame rate (240 fps) into a worker slowed to ~30 fps by a 640x640 input."""
    out = tmp_path / "out"
    src = {"name": "fast", "uri": str(carphone), "realtime": True, "speed": 8, "loop": True, "max_frames": 480}
    cfg = write_config(tmp_path / "c.yaml", [src], out, 0, linger=30,
                       model={"input_size": [640, 640]}, pipeline={"queue_size": 2})
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    port = metrics_port(log, proc)
    try:
        key = 'perceptd_frames_captured_total{source="fast"}'
        wait_for(lambda: scrape(port).get(key) == 480 and (out / "fast.jsonl").exists(), 120, "480 frames", proc)
        metrics = wait_for(lambda: (m := scrape(port))['perceptd_queue_depth_frames{source="fast"}'] == 0 and m,
                           30, "an empty queue", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    records = read_jsonl(out / "fast.jsonl")
    dropped = metrics['perceptd_frames_dropped_total{reason="queue_full",source="fast"}']
    assert dropped > 0
    assert len(records) + dropped + metrics['perceptd_frames_dropped_total{reason="pipeline_full",source="fast"}'] == 480
    frames = [r["frame"] for r in records]
    assert frames == sorted(set(frames)) and len(frames) < 480  # in order, gaps where frames were dropped
    # Bounded, by construction rather than by the clock: the worker is always given the newest frame, so
    # no backlog builds up. A blocking queue would still be working through early frames when capture
    # ended; here the last frame processed is among the last few captured (at most the queue, one frame
    # at the worker and one being decoded behind it), and the processed frames spread over the whole run.
    assert frames[-1] >= 480 - (2 + 1 + 2)
    quarters = [sum(1 for f in frames if q * 120 <= f < (q + 1) * 120) for q in range(4)]
    assert all(quarters), quarters


def test_run_when_the_worker_is_killed_restarts_it_and_completes(carphone, tmp_path, cache_dir):
    out = tmp_path / "out"
    src = {"name": "car", "uri": str(carphone), "realtime": True, "speed": 2, "loop": True, "max_frames": 360}
    # Paced (so there is time to kill the worker) but blocking: the only frames lost are those in flight.
    cfg = write_config(tmp_path / "c.yaml", [src], out, 0, linger=30, pipeline={"drop_policy": "block"})
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    port = metrics_port(log, proc)
    try:
        pid = int(wait_for(lambda: re.search(r"worker (\d+) ready", log.read_text()), 60, "worker", proc).group(1))
        wait_for(lambda: scrape(port).get('perceptd_frames_processed_total{source="car"}', 0) >= 30, 60,
                 "30 frames", proc)
        import os

        os.kill(pid, signal.SIGKILL)
        metrics = wait_for(lambda: (m := scrape(port)).get("perceptd_worker_restarts_total") == 1
                           and m['perceptd_frames_processed_total{source="car"}']
                           + m['perceptd_frames_dropped_total{reason="worker_restart",source="car"}'] == 360 and m,
                           120, "all frames accounted for after the restart", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "inference worker died" in text and "worker restarted" in text
    new_pid = int(re.findall(r"worker (\d+) ready", text)[-1])
    assert new_pid != pid
    records = read_jsonl(out / "car.jsonl")
    lost = metrics['perceptd_frames_dropped_total{reason="worker_restart",source="car"}']
    assert len(records) + lost == 360 and len(records) > 300
    assert count_video_frames(out / "car.mp4") == len(records)


def test_run_when_sigterm_arrives_mid_file_finalises_outputs(carphone, tmp_path, cache_dir):
    out = tmp_path / "out"
    src = {"name": "car", "uri": str(carphone), "realtime": True, "loop": True}
    cfg = write_config(tmp_path / "c.yaml", [src], out, 0)
    log = tmp_path / "log.txt"
    proc = start(cfg, cache_dir, log)
    wait_for(lambda: "worker" in log.read_text() and "ready" in log.read_text(), 60, "ready", proc)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    records = read_jsonl(out / "car.jsonl")  # every line parses: no partial line
    assert len(records) > 10
    assert count_video_frames(out / "car.mp4") == len(records)


@pytest.fixture()
def mjpeg_server(carphone):
    """An IP-camera-style MJPEG stream (multipart/x-mixed-replace) of carphone's frames on 127.0.0.1, at 30 fps:
    the many-cameras benchmark's camera (benchmarks/mjpeg_server.py)."""
    from benchmarks.mjpeg_server import MjpegServer

    server = MjpegServer(carphone, fps=30)
    yield server.port
    server.close()


def test_run_when_the_source_is_an_http_mjpeg_stream(mjpeg_server, tmp_path, cache_dir):
    out = tmp_path / "out"
    uri = f"http://user:pa55word@127.0.0.1:{mjpeg_server}/video.mjpg"
    proc = run_perceptd("run", "--source", uri, "--output", str(out), "--metrics-port", "0", "--max-frames", "60",
                        cache_dir=cache_dir, check=True)
    assert "pa55word" not in proc.stderr and "user:***@" in proc.stderr
    records = read_jsonl(out / "127.0.0.1.jsonl")
    assert 0 < len(records) <= 60 and all(r["detections"] for r in records)
    assert all("pa55word" not in p.read_bytes().decode("latin-1") for p in out.iterdir())
