"""Ultralytics-style YOLO ONNX exports: detection in the v8/v11, v5 and end-to-end layouts
(engines/adapters/yolo_layout.py says which is which).

Boxes are in input pixels of a centered, grey-padded (114) letterbox, RGB in [0, 1]. v8 and v5 exports have
no NMS in them, so class-wise NMS runs here; end-to-end exports are already free of duplicates.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from engines.adapters.base import Adapter, AdapterParams, Letterbox, letterbox_planes, nms
from engines.adapters.masks import mask_polygon
from engines.adapters.yolo_layout import TASKS, YoloMeta, detect_layout, parse_metadata
from engines.detection import Detection
from engines.saliency import merge_strides, score_grids, stride_cells, summarise

log = logging.getLogger(__name__)

STRIDES = (8, 16, 32)  # the detect head's levels, finest first, in the order the predictions are concatenated
V5_ANCHORS = 3  # v5 layout: anchors per cell, anchor-major within each level
PAD_VALUE = (114, 114, 114)  # Ultralytics' letterbox grey
_INV255 = np.float32(1.0 / 255.0)


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    half = xywh[:, 2:4] / 2
    return np.hstack([xywh[:, :2] - half, xywh[:, :2] + half])


class YoloAdapter(Adapter):
    family = "yolo"

    def __init__(self, input_hw, labels, params: AdapterParams, *, metadata: dict | None = None):
        self.meta: YoloMeta = parse_metadata(metadata or {})
        # A labels file wins over the metadata's names (resolve_model already chose; this is for direct use).
        super().__init__(input_hw, labels or list(self.meta.names), params)
        if self.meta.task is not None and self.meta.task not in TASKS:
            raise ValueError(f"Ultralytics task {self.meta.task!r} is not one perceptd decodes as yolo "
                             f"({', '.join(TASKS)})")
        self._layout: str | None = None  # decided once from the engine's output shapes (check_outputs)
        self._extra = 0  # channels after the class scores: keypoint values or mask coefficients
        self._nc = len(self.meta.names)  # the metadata's class count; the labels file may not match it
        self._task = self.meta.task or "detect"  # without metadata: "segment" when there are prototypes
        self._saliency: bool | None = None  # enable_saliency: None off; False once the layout proved unfit
        self._saliency_ids: np.ndarray | None = None
        self._saliency_cells: list[tuple[int, int]] | None = None  # (ny, nx) per stride, from the first frame

    @property
    def task(self) -> str:
        return self._task

    def check_outputs(self, output_shapes, output_names=()):
        """`output_shapes` as the engine reports them: batch axis first, None for dynamic dimensions.

        Decides the layout now, at load time: a model that fits none fails here with its shape named.
        """
        if not output_shapes:
            raise ValueError("YOLO needs at least one output (the prediction tensor); the model has none")
        shape = tuple(output_shapes[0])
        if len(shape) != 3:
            raise ValueError(f"YOLO's first output must be [batch, 4+nc, N] (v8/v11), [batch, N, 5+nc] (v5) or "
                             f"[batch, N, 6] (end-to-end); the model's has rank {len(shape)}: {list(shape)}")
        self._extra = self._extra_channels(output_shapes)
        dims = shape[1:]
        if not all(isinstance(d, int) and d > 0 for d in dims):
            return  # dynamic: decided on the first frame
        self._decide(tuple(int(d) for d in dims))

    def _extra_channels(self, output_shapes) -> int:
        """Channels after the class scores: K*D keypoint values (pose, K and D from the metadata's kpt_shape)
        or the prototypes' count of mask coefficients (segment: a second output [batch, nm, mh, mw])."""
        protos = len(output_shapes) > 1 and len(output_shapes[1]) == 4
        self._task = self.meta.task or ("segment" if protos else "detect")
        if self._task == "pose":
            if self.meta.kpt_shape is None:
                raise ValueError("a YOLO pose model needs kpt_shape in its metadata (Ultralytics writes it); "
                                 "re-export it with Ultralytics")
            k, d = self.meta.kpt_shape
            if d not in (2, 3):
                raise ValueError(f"kpt_shape {list(self.meta.kpt_shape)}: keypoints need 2 or 3 values each")
            return k * d
        if self._task == "segment":
            nm = output_shapes[1][1] if protos else None
            if not isinstance(nm, int):
                raise ValueError(f"a YOLO segmentation model needs prototypes [batch, nm, mh, mw] as its second output; "
                                 f"the model's outputs: {[list(s) for s in output_shapes]}")
            return nm
        return 0

    def _decide(self, shape: tuple[int, int]) -> str:
        nc = self._nc or len(self.labels)
        layout = detect_layout(shape, nc, self._extra, self.meta.end2end, self.input_hw)
        model_nc = {"v8": shape[0] - 4, "v5": shape[1] - 5}.get(layout, 0) - self._extra * (layout != "e2e")
        if self.labels and model_nc and model_nc != len(self.labels):
            log.warning("labels list has %d classes but the YOLO output %s (%s layout) has %d; unknown ids are "
                        "reported as numbers", len(self.labels), list(shape), layout, model_nc)
        log.info("YOLO output %s decoded as the %s layout (%s)", list(shape), layout, self.task)
        self._layout = layout
        return layout

    def preprocess(self, image_bgr, out):
        # RGB in [0, 1]: the BGR->RGB swap is just the order the planes are written in. The grey padding is
        # written as its value, 114/255. Bilinear in both directions, as Ultralytics' LetterBox resizes: the
        # pixels the model was trained on, and at ratios like 768x576 -> 640x480 about 5x cheaper than area
        # averaging (3.5 ms of a 2-core machine's CPU per frame, a tenth of YOLO11n's inference).
        return letterbox_planes(image_bgr, out, center=True, order=(2, 1, 0), multiply=float(_INV255),
                                pad=PAD_VALUE, scratch=self._scratch, interpolation=cv2.INTER_LINEAR)

    def _candidates(self, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Best class per candidate above the confidence: (xyxy (K, 4), scores (K,), class ids (K,), extra
        (K, E)), in input pixels."""
        conf = self.min_confidence
        layout = self._layout or self._decide(pred.shape)
        e = self._extra
        if layout == "v8":
            nc = pred.shape[0] - 4 - e
            cls = pred[4:4 + nc]
            scores = cls.max(axis=0)
            idx = np.flatnonzero(scores >= conf)
            # Only the survivors are transposed: the full tensor is 84 x 8400, survivors are a handful.
            return (xywh_to_xyxy(pred[:4, idx].T), scores[idx], cls[:, idx].argmax(axis=0),
                    pred[4 + nc:, idx].T)
        if layout == "e2e":
            idx = np.flatnonzero(pred[:, 4] >= conf)
            rows = pred[idx]
            return rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), rows[:, 6:]
        # v5: score = objectness * class score <= objectness, so objectness alone prunes most rows cheaply.
        nc = pred.shape[1] - 5 - e
        rows = pred[np.flatnonzero(pred[:, 4] >= conf)]
        cls = rows[:, 5:5 + nc] * rows[:, 4:5]
        class_ids = cls.argmax(axis=1)
        scores = cls[np.arange(len(rows)), class_ids]
        keep = scores >= conf
        return xywh_to_xyxy(rows[keep, :4]), scores[keep], class_ids[keep], rows[keep, 5 + nc:]

    def postprocess(self, outputs, fit: Letterbox):
        pred = np.asarray(outputs[0])
        if pred.ndim != 2:
            raise ValueError(f"YOLO prediction must be 2-D per frame, got shape {pred.shape}")
        boxes, scores, class_ids, extra = self._candidates(pred)
        if len(scores) == 0:
            return []
        boxes = boxes.astype(np.float32, copy=False)
        # Every filter runs before NMS, so that nothing filtered out takes a max_detections slot; class-wise
        # NMS means dropping a class cannot change what happens to the others.
        mask = self.confident(scores, class_ids) & self.area_ok(fit.boxes_to_source(boxes), class_ids, fit)
        if self._keep:
            mask &= np.isin(class_ids, [c for c in np.unique(class_ids) if self.wanted(self.label(int(c)))])
        if not mask.all():
            boxes, scores, class_ids, extra = boxes[mask], scores[mask], class_ids[mask], extra[mask]
        if len(scores) == 0:
            return []
        if self._layout == "e2e":  # ranked by the model, duplicates already removed
            keep = np.argsort(-scores, kind="stable")[:self.params.max_detections]
        else:
            keep = nms(boxes, scores, self.params.iou, class_ids=class_ids, limit=self.params.max_detections)
        src = fit.boxes_to_source(boxes[keep])
        shapes = self._shapes(boxes[keep], extra[keep], outputs, fit)
        return [
            Detection(self.label(int(c)), float(s), tuple(float(v) for v in b), int(c), **more)
            for b, s, c, more in zip(src, scores[keep], class_ids[keep], shapes)
            # A detection whose mask is empty is dropped, as Ultralytics' predictor does.
            if self._task != "segment" or more["polygon"]
        ]

    def _shapes(self, boxes: np.ndarray, extra: np.ndarray, outputs, fit: Letterbox) -> list[dict]:
        """Per kept detection, the Detection fields beyond the box: keypoints (pose), polygon (segment)."""
        if self._task == "pose" and len(boxes):
            k, d = self.meta.kpt_shape
            # The export decodes keypoints to input pixels (and visibility through a sigmoid); clipped to
            # the frame, as Ultralytics' scale_coords does.
            kpts = fit.points_to_source(extra.reshape(len(boxes), k, d), clip=True)
            if d == 2:
                kpts = np.concatenate([kpts, np.ones((len(boxes), k, 1), dtype=np.float32)], axis=2)
            return [{"keypoints": tuple((float(x), float(y), float(v)) for x, y, v in row)} for row in kpts]
        if self._task == "segment":
            protos = np.asarray(outputs[1])
            return [{"polygon": mask_polygon(c, protos, b, fit, self.input_hw)} for b, c in zip(boxes, extra)]
        return [{}] * len(boxes)

    def enable_saliency(self, labels, output_names, model_path):
        if self.meta.end2end or self._layout == "e2e":
            return "an end-to-end YOLO export has no pre-NMS scores per cell; export it without NMS (end2end=False)"
        self._saliency_ids = self.saliency_ids(labels)
        self._saliency = True
        return None

    def saliency(self, outputs, fit: Letterbox):
        """The best class score of each cell (v8: per cell; v5: objectness x class, best of its anchors),
        per stride, merged into one map at stride 8."""
        if not self._saliency:
            return None
        pred = np.asarray(outputs[0])
        layout = self._layout or self._decide(pred.shape)
        ids = self._saliency_ids
        if layout == "v8":
            nc = pred.shape[0] - 4 - self._extra
            cls = pred[4:4 + nc] if ids is None else pred[4 + ids]
            scores, per_cell = cls.max(axis=0), 1
        elif layout == "v5":
            nc = pred.shape[1] - 5 - self._extra
            cls = pred[:, 5:5 + nc] if ids is None else pred[:, 5 + ids]
            # objectness >= 0 multiplies every class alike: the best product is objectness x the best class
            scores, per_cell = pred[:, 4] * cls.max(axis=1), V5_ANCHORS
        else:
            scores, per_cell = None, 0
        if self._saliency_cells is None:  # the output's size is the model's: checked on the first frame
            self._saliency_cells = None if scores is None else stride_cells(self.input_hw, STRIDES, per_cell,
                                                                            scores.size)
            if self._saliency_cells is None:
                log.warning("no saliency map: the YOLO output %s (%s layout) is not %s strides' cells of a %s "
                            "input", list(pred.shape), layout, list(STRIDES), list(self.input_hw))
                self._saliency = False
                return None
        grids = score_grids(scores, self._saliency_cells, per_cell, anchors_inner=False)
        return summarise(merge_strides(grids), fit, self.input_hw)
