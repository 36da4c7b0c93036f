"""The source interface: open, read into a buffer, close. Reconnection and pacing live in capture.py."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import SourceError, SourceUnsupported
from pipeline.redact import redact_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamInfo:
    width: int
    height: int
    fps: float  # nominal; 0 when the stream does not say
    frame_count: int  # 0 when unknown (live)


class VideoSource(ABC):
    """One OpenCV capture. Subclasses say how to open it and whether it is live."""

    kind = "?"
    live = True

    def __init__(self, uri: str, name: str):
        self.uri = uri
        self.name = name
        self.shown_uri = redact_uri(uri)
        self._cap: cv2.VideoCapture | None = None
        self._pending: np.ndarray | None = None  # the frame read while probing, handed out first
        self.info: StreamInfo | None = None
        self.decoder = "ffmpeg"  # auto | ffmpeg | gstreamer (make_source sets it for files and RTSP)
        self.decoding = ""  # what decodes it, for the log
        self._probed: tuple | None = None
        self._gst_opened_ns = 0  # set while a GStreamer capture is open (its pts are made here)
        self._reads = 0

    @abstractmethod
    def _open_capture(self) -> cv2.VideoCapture:
        """Create the capture; raise SourceError with a fix when it cannot be opened."""

    def open(self) -> StreamInfo:
        """Open and decode one frame, so that 'opens but is not video' fails here, not mid-run."""
        self.close()
        self._reads, self._gst_opened_ns = 0, 0
        opened = self._open_gstreamer() if self.decoder != "ffmpeg" and self._gst_target() else None
        if opened is None:
            cap = self._open_capture()
            if not cap.isOpened():
                cap.release()
                raise SourceError(f"source '{self.name}': cannot open {self.shown_uri}{self._open_hint()}")
            first = _first_frame(cap)
            if first is None:
                cap.release()
                raise SourceError(f"source '{self.name}': {self.shown_uri} opened but gave no frame"
                                  f"{self._open_hint()}")
            opened = cap, first, cap.get(cv2.CAP_PROP_FPS) or 0.0, cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
            self.decoding = "FFmpeg"
        cap, first, fps, count = opened
        self._cap = cap
        self._pending = first
        h, w = first.shape[:2]
        count = int(count) if not self.live else 0
        self.info = StreamInfo(w, h, fps if 0 < fps < 1000 else 0.0, max(0, count))
        log.info("source '%s': opened %s %s %dx%d @ %.2f fps%s, decoding with %s", self.name, self.kind,
                 self.shown_uri, w, h, self.info.fps, f", {count} frames" if count > 0 else "", self.decoding)
        return self.info

    # GStreamer decoding (sources[].decoder) ------------------------------------------------------------
    def _gst_target(self) -> str | None:
        """What a GStreamer pipeline would read (a file path, an rtsp:// URI); None: FFmpeg only."""
        return None

    def _open_gstreamer(self):
        """(capture, first frame, fps, frames) through a GStreamer pipeline, or None for FFmpeg: under
        decoder 'auto' when OpenCV lacks GStreamer or the pipeline fails (said in the log)."""
        from pipeline.sources import gst
        from pipeline.sources.csi import opencv_has_gstreamer

        if not opencv_has_gstreamer():
            if self.decoder == "gstreamer":
                raise SourceUnsupported(f"source '{self.name}': decoder gstreamer, but this OpenCV "
                                        f"({cv2.__version__}) was built without GStreamer; use decoder ffmpeg or "
                                        "JetPack's OpenCV (python3-opencv)")
            return None
        codec, fps, count = self._probe_ffmpeg()
        if self.decoder == "auto" and not gst.worth_it(codec):
            return None  # no hardware decoder for it here: FFmpeg decodes in software for less CPU
        pipeline, what = gst.build(self._gst_target(), codec, self.live)
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
        first = _first_frame(cap) if cap.isOpened() else None
        if first is None:
            cap.release()
            if self.decoder == "gstreamer":
                raise SourceError(f"source '{self.name}': GStreamer could not decode {self.shown_uri} with {what}"
                                  f"{self._open_hint()}")
            log.warning("source '%s': GStreamer could not decode %s with %s; decoding with FFmpeg instead",
                        self.name, self.shown_uri, what)
            return None
        self.decoding = f"{what} through GStreamer"
        self._gst_opened_ns = time.monotonic_ns()
        return cap, first, fps or cap.get(cv2.CAP_PROP_FPS) or 0.0, count

    def _probe_ffmpeg(self) -> tuple[str | None, float, int]:
        """(codec, fps, frames) as FFmpeg sees the stream: GStreamer needs the codec to pick a decoder, and
        tells neither a file's frame count nor, at times, its rate. Once per source."""
        if self._probed is None:
            from pipeline.sources import gst

            cap = self._open_capture()
            try:
                self._probed = (gst.codec_of(cap.get(cv2.CAP_PROP_FOURCC)) if cap.isOpened() else None,
                                cap.get(cv2.CAP_PROP_FPS) or 0.0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
            finally:
                cap.release()
        return self._probed

    def read(self, out: np.ndarray | None = None) -> tuple[bool, np.ndarray | None, float]:
        """Next frame as (ok, BGR image, pts in ms). Decodes into `out` when its shape matches."""
        self._reads += 1
        if self._pending is not None:
            image, self._pending = self._pending, None
            return True, image, self._pts()
        if self._cap is None:
            return False, None, 0.0
        ok, image = self._cap.read(out) if out is not None else self._cap.read()
        if not ok or image is None:
            return False, None, 0.0
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        return True, image, self._pts()

    def rewind(self) -> bool:
        """Files only: seek to the first frame (for loop); False when the container cannot seek."""
        return False

    def _pts(self) -> float:
        if self._cap is None:
            return 0.0
        if self._gst_opened_ns:
            # OpenCV's GStreamer backend reports the pipeline's position, which runs ahead of the frame
            # handed out: stream time from the frame count (files, constant rate) or the clock (live).
            if not self.live and self.info is not None and self.info.fps > 0:
                return (self._reads - 1) * 1000.0 / self.info.fps
            return (time.monotonic_ns() - self._gst_opened_ns) / 1e6
        return float(self._cap.get(cv2.CAP_PROP_POS_MSEC))

    def _open_hint(self) -> str:
        return ""

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None


def _first_frame(cap: cv2.VideoCapture) -> np.ndarray | None:
    ok, first = cap.read()
    if not ok or first is None or first.size == 0:
        return None
    return cv2.cvtColor(first, cv2.COLOR_GRAY2BGR) if first.ndim == 2 else first
