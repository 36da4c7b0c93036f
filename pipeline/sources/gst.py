"""Decoding through GStreamer (`sources[].decoder`): a pipeline built from the stream's codec and the
elements this machine has, so that a Jetson decodes on NVDEC (`nvv4l2decoder`) instead of its CPU.

The decoder is the best one present, in order: Jetson's NVDEC, desktop NVIDIA's NVDEC (nvcodec), VA-API
(Intel/AMD), then software (libav). Under `decoder: auto` only a hardware decoder is worth GStreamer (see
worth_it); `decoder: gstreamer` takes the software one too. Which elements exist is asked of GStreamer's registry once
(`gst-inspect-1.0 --exists`); tests give a stand-in set instead (a Jetson's, say). Live sources end in an
appsink that keeps only the newest buffer (`drop=true max-buffers=1 sync=false`), as the capture thread
expects: latency stays flat. Everything here builds strings; opening them is OpenCV's (CAP_GSTREAMER).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

# codec -> (depayloader for RTP, parser, decoders best first)
CODECS = {
    "h264": ("rtph264depay", "h264parse", ("nvv4l2decoder", "nvh264dec", "vah264dec", "vaapih264dec", "avdec_h264")),
    "h265": ("rtph265depay", "h265parse", ("nvv4l2decoder", "nvh265dec", "vah265dec", "vaapih265dec", "avdec_h265")),
    "mjpeg": ("rtpjpegdepay", "jpegparse", ("nvv4l2decoder", "nvjpegdec", "jpegdec")),
}
HARDWARE = {"nvv4l2decoder": "Jetson NVDEC", "nvh264dec": "NVIDIA NVDEC", "nvh265dec": "NVIDIA NVDEC",
            "nvjpegdec": "NVIDIA NVJPG", "vah264dec": "VA-API", "vaapih264dec": "VA-API", "vah265dec": "VA-API",
            "vaapih265dec": "VA-API"}
DEMUXERS = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux",
            ".webm": "matroskademux", ".avi": "avidemux", ".ts": "tsdemux", ".mts": "tsdemux"}
# FFmpeg's names for what OpenCV reports (CAP_PROP_FOURCC), to ours.
FOURCCS = {"avc1": "h264", "h264": "h264", "x264": "h264", "hevc": "h265", "hvc1": "h265", "hev1": "h265",
           "h265": "h265", "mjpg": "mjpeg", "mjpe": "mjpeg", "mjpeg": "mjpeg", "jpeg": "mjpeg"}
# ("mjpe": older OpenCV builds report FFmpeg's codec name, cut to four characters.)


@functools.lru_cache(maxsize=1)
def gst_inspect() -> str | None:
    return shutil.which("gst-inspect-1.0")


@functools.lru_cache(maxsize=256)
def element_exists(name: str) -> bool:
    """Is this GStreamer element installed? False where gst-inspect-1.0 is absent (then only the software
    path is tried, and a failure falls back to FFmpeg)."""
    tool = gst_inspect()
    if tool is None:
        return name in ("avdec_h264", "avdec_h265", "jpegdec", "decodebin")  # the usual software set
    return subprocess.run([tool, "--exists", name], capture_output=True, timeout=10).returncode == 0


def codec_of(fourcc: float | int | str) -> str | None:
    """Our codec name for OpenCV's FOURCC (an int from CAP_PROP_FOURCC, or the four characters)."""
    if not isinstance(fourcc, str):
        n = int(fourcc)
        fourcc = "".join(chr((n >> (8 * i)) & 0xFF) for i in range(4))
    return FOURCCS.get(fourcc.strip("\0 ").lower())


def choose_decoder(codec: str | None, exists: Callable[[str], bool] = element_exists) -> str | None:
    """The best decoder element present for `codec`, or None (then decodebin chooses, in software)."""
    if codec not in CODECS:
        return None
    return next((d for d in CODECS[codec][2] if exists(d)), None)


def worth_it(codec: str | None, exists: Callable[[str], bool] = element_exists) -> bool:
    """Under `decoder: auto`, GStreamer only for a hardware decoder: in software, libav through GStreamer
    costs more CPU than FFmpeg itself (720p H.264 here: 6.5 against 4.6 ms a frame, benchmarks/decode_paths.py),
    since its frames also pass videoconvert."""
    return choose_decoder(codec, exists) in HARDWARE


def _tail(decoder: str | None, live: bool) -> list[str]:
    """From decoded frames to the BGR appsink OpenCV reads."""
    out = []
    if decoder == "nvv4l2decoder":  # its output is NVMM (device) memory: the VIC converts it out
        out += ["nvvidconv", "video/x-raw,format=BGRx"]
    out += ["videoconvert", "video/x-raw,format=BGR"]
    out.append("appsink drop=true max-buffers=1 sync=false" if live else "appsink sync=false")
    return out


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build(uri: str, codec: str | None, live: bool, exists: Callable[[str], bool] = element_exists,
          latency_ms: int = 200) -> tuple[str, str]:
    """(pipeline, decoder description) for a file path or an rtsp:// URI."""
    decoder = choose_decoder(codec, exists)
    if uri.lower().startswith(("rtsp://", "rtsps://")):
        head = [f"rtspsrc location={_quote(uri)} latency={latency_ms} protocols=tcp"]
    else:
        head = [f"filesrc location={_quote(str(Path(uri).expanduser()))}"]
    if decoder is None:
        parts = head + ["decodebin"]
        what = "decodebin (software)"
    else:
        depay, parse, _ = CODECS[codec]
        if head[0].startswith("rtspsrc"):
            middle = [depay, parse]
        else:
            demux = DEMUXERS.get(Path(uri).suffix.lower())
            middle = [demux, parse] if demux else ["parsebin"]
        parts = head + middle + [decoder]
        what = f"{decoder} ({HARDWARE.get(decoder, 'software')})"
    return " ! ".join(parts + _tail(decoder, live)), what


def present(names: Iterable[str]) -> Callable[[str], bool]:
    """A stand-in registry: exactly these elements exist (tests; a Jetson's set, say)."""
    names = frozenset(names)
    return lambda name: name in names
