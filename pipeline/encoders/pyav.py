"""H.264 through PyAV (`pip install 'perceptd[h264]'`): its wheels bundle FFmpeg with libx264, so any
machine gets a software H.264 encoder, and NVENC (`h264_nvenc`) where a desktop NVIDIA driver is loaded.

PyAV rather than OpenCV's writer because here we own the muxer: MP4 is written fragmented (a keyframe-led
fragment every KEYFRAME_S), so a file killed mid-write plays up to its last fragment instead of becoming
`*.unfinished.mp4`. Browsers play fragmented MP4 (it is what their streaming players feed them).
"""

from __future__ import annotations

import errno
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from pipeline.encoders.base import Encoder, Writer, keyframe_interval

# empty_moov: the header goes first, with no index; frag_keyframe: a fragment (its own index) per keyframe;
# default_base_moof: what browsers' MSE players expect. flush_packets hands each finished fragment to the
# kernel at once: without it the last ~32 KB sit in FFmpeg's buffer and die with the process.
MP4_OPTIONS = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
CONTAINERS = {".mp4": "mp4", ".mkv": "matroska"}

# superfast with tune=zerolatency: on camera-sized footage (benchmarks/encoders.py, 720p, 2 cores) it costs
# ~16 ms of CPU a frame at ~2.5 Mbit/s, where ultrafast costs 12 ms at 6.4 (and drops CABAC) and veryfast
# 30 ms at 1.9; mp4v costs 10 ms at 5.8 for a worse picture. zerolatency (no B-frames, no lookahead, sliced
# threads) both saves a quarter of the CPU and keeps no frames queued inside the encoder, so a kill loses
# only the open fragment. Main profile: what every browser and phone decodes in hardware. CRF 23: x264's
# default quality.
OPTIONS = {
    "libx264": {"preset": "superfast", "tune": "zerolatency", "profile": "main", "crf": "23"},
    # p4: NVENC's middle preset; the encoder runs on its own silicon, the CPU only feeds it.
    "h264_nvenc": {"preset": "p4", "profile": "main"},
}
BT601 = 6  # AVCOL_SPC/PRI/TRC_SMPTE170M: the matrix cv2's BGR->I420 uses, said so players do not guess 709


def _ffmpeg_error(exc: Exception, path: Path) -> OSError:
    """Every FFmpeg error as OSError: after one, the container's state is unknown, so the caller closes this
    file and starts another, as it does when the file system refuses a write."""
    if isinstance(exc, OSError):
        return exc
    return OSError(errno.EIO, f"{path.name}: {exc}")


class PyAVEncoder(Encoder):
    backend = "pyav"

    def __init__(self, name: str = "libx264"):
        super().__init__(name, "h264", hardware=name != "libx264", fragmented=True)

    def missing(self) -> str | None:
        try:
            import av
        except ImportError:
            return "PyAV is not installed (pip install 'perceptd[h264]')"
        try:
            av.codec.Codec(self.name, "w")
        except Exception:  # noqa: BLE001 - each PyAV version names "not found" differently
            return f"this PyAV has no {self.name} encoder"
        return None

    def supports(self, extension: str) -> bool:
        return extension in CONTAINERS

    def open(self, path: Path, fps: float, size: tuple[int, int]) -> Writer:
        return PyAVWriter(path, self.name, fps, size)


class PyAVWriter(Writer):
    def __init__(self, path: Path, codec: str, fps: float, size: tuple[int, int]):
        import av

        self._av = av
        self.path = Path(path)
        fmt = CONTAINERS[self.path.suffix]
        # 4:2:0 needs even sides (browsers decode nothing else): an odd column or row is cropped, not scaled.
        self._size = (size[0] & ~1, size[1] & ~1)
        try:
            self._container = av.open(str(self.path), "w", format=fmt, options=MP4_OPTIONS if fmt == "mp4" else
                                      {"flush_packets": "1"})
        except av.error.FFmpegError as exc:
            raise _ffmpeg_error(exc, self.path) from None
        try:
            # 29.97 arrives as 29.97002997...: as a fraction it is 30000/1001, exactly what cameras send.
            rate = Fraction(fps).limit_denominator(1001)
            stream = self._container.add_stream(codec, rate=rate)
            stream.width, stream.height = self._size
            stream.pix_fmt = "yuv420p"
            stream.options = {**OPTIONS.get(codec, {}), "g": str(keyframe_interval(fps))}
            cc = stream.codec_context
            cc.colorspace = cc.color_primaries = cc.color_trc = BT601
            cc.color_range = 1  # limited (16-235), as cv2 converts
            self._stream = stream
        except BaseException:
            self._container.close()
            raise
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        w, h = self._size
        if (image.shape[1], image.shape[0]) != self._size:
            odd = (image.shape[1] & ~1, image.shape[0] & ~1) == self._size
            image = image[:h, :w] if odd else cv2.resize(image, self._size)
        # OpenCV's BGR->I420 is ~10x faster than swscale's bgr24->yuv420p (0.8 ms against 7.7 at 720p, one
        # core here) and gives the same BT.601 limited-range values.
        frame = self._av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_BGR2YUV_I420), format="yuv420p")
        frame.pts = self.frames
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except self._av.error.FFmpegError as exc:
            raise _ffmpeg_error(exc, self.path) from None
        self.frames += 1

    def close(self) -> None:
        try:
            for packet in self._stream.encode(None):  # the frames still inside the encoder
                self._container.mux(packet)
        except self._av.error.FFmpegError as exc:
            raise _ffmpeg_error(exc, self.path) from None
        finally:
            try:
                self._container.close()  # the trailer: a fragmented file's random-access index (mfra)
            except self._av.error.FFmpegError as exc:
                raise _ffmpeg_error(exc, self.path) from None
