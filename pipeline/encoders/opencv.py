"""OpenCV's own VideoWriter with a FourCC (mp4v, MJPG, XVID, avc1 where its FFmpeg has an H.264 encoder):
the last fallback, since every OpenCV build writes mp4v. Its MP4 is not fragmented: the index is written at
close, so a file killed mid-write does not play (kept as `*.unfinished.mp4`; Matroska keeps such footage)."""

from __future__ import annotations

import errno
from pathlib import Path

import cv2
import numpy as np

from pipeline.encoders.base import Encoder, Writer

H264_FOURCCS = ("avc1", "h264", "x264")


class OpenCVEncoder(Encoder):
    backend = "opencv"

    def __init__(self, fourcc: str):
        super().__init__(fourcc, "h264" if fourcc.lower() in H264_FOURCCS else fourcc)

    def missing(self) -> str | None:
        return None  # only trying tells whether this build has the codec

    def open(self, path: Path, fps: float, size: tuple[int, int]) -> Writer:
        return OpenCVWriter(path, self.name, fps, size)


class OpenCVWriter(Writer):
    def __init__(self, path: Path, fourcc: str, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self._size = size
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
        if not self._writer.isOpened():
            self._writer.release()
            raise OSError(errno.EIO, f"OpenCV cannot open {self.path} for writing with codec {fourcc!r}")
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        self._writer.release()  # writes the index (moov atom): the file is playable from here on
