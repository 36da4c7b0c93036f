"""H.264 through a GStreamer pipeline fed by OpenCV's CAP_GSTREAMER writer: Jetson's NVENC
(`nvv4l2h264enc`), or x264enc / openh264enc. Needs an OpenCV built with GStreamer: JetPack's, Debian's
python3-opencv; pip's opencv-python is built without it.

MP4 goes through mp4mux in fragmented mode (a fragment per KEYFRAME_S) and filesink unbuffered, so that, as
with PyAV, a killed recording plays up to its last fragment. OpenCV's writer does not report a pipeline that
fails after it started (its write returns nothing): a full disk is kept away by the sink's reserve check,
and a file that does not play at close is kept as `*.unfinished.*`.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path

import cv2
import numpy as np

from pipeline.encoders.base import KEYFRAME_S, Encoder, Writer, keyframe_interval

log = logging.getLogger(__name__)

# element -> (hardware, what goes between appsrc's BGR and the H.264 parser). `{gop}` is the keyframe
# interval in frames, `{bitrate}` bits/s for encoders without a constant-quality mode.
ENCODERS = {
    # Jetson: NVENC takes NV12 in NVMM (device) memory; nvvidconv uploads and converts, videoconvert only
    # turns BGR into BGRx, which nvvidconv accepts. Missing on the Orin Nano (no NVENC): the probe fails there.
    # profile 2 = Main; insert-sps-pps repeats the headers at each IDR, so each fragment decodes alone.
    "nvv4l2h264enc": (True, "videoconvert ! video/x-raw,format=BGRx ! nvvidconv ! "
                            "video/x-raw(memory:NVMM),format=NV12 ! nvv4l2h264enc profile=2 insert-sps-pps=true "
                            "iframeinterval={gop} idrinterval={gop} bitrate={bitrate}"),
    # The same choices as the PyAV path (pyav.OPTIONS): superfast, zerolatency, constant quality 23, Main.
    "x264enc": (False, "videoconvert ! video/x-raw,format=I420 ! x264enc speed-preset=superfast "
                       "tune=zerolatency pass=qual quantizer=23 key-int-max={gop} ! video/x-h264,profile=main"),
    # Cisco's OpenH264: Constrained Baseline only; its default bitrate (128 kbit/s) would smear, so one
    # scaled to the picture is given. At EOS it prints "cmInitParaError" once (GStreamer drains it with an
    # empty frame): harmless, the file is whole.
    "openh264enc": (False, "videoconvert ! video/x-raw,format=I420 ! openh264enc gop-size={gop} "
                           "bitrate={bitrate}"),
}
BITS_PER_PIXEL = 0.1  # ~2.3 Mbit/s at 720p25: a fixed-camera scene at a quality close to CRF 23
MUXERS = {".mp4": f"mp4mux fragment-duration={int(KEYFRAME_S * 1000)}", ".mkv": "matroskamux"}


def has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line
    return False


def _quoted(path: Path) -> str:
    text = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def pipeline(element: str, path: Path, fps: float, size: tuple[int, int]) -> str:
    """The launch string OpenCV's writer runs for `element` into `path` (its extension picks the muxer)."""
    _, encode = ENCODERS[element]
    bitrate = int(size[0] * size[1] * fps * BITS_PER_PIXEL)
    encode = encode.format(gop=keyframe_interval(fps), bitrate=bitrate)
    return (f"appsrc ! {encode} ! h264parse ! {MUXERS[Path(path).suffix]} ! "
            f"filesink location={_quoted(path)} buffer-mode=unbuffered")


class GStreamerEncoder(Encoder):
    backend = "gstreamer"

    def __init__(self, element: str):
        hardware, _ = ENCODERS[element]
        super().__init__(element, "h264", hardware=hardware, fragmented=True)

    def missing(self) -> str | None:
        if not has_gstreamer():
            return "this OpenCV is built without GStreamer (pip's opencv-python; JetPack's OpenCV has it)"
        return None

    def supports(self, extension: str) -> bool:
        return extension in MUXERS

    def open(self, path: Path, fps: float, size: tuple[int, int]) -> Writer:
        launch = pipeline(self.name, path, fps, size)
        log.debug("GStreamer writer: %s", launch)
        return GStreamerWriter(path, launch, fps, size, self.name)


class GStreamerWriter(Writer):
    def __init__(self, path: Path, launch: str, fps: float, size: tuple[int, int], element: str = "its encoder"):
        self.path = Path(path)
        self._size = size
        self._writer = cv2.VideoWriter(launch, cv2.CAP_GSTREAMER, 0, fps, size, True)
        if not self._writer.isOpened():
            self._writer.release()
            raise OSError(errno.EIO, f"GStreamer cannot start a pipeline with {element} (an element is missing, "
                          "or refused the input); the pipeline is in the debug log")
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)  # appsrc's caps are fixed at open
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        self._writer.release()  # sends EOS and waits for it: the muxer finishes the file
