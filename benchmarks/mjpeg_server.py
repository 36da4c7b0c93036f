"""Cameras for the many-sources benchmark: a clip served over HTTP as MJPEG at its own frame rate, looping,
to any number of clients at once, each paced on its own. perceptd (a network source) and Ultralytics
(LoadStreams through OpenCV) open the same URLs, so both decode the same JPEGs at the same offered rate;
file sources would not do: Ultralytics reads a file as fast as it decodes, not at the camera's rate.

The JPEGs are encoded once, up front: serving costs the benchmark a socket write per frame.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2

BOUNDARY = "perceptdframe"


class MjpegServer:
    """`url(i)`: the i-th camera (all serve the same clip; the path only tells them apart in logs)."""

    def __init__(self, clip: Path, fps: float, max_frames: int = 300, quality: int = 90):
        cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
        self.jpegs: list[bytes] = []
        while len(self.jpegs) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            self.jpegs.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes())
        cap.release()
        if not self.jpegs:
            raise RuntimeError(f"{clip}: no frame decoded")
        self.fps = fps
        self.sent = 0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the benchmark prints its own progress
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
                self.end_headers()
                server._serve(self.wfile)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="mjpeg-server", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port}/cam{i}.mjpg"

    def _serve(self, out) -> None:
        interval, due, i = 1.0 / self.fps, time.monotonic(), 0
        while not self._stop.is_set():
            jpeg = self.jpegs[i % len(self.jpegs)]
            try:
                out.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                          .encode() + jpeg + b"\r\n")
                out.flush()
            except OSError:  # the client went away
                return
            self.sent += 1
            i += 1
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                due = time.monotonic()  # a stalled client is not sent a burst to catch up: a camera drops

    def close(self) -> None:
        self._stop.set()
        self._http.shutdown()
        self._http.server_close()
