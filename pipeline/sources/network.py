"""rtsp://, http(s):// and other network streams through OpenCV's FFmpeg backend."""

from __future__ import annotations

import os

import cv2

from pipeline.sources.base import VideoSource


class NetworkSource(VideoSource):
    kind = "network"
    live = True

    def __init__(self, uri: str, name: str, timeout_s: float = 10.0, stall_s: float = 30.0):
        super().__init__(uri, name)
        self.timeout_ms = int(timeout_s * 1000)
        self.stall_ms = int(stall_s * 1000)  # a read that waits longer is a stalled stream: reconnect

    def _open_capture(self) -> cv2.VideoCapture:
        if self.uri.lower().startswith("rtsp") and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
            # TCP interleaving survives lossy links and NAT where UDP RTP silently drops packets.
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.stall_ms]
        return cv2.VideoCapture(self.uri, cv2.CAP_FFMPEG, params)

    def _gst_target(self) -> str | None:
        return self.uri if self.uri.lower().startswith(("rtsp://", "rtsps://")) else None

    def _open_hint(self) -> str:
        return " (check the address, credentials and that the stream is up)"
