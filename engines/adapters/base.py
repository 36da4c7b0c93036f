"""What every model family shares: letterboxing into a fixed input, mapping boxes back, NMS, labels.

An adapter turns a BGR frame into one row of the engine's input batch and one row of raw outputs into
Detections in source pixels. It never knows which backend ran the model.
"""

from __future__ import annotations

import difflib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.detection import Detection


PerLabel = tuple[tuple[str, float], ...]  # (label, value) pairs: hashable and picklable, unlike a dict


@dataclass(frozen=True)
class AdapterParams:
    confidence: float = 0.5  # minimum score kept, for labels without their own
    iou: float = 0.45  # NMS overlap threshold
    max_detections: int = 100
    top_k: int = 5  # classifiers: how many classes to report
    classes: tuple[str, ...] = ()  # keep only these labels (empty: all)
    label_confidence: PerLabel = ()  # per-label minimum scores, overriding `confidence`
    # Box area limits in source pixels (a value below 1: that fraction of the frame); 0 = no limit.
    min_area: float = 0.0
    max_area: float = 0.0
    label_min_area: PerLabel = ()
    label_max_area: PerLabel = ()


@dataclass(frozen=True)
class Letterbox:
    """How a source image was fitted into the network input: scaled by `scale`, then shifted by the pads.

    The resized image's sides are whole pixels, so each axis's true scale is its resized side over its source
    side (`scale_x`, `scale_y`, e.g. 213/300 for 300 scaled by 320/451): mapping back with those is exact, as
    Ultralytics' scale_boxes does. None: `scale` (a mapping made without resizing).
    """

    scale: float
    pad_x: float
    pad_y: float
    src_w: int
    src_h: int
    scale_x: float | None = None
    scale_y: float | None = None

    @property
    def sx(self) -> float:
        return self.scale_x or self.scale

    @property
    def sy(self) -> float:
        return self.scale_y or self.scale

    def boxes_to_source(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1y1x2y2 in input pixels -> source pixels, clipped to the image."""
        out = boxes.astype(np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.sx
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.sy
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, self.src_w)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, self.src_h)
        return out

    def points_to_source(self, points: np.ndarray, clip: bool = False) -> np.ndarray:
        """(..., 2+) xy (then anything) in input pixels -> source pixels, clipped to the image with `clip`."""
        out = points.astype(np.float32, copy=True)
        out[..., 0] = (out[..., 0] - self.pad_x) / self.sx
        out[..., 1] = (out[..., 1] - self.pad_y) / self.sy
        if clip:
            out[..., 0] = np.clip(out[..., 0], 0, self.src_w)
            out[..., 1] = np.clip(out[..., 1], 0, self.src_h)
        return out


def fit_into(src_hw: tuple[int, int], size_hw: tuple[int, int], center: bool) -> tuple[int, int, Letterbox]:
    """The letterbox geometry: the resized (h, w) and how it maps back to the source."""
    h, w = src_hw
    th, tw = size_hw
    scale = min(th / h, tw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    pad_x = (tw - nw) // 2 if center else 0
    pad_y = (th - nh) // 2 if center else 0
    return nh, nw, Letterbox(scale, float(pad_x), float(pad_y), w, h, nw / w, nh / h)


def _resized(image: np.ndarray, nh: int, nw: int, scratch: dict | None, interpolation: int | None = None) -> np.ndarray:
    """`interpolation` None: area averaging to shrink, bilinear to enlarge."""
    h, w = image.shape[:2]
    if (nh, nw) == (h, w):
        return image
    interp = interpolation if interpolation is not None else cv2.INTER_AREA if nh < h else cv2.INTER_LINEAR
    # A reused contiguous buffer: resizing into a strided view of a bigger canvas, or into a fresh
    # allocation each frame, measured several times slower at 720p.
    dst = None if scratch is None else scratch.get((nh, nw))
    if dst is None:
        dst = np.empty((nh, nw, 3), dtype=np.uint8)
        if scratch is not None:
            scratch.clear()  # one size at a time: sources of another resolution replace it
            scratch[(nh, nw)] = dst
    return cv2.resize(image, (nw, nh), dst=dst, interpolation=interp)


def letterbox(image: np.ndarray, size_hw: tuple[int, int], pad_value, center: bool,
              interpolation: int | None = None) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to `size_hw`. Returns the canvas (uint8 HxWx3) and the mapping."""
    nh, nw, fit = fit_into(image.shape[:2], size_hw, center)
    canvas = np.empty((*size_hw, 3), dtype=np.uint8)
    canvas[:] = pad_value
    x, y = int(fit.pad_x), int(fit.pad_y)
    canvas[y:y + nh, x:x + nw] = _resized(image, nh, nw, None, interpolation)
    return canvas, fit


def letterbox_planes(image: np.ndarray, out: np.ndarray, center: bool, order=(0, 1, 2), subtract=(0.0, 0.0, 0.0),
                     multiply: float = 1.0, pad=None, scratch: dict | None = None,
                     interpolation: int | None = None) -> Letterbox:
    """Letterbox a uint8 BGR image straight into one float32 CHW input row: out[i] = (v - subtract[c]) *
    multiply with c = order[i], v the resized image's channel c inside the fitted area and pad[c] (default:
    subtract[c], i.e. zero after conversion) in the padding. Same values as letterbox() then converting.

    No padded uint8 canvas is built: filling and splitting it cost about 2.7 ms of 3.1 per 720p frame.
    `scratch` (any dict the caller keeps) holds the resize buffer between frames. `interpolation`: an OpenCV
    flag, None for area averaging to shrink and bilinear to enlarge.
    """
    nh, nw, fit = fit_into(image.shape[:2], out.shape[1:], center)
    x, y = int(fit.pad_x), int(fit.pad_y)
    planes = cv2.split(_resized(image, nh, nw, scratch, interpolation))  # contiguous planes: far faster than a strided transpose
    for i, c in enumerate(order):
        dst = out[i]
        pad_value = np.float32(((subtract if pad is None else pad)[c] - subtract[c]) * multiply)
        dst[:y] = pad_value
        dst[y + nh:] = pad_value
        dst[y:y + nh, :x] = pad_value
        dst[y:y + nh, x + nw:] = pad_value
        inner = dst[y:y + nh, x:x + nw]
        if subtract[c]:
            np.subtract(planes[c], np.float32(subtract[c]), out=inner, casting="unsafe")
            if multiply != 1.0:
                inner *= np.float32(multiply)
        else:
            np.multiply(planes[c], np.float32(multiply), out=inner, casting="unsafe")
    return fit


def class_regions(boxes: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Move each class's boxes into a region of the plane no other class reaches, so that one NMS pass over
    all boxes never lets two classes suppress each other.

    The boxes are first shifted so the smallest coordinate is 0; every box then lies in [0, span], and class c
    is moved by c * (span + 1). An offset from the largest coordinate alone (max + 1, as the usual trick and
    OpenCV's NMSBoxesBatched do) lets a box with negative coordinates reach the next class's region.
    Float64: at 80 classes of 4K frames the offsets pass 300,000, where float32 keeps only 1/32 px.
    """
    b = boxes.astype(np.float64, copy=True)
    if len(b) == 0:
        return b
    lo, hi = float(b.min()), float(b.max())
    b -= lo
    b += (hi - lo + 1.0) * class_ids.astype(np.float64)[:, None]
    return b


def nms_greedy(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int = 0) -> np.ndarray:
    """Greedy non-maximum suppression in numpy: indices of kept boxes (x1y1x2y2) by descending score; ties
    keep the input order. A box is suppressed when its IoU with a kept one is above `iou`."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if limit and len(keep) >= limit:
            break
        rest = order[1:]
        w = np.maximum(0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.where(union > 0, inter / np.maximum(union, 1e-9), 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def nms_opencv(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int = 0) -> np.ndarray:
    """The same suppression by OpenCV's cv2.dnn.NMSBoxes (x1y1x2y2 in, converted to x, y, w, h), except that a
    box scoring exactly 0 is never kept: OpenCV takes a score threshold >= 0 and keeps what is above it."""
    xywh = np.empty_like(boxes, dtype=np.float64)
    xywh[:, :2] = boxes[:, :2]
    xywh[:, 2:] = boxes[:, 2:] - boxes[:, :2]
    # No top_k: OpenCV's caps the candidates before suppression, not the boxes kept.
    kept = np.asarray(cv2.dnn.NMSBoxes(xywh, scores.astype(np.float32), 0.0, float(iou)), dtype=np.int64).reshape(-1)
    return kept[:limit] if limit else kept


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, class_ids: np.ndarray | None = None,
        limit: int = 0) -> np.ndarray:
    """Non-maximum suppression; indices of kept boxes (x1y1x2y2) by descending score, at most `limit` (0: all).

    With `class_ids`, boxes of different classes never suppress each other (class_regions). OpenCV's
    NMSBoxes does the suppression: `python -m benchmarks.nms` measured it 3-5x faster than the numpy loop
    from 10 to 5,000 candidates (benchmarks/README.md). Scores of exactly 0 are never kept.
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    b = class_regions(boxes, class_ids) if class_ids is not None else boxes
    return nms_opencv(b, scores, iou, limit)


def read_labels(path: Path | None) -> list[str]:
    """One label per line (blank lines and '#' comments skipped)."""
    if path is None:
        return []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


class Adapter(ABC):
    """A model family: preprocessing into a fixed (H, W) input, postprocessing of one frame's outputs."""

    family: str = "?"

    def __init__(self, input_hw: tuple[int, int], labels: list[str], params: AdapterParams):
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.labels = list(labels)
        self.params = params
        self._keep = set(params.classes)
        # Per-class thresholds as arrays indexed by class id (built on first use), so that a frame's
        # candidates are filtered in one step. Ids past the labels (or with no labels) take the plain value.
        self._tables: dict[tuple[str, int], np.ndarray] = {}
        self._local = threading.local()

    @property
    def _scratch(self) -> dict:
        """Preprocessing's reusable buffers, one set per thread: the worker's lanes preprocess at once."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = {}
        return scratch

    def set_params(self, params: AdapterParams) -> None:
        """New thresholds and filters (a config reload), from the next frame on."""
        self.params = params
        self._keep = set(params.classes)
        self._tables.clear()

    def _table(self, name: str, default: float, per_label, size: int) -> np.ndarray:
        key = (name, size)
        table = self._tables.get(key)
        if table is None:
            table = np.full(max(size, len(self.labels), 1), default, dtype=np.float64)
            for label, value in per_label:
                for i, known in enumerate(self.labels):
                    if known == label:
                        table[i] = value
            self._tables[key] = table
        return table

    @property
    def min_confidence(self) -> float:
        """The lowest score any class may be kept with: the cheap first cut before per-class thresholds."""
        return min([self.params.confidence, *(v for _, v in self.params.label_confidence)])

    def confident(self, scores: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
        """Mask of the scores at or above their class's confidence."""
        if not self.params.label_confidence:
            return scores >= self.params.confidence
        table = self._table("confidence", self.params.confidence, self.params.label_confidence,
                            int(class_ids.max(initial=0)) + 1)
        return scores >= table[class_ids]

    def area_ok(self, boxes_src: np.ndarray, class_ids: np.ndarray, fit: "Letterbox") -> np.ndarray:
        """Mask of the source-pixel boxes whose area is within their class's min_area/max_area."""
        p = self.params
        ok = np.ones(len(boxes_src), dtype=bool)
        if not (p.min_area or p.max_area or p.label_min_area or p.label_max_area):
            return ok
        frame = float(fit.src_w * fit.src_h)
        area = np.maximum(0, boxes_src[:, 2] - boxes_src[:, 0]) * np.maximum(0, boxes_src[:, 3] - boxes_src[:, 1])
        size = int(class_ids.max(initial=0)) + 1
        for name, default, per_label, keep in (("min_area", p.min_area, p.label_min_area, np.greater_equal),
                                               ("max_area", p.max_area, p.label_max_area, np.less_equal)):
            if not (default or per_label):
                continue
            limit = self._table(name, default, per_label, size)[class_ids]
            limit = np.where(limit < 1, limit * frame, limit)  # below 1: a fraction of the frame
            ok &= (limit == 0) | keep(area, limit)
        return ok

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if 0 <= class_id < len(self.labels) else str(class_id)

    def wanted(self, label: str) -> bool:
        return not self._keep or label in self._keep

    def saliency_ids(self, labels: tuple[str, ...]) -> np.ndarray | None:
        """Class ids of `labels` (None: every class), for the saliency map; ValueError for an unknown label."""
        if not labels:
            return None
        unknown = [name for name in labels if name not in self.labels]
        if unknown:
            near = difflib.get_close_matches(unknown[0], self.labels, n=3)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else f"; its labels: {', '.join(self.labels[:20])}"
            raise ValueError(f"sinks.overlay.saliency_labels: no label {', '.join(map(repr, unknown))} in the "
                             f"model{hint}")
        return np.asarray([self.labels.index(name) for name in labels], dtype=np.int64)

    def enable_saliency(self, labels: tuple[str, ...], output_names: list[str], model_path: str) -> str | None:
        """Get ready to make saliency maps (engines/saliency.py) of `labels` (empty: all); None when ready,
        else why this model cannot have them. Families that can override this and saliency()."""
        return f"the {self.family} family has no saliency map"

    def saliency(self, outputs: list[np.ndarray], fit: Letterbox):
        """One frame's Saliency (engines/saliency.py) from the outputs postprocess() saw, or None."""
        return None

    @abstractmethod
    def preprocess(self, image_bgr: np.ndarray, out: np.ndarray) -> Letterbox:
        """Write one input row (C, H, W float32) into `out` and return how the image was fitted."""

    @abstractmethod
    def postprocess(self, outputs: list[np.ndarray], fit: Letterbox) -> list[Detection]:
        """Decode one frame's outputs (batch axis removed) into detections in source pixels."""

    def check_outputs(self, output_shapes: list[tuple], output_names: tuple[str, ...] | list[str] = ()) -> None:
        """Raise ValueError when the engine's outputs (batch axis first, in the engine's order) cannot be this
        family's. Families override, and may remember how to read them."""
