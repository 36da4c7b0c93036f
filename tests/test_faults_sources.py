"""Fault injection, sources: servers that accept a connection and then send nothing, an MJPEG camera that
goes quiet mid-stream, and a source whose reads block in the kernel for good (a named pipe whose writer
stops writing: what a wedged V4L2 or nvargus read looks like). The other sources go on; frames conserved."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from pathlib import Path

import cv2
import pytest

from tests.conftest import decoded_frames
from tests.daemon import Daemon
from tests.test_service import NotifySocket

LIVE = {"loop": True, "realtime": True}
QUICK_PROBE = {"OPENCV_FFMPEG_CAPTURE_OPTIONS": "probesize;32768|analyzeduration;0"}  # a pipe starts at once


@pytest.fixture(scope="module")
def jpegs(carphone) -> list[bytes]:
    return [cv2.imencode(".jpg", frame)[1].tobytes() for frame in decoded_frames(carphone)]


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 (port 0) and never sends a byte."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.accepted:
            c.close()


class QuietingCamera:
    """An IP camera's MJPEG stream (port 0) that can go quiet: it keeps the connection open and sends
    nothing while `quiet` is set."""

    def __init__(self, jpegs: list[bytes]):
        self.quiet = threading.Event()
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    i = 0
                    while True:
                        if camera.quiet.is_set():
                            time.sleep(0.05)  # the connection stays up, nothing comes
                            continue
                        jpg = jpegs[i % len(jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         + f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                        i += 1
                        time.sleep(1 / 25)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_network_sources_when_servers_accept_and_send_nothing_time_out_reconnect_and_others_go_on(
        carphone, jpegs, tmp_path, cache_dir):
    silent, camera = SilentServer(), QuietingCamera(jpegs)
    sources = [{"name": "silent", "uri": f"rtsp://viewer:pw123@127.0.0.1:{silent.port}/live", "open_timeout_s": 1,
                "stall_timeout_s": 1},
               {"name": "cam", "uri": f"http://127.0.0.1:{camera.port}/video.mjpg", "stall_timeout_s": 1},
               {"name": "car", "uri": str(carphone), **LIVE}]
    try:
        with Daemon(tmp_path, cache_dir, sources, pipeline={"reconnect_initial_s": 0.2, "reconnect_max_s": 0.5}) as d:
            d.start()
            d.wait_processed("cam", 20)
            camera.quiet.set()  # mid-stream: connected, and nothing more arrives
            d.wait_log(r"source 'cam': no frame from http://127\.0\.0\.1:\d+/video\.mjpg; reconnecting")
            d.wait_metric(lambda m: m['perceptd_source_up{source="cam"}'] == 0, 30, "cam down")
            d.wait_processed("car", 20)  # the file source goes on meanwhile
            camera.quiet.clear()
            d.wait_metric(lambda m: m['perceptd_source_up{source="cam"}'] == 1, 60, "cam back up")
            d.wait_processed("cam", 20)
            m = d.scrape()
            assert m['perceptd_source_reconnects_total{source="cam"}'] >= 1
            # The RTSP server that never answers: each attempt times out and is retried, never stuck.
            assert d.log.count("source 'silent': cannot open rtsp://viewer:***@") >= 2
            assert m['perceptd_source_up{source="silent"}'] == 0
            assert m['perceptd_source_stuck_reads{source="silent"}'] == 0
            assert m['perceptd_source_stuck_reads{source="cam"}'] == 0
            assert d.stop() == 0, d.log
    finally:
        silent.close()
        camera.close()
    assert "pw123" not in d.log
    accounting = d.accounting()
    assert accounting["silent"] == (0, 0, 0) and accounting["cam"][1] > 0


class PipeCamera:
    """A program streaming MJPEG into a named pipe at 25 fps; `pause()` keeps the pipe open and stops
    writing, so the reader's read() blocks in the kernel with no timeout (no FFmpeg option reaches it)."""

    def __init__(self, path: Path, jpegs: list[bytes]):
        self.path = path
        os.mkfifo(path)
        self.flowing = threading.Event()
        self.flowing.set()
        self._stop = False
        self._thread = threading.Thread(target=self._run, args=(jpegs,), daemon=True)
        self._thread.start()

    def _run(self, jpegs: list[bytes]) -> None:
        i = 0
        while not self._stop:
            try:
                with open(self.path, "wb") as pipe:  # waits for a reader, like any FIFO writer
                    while not self._stop:
                        if not self.flowing.wait(0.1):
                            continue
                        pipe.write(jpegs[i % len(jpegs)])
                        pipe.flush()
                        i += 1
                        time.sleep(1 / 25)
            except BrokenPipeError:  # the reader closed: open again for the next one
                continue

    def close(self) -> None:
        self._stop = True
        self.flowing.set()
        try:  # unblock a writer waiting in open()
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass


def test_source_whose_reads_block_for_good_is_abandoned_reopened_and_stops_the_watchdog_past_the_limit(
        carphone, jpegs, tmp_path, cache_dir):
    pipe = PipeCamera(tmp_path / "cam.fifo", jpegs)
    notify = NotifySocket(tmp_path / "notify.sock")
    sources = [{"name": "pipe", "uri": str(pipe.path), "stall_timeout_s": 1, "open_timeout_s": 1},
               {"name": "car", "uri": str(carphone), **LIVE}]
    env = {**QUICK_PROBE, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "2000000"}
    try:
        with Daemon(tmp_path, cache_dir, sources, env=env,
                    pipeline={"max_stuck_reads": 1, "reconnect_initial_s": 0.2, "reconnect_max_s": 0.5}) as d:
            d.start()
            d.wait_processed("pipe", 20)
            pipe.flowing.clear()  # the writer hangs: the reader's read() blocks in the kernel
            first = d.wait_log(r"source 'pipe': read did not return for \d+ s \(stall_timeout_s 1\); left it "
                               r"blocked in the driver \(1 stuck\) and reopening the source")
            d.wait_metric(lambda m: m['perceptd_source_up{source="pipe"}'] == 0, 30, "pipe down")
            d.wait_processed("car", 20)  # the other source goes on
            # The reopened capture blocks too (its open reads a first frame): two stuck, past the limit of
            # one. The daemon cannot get those threads back by itself: the pings stop.
            d.wait_log(r"\(2 stuck\)", after=first.end())
            silent = d.wait_log(r"watchdog: source 'pipe' has 2 reads stuck in its driver .*not pinging")
            assert d.metric("perceptd_source_stuck_reads", source="pipe") >= 2
            count = len(notify.with_key("WATCHDOG"))
            statuses = len(notify.with_key("STATUS"))
            d.wait_metric(lambda m: len(notify.with_key("STATUS")) >= statuses + 3, 30, "status updates")
            assert len(notify.with_key("WATCHDOG")) == count
            assert any("stuck reads" in m for m in notify.with_key("STATUS"))
            pipe.flowing.set()  # the driver comes back: the stuck reads return and clean up after themselves
            d.wait_metric(lambda m: m['perceptd_source_stuck_reads{source="pipe"}'] == 0
                          and m['perceptd_source_up{source="pipe"}'] == 1, 60, "the pipe back, no stuck reads")
            d.wait_processed("pipe", 20)
            d.wait_metric(lambda m: len(notify.with_key("WATCHDOG")) > count, 30, "pings again")
            assert "returned at last" in d.log[silent.end():]
            assert d.stop() == 0, d.log
    finally:
        pipe.close()
        notify.close()
    accounting = d.accounting()
    assert accounting["pipe"][1] > 0 and accounting["car"][1] > 0
