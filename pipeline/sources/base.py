"""The source interface: open, read into a buffer, close. Reconnection and pacing live in capture.py."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.errors import SourceError
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

    @abstractmethod
    def _open_capture(self) -> cv2.VideoCapture:
        """Create the capture; raise SourceError with a fix when it cannot be opened."""

    def open(self) -> StreamInfo:
        """Open and decode one frame, so that 'opens but is not video' fails here, not mid-run."""
        self.close()
        cap = self._open_capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"source '{self.name}': cannot open {self.shown_uri}{self._open_hint()}")
        ok, first = cap.read()
        if not ok or first is None or first.size == 0:
            cap.release()
            raise SourceError(f"source '{self.name}': {self.shown_uri} opened but gave no frame{self._open_hint()}")
        if first.ndim == 2:
            first = cv2.cvtColor(first, cv2.COLOR_GRAY2BGR)
        self._cap = cap
        self._pending = first
        h, w = first.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not self.live else 0
        self.info = StreamInfo(w, h, fps if 0 < fps < 1000 else 0.0, max(0, count))
        log.info("source '%s': opened %s %s %dx%d @ %.2f fps%s", self.name, self.kind, self.shown_uri, w, h,
                 self.info.fps, f", {count} frames" if count > 0 else "")
        return self.info

    def read(self, out: np.ndarray | None = None) -> tuple[bool, np.ndarray | None, float]:
        """Next frame as (ok, BGR image, pts in ms). Decodes into `out` when its shape matches."""
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
        return float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) if self._cap is not None else 0.0

    def _open_hint(self) -> str:
        return ""

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._pending = None
