"""The video-writer interface: an Encoder says what it writes and opens one Writer per file.

Kept free of the daemon's imports (pydantic, prometheus): the GStreamer backend runs, and is tested and
measured, under the system Python, whose OpenCV is the one built with GStreamer (pip's is not).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

# A keyframe every 2 s. Fragmented MP4 cuts a fragment at each keyframe, so a recording killed mid-write
# (SIGKILL, power cut) loses at most this much; players also seek to keyframes. Shorter costs bits: at 25 fps
# a keyframe is ~10x an inter frame, so 1 s would grow the file by about a fifth.
KEYFRAME_S = 2.0


def keyframe_interval(fps: float) -> int:
    return max(1, round(fps * KEYFRAME_S))


class Writer(ABC):
    """One open file. `write` takes BGR uint8 frames of the size the file was opened with; both raise
    OSError when the file system refuses (the caller closes this file and opens a new one later)."""

    frames = 0

    @abstractmethod
    def write(self, image: np.ndarray) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Drain the encoder and finish the container: the file plays from here on."""


class Encoder(ABC):
    """A way to write video here: `codec` (h264, or an OpenCV FourCC such as mp4v) by encoder `name`."""

    backend: ClassVar[str]

    def __init__(self, name: str, codec: str, hardware: bool = False, fragmented: bool = False):
        self.name = name
        self.codec = codec
        self.hardware = hardware
        # A fragmented MP4 stays playable up to its last whole fragment when the writer is killed; a plain
        # one has its index written only at close, without which no player opens it.
        self.fragmented = fragmented

    @abstractmethod
    def missing(self) -> str | None:
        """Why this encoder cannot run in this process (a package or an OpenCV build), found without
        encoding anything; None when it may (the probe then tries it for real)."""

    def supports(self, extension: str) -> bool:
        return True

    @abstractmethod
    def open(self, path: Path, fps: float, size: tuple[int, int]) -> Writer:
        """A writer for `path` (its extension picks the container); OSError when it cannot start one."""

    def __str__(self) -> str:
        return f"{self.codec} ({self.name} via {self.backend}{', hardware' if self.hardware else ''})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self}>"
