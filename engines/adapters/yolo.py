"""Ultralytics-style YOLO ONNX exports: YOLOv8/v11 (`[4+nc, N]`, no objectness) and YOLOv5 (`[N, 5+nc]`).

Both carry boxes as cx, cy, w, h in input pixels of a centered, grey-padded (114) letterbox, RGB in
[0, 1]. The export has no NMS in it, so class-wise NMS runs here.

Layout rule (one frame's prediction tensor of shape (a, b), batch axis removed):
  1. With a labels list (nc = len(labels)): v8 when a == 4+nc and b != 5+nc; v5 when b == 5+nc and
     a != 4+nc. This settles small or unusual exports where the shape alone would mislead.
  2. Otherwise (no labels, both match, neither matches): v8 when a < b, else v5. Real exports always have
     far more candidates than channels (v8: 84 x 8400, v5: 25200 x 85), so the short axis is the channels.
"""

from __future__ import annotations

import logging

import numpy as np

from engines.adapters.base import Adapter, AdapterParams, Letterbox, letterbox_planes, nms
from engines.detection import Detection

log = logging.getLogger(__name__)

PAD_VALUE = (114, 114, 114)  # Ultralytics' letterbox grey
_INV255 = np.float32(1.0 / 255.0)


def detect_layout(shape: tuple, nc: int = 0) -> str:
    """'v8' or 'v5' for a per-frame prediction shape (a, b); see the module docstring for the rule."""
    a, b = int(shape[0]), int(shape[1])
    if nc > 0:
        v8, v5 = a == 4 + nc, b == 5 + nc
        if v8 and not v5:
            return "v8"
        if v5 and not v8:
            return "v5"
    return "v8" if a < b else "v5"


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.hstack([xywh[:, :2] - half, xywh[:, :2] + half])


class YoloAdapter(Adapter):
    family = "yolo"

    def __init__(self, input_hw, labels, params: AdapterParams):
        super().__init__(input_hw, labels, params)
        self._scratch: dict = {}
        self._layouts: dict[tuple, str] = {}  # per prediction shape: decided once, not per frame
        self._warned_nc = False

    def check_outputs(self, output_shapes):
        """`output_shapes` as the engine reports them: batch axis first, None for dynamic dimensions.

        Extra outputs (segmentation prototypes, v5's raw heads) are allowed; only the first is decoded.
        """
        if not output_shapes:
            raise ValueError("YOLO needs at least one output (the prediction tensor); the model has none")
        shape = tuple(output_shapes[0])
        if len(shape) != 3:
            raise ValueError(f"YOLO's first output must be [batch, 4+nc, N] (v8/v11) or [batch, N, 5+nc] (v5); "
                             f"the model's has rank {len(shape)}: {shape}")
        dims = tuple(d for d in shape[1:] if isinstance(d, int) and d > 0)
        if len(dims) == 2:
            layout = self._layout(dims)  # also warns now, at load time, if the labels don't fit the model
            channels, least = (dims[0], 5) if layout == "v8" else (dims[1], 6)
            if channels < least:
                raise ValueError(f"YOLO's first output {shape} read as {layout} has {channels} channels; "
                                 f"it needs at least {least} (box, {'objectness, ' * (layout == 'v5')}classes)")

    def preprocess(self, image_bgr, out):
        # RGB in [0, 1]: the BGR->RGB swap is just the order the planes are written in. The grey padding is
        # written as its value, 114/255.
        fit = letterbox_planes(image_bgr, out, center=True, order=(2, 1, 0), multiply=float(_INV255),
                               pad=PAD_VALUE, scratch=self._scratch)
        return fit

    def _layout(self, shape: tuple) -> str:
        layout = self._layouts.get(shape)
        if layout is None:
            nc = len(self.labels)
            layout = self._layouts[shape] = detect_layout(shape, nc)
            model_nc = shape[0] - 4 if layout == "v8" else shape[1] - 5
            if nc and model_nc != nc and not self._warned_nc:
                self._warned_nc = True
                log.warning("labels list has %d classes but the YOLO output %s (%s layout) has %d; "
                            "unknown ids are reported as numbers", nc, shape, layout, model_nc)
            log.debug("YOLO output %s decoded as %s layout", shape, layout)
        return layout

    def _candidates(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Best class per candidate above the confidence: (xywh (K, 4), scores (K,), class ids (K,))."""
        conf = self.params.confidence
        if self._layout(pred.shape) == "v8":
            cls = pred[4:]
            scores = cls.max(axis=0)
            idx = np.flatnonzero(scores >= conf)
            # Only the survivors are transposed: the full tensor is 84 x 8400, survivors are a handful.
            return pred[:4, idx].T, scores[idx], cls[:, idx].argmax(axis=0)
        # v5: score = objectness * class score <= objectness, so objectness alone prunes most rows cheaply.
        idx = np.flatnonzero(pred[:, 4] >= conf)
        rows = pred[idx]
        cls = rows[:, 5:] * rows[:, 4:5]
        class_ids = cls.argmax(axis=1)
        scores = cls[np.arange(len(rows)), class_ids]
        keep = scores >= conf
        return rows[keep, :4], scores[keep], class_ids[keep]

    def postprocess(self, outputs, fit: Letterbox):
        pred = np.asarray(outputs[0])
        if pred.ndim != 2:
            raise ValueError(f"YOLO prediction must be 2-D per frame, got shape {pred.shape}")
        xywh, scores, class_ids = self._candidates(pred)
        if self._keep and len(class_ids):
            # Filter before NMS so unwanted classes never take a max_detections slot; class-wise NMS means
            # dropping a class cannot change what happens to the others.
            wanted = {int(c) for c in np.unique(class_ids) if self.wanted(self.label(int(c)))}
            mask = np.isin(class_ids, list(wanted))
            xywh, scores, class_ids = xywh[mask], scores[mask], class_ids[mask]
        if len(scores) == 0:
            return []
        boxes = xywh_to_xyxy(xywh.astype(np.float32, copy=False))
        keep = nms(boxes, scores, self.params.iou, class_ids=class_ids, limit=self.params.max_detections)
        src = fit.boxes_to_source(boxes[keep])
        return [
            Detection(self.label(int(c)), float(s), tuple(float(v) for v in b), int(c))
            for b, s, c in zip(src, scores[keep], class_ids[keep])
        ]
