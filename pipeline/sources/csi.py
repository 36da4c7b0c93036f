"""GStreamer pipelines (CSI cameras on Jetson through nvarguscamerasrc), through OpenCV's GStreamer backend."""

from __future__ import annotations

import re

import cv2

from pipeline.errors import SourceUnsupported
from pipeline.sources.base import VideoSource


def opencv_has_gstreamer() -> bool:
    match = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
    return bool(match and match.group(1).upper() == "YES")


class GStreamerSource(VideoSource):
    kind = "gstreamer"
    live = True

    def _open_capture(self) -> cv2.VideoCapture:
        if not opencv_has_gstreamer():
            raise SourceUnsupported(
                f"source '{self.name}': this OpenCV ({cv2.__version__}) was built without GStreamer, so GStreamer "
                "pipelines cannot be opened; on Jetson use JetPack's OpenCV (python3-opencv, not pip's "
                "opencv-python), or give a /dev/video path or stream URL instead")
        pipeline = self.uri[4:] if self.uri.startswith("gst:") else self.uri
        return cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
