"""V4L2 cameras: an index (0) or a device path (/dev/video0)."""

from __future__ import annotations

from pathlib import Path

import cv2

from pipeline.errors import SourceError
from pipeline.sources.base import VideoSource


class CameraSource(VideoSource):
    kind = "camera"
    live = True

    def _open_capture(self) -> cv2.VideoCapture:
        if self.uri.isdigit():
            return cv2.VideoCapture(int(self.uri), cv2.CAP_V4L2)
        if not Path(self.uri).exists():
            raise SourceError(f"source '{self.name}': no camera at {self.uri}; list cameras with "
                              "'v4l2-ctl --list-devices'")
        return cv2.VideoCapture(self.uri, cv2.CAP_V4L2)

    def _open_hint(self) -> str:
        return " (is the camera plugged in, and is this user in the 'video' group?)"
