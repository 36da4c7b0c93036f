"""The frame and the result that travel between stages; no bare tuples between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engines.detection import Detection  # what a frame's results are made of (re-exported here)


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame. `image` is a view into its shared-memory slot (owned by the source's pool)."""

    source: str
    index: int  # 0-based, per source, counting every decoded frame (dropped ones too)
    pts_ms: float  # stream time: container timestamp for files, time since open for live sources
    t_capture_ns: int  # time.monotonic_ns() just before the decode that produced it
    t_decoded_ns: int  # time.monotonic_ns() once the pixels were in the slot
    pool: str  # shared-memory block holding the pixels
    slot: int
    image: np.ndarray = field(repr=False, compare=False)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True, slots=True)
class WorkItem:
    """What crosses the process boundary to the worker: where the pixels are, never the pixels."""

    source_id: int
    index: int
    shm_name: str
    slot: int
    offset: int
    height: int
    width: int
    t_capture_ns: int


@dataclass(frozen=True, slots=True)
class WorkResult:
    """What comes back from the worker: small. Stage times are monotonic ns durations."""

    source_id: int
    index: int
    slot: int
    detections: tuple[Detection, ...]
    t_dequeued_ns: int  # worker took it off its queue (end of queue wait)
    preprocess_ns: int
    inference_ns: int  # the whole batch's engine call, shared by its frames
    postprocess_ns: int
    batch_size: int
    inferred: bool = True  # False: not run through the model (detect_fps); its detections are predictions
    saliency: object | None = None  # engines.saliency.Saliency, with sinks.overlay.saliency on
