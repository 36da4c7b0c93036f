"""Class-wise NMS against a plain reference (per class, greedy, pure Python) on random boxes, negative and
out-of-frame coordinates included."""

from __future__ import annotations

import numpy as np
import pytest

from engines.adapters import nms
from engines.adapters.base import class_regions, nms_greedy, nms_opencv


def iou_xyxy(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(boxes, scores, iou, class_ids, limit=0) -> list[int]:
    """Each class on its own: highest score first, kept unless it overlaps a kept box of its class above iou."""
    kept = []
    for c in sorted(set(class_ids.tolist())):
        members = sorted((i for i in range(len(boxes)) if class_ids[i] == c), key=lambda i: -scores[i])
        mine: list[int] = []
        for i in members:
            if all(iou_xyxy(boxes[i], boxes[k]) <= iou for k in mine):
                mine.append(i)
        kept += mine
    kept.sort(key=lambda i: -scores[i])
    return kept[:limit] if limit else kept


def random_boxes(rng, n, classes):
    """Boxes anywhere from well left/above the frame to well past a 640x640 input, clustered so that many
    overlap, with a few classes."""
    centres = rng.uniform(-300, 940, (max(1, n // 4), 2))
    c = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 15, (n, 2))
    size = rng.uniform(2, 250, (n, 2))
    boxes = np.hstack([c - size / 2, c + size / 2]).astype(np.float32)
    return boxes, rng.uniform(0.01, 1.0, n).astype(np.float32), rng.integers(0, classes, n)


def test_nms_when_negative_box_in_other_class_then_both_kept():
    # The case: with an offset of max(box) + 1 the class-1 box lands on the class-0 box.
    boxes = np.array([[600, 600, 640, 640], [-35, -35, 5, 5]], dtype=np.float32)
    kept = nms(boxes, np.array([0.9, 0.8], dtype=np.float32), 0.45, class_ids=np.array([0, 1]))
    assert kept.tolist() == [0, 1]


@pytest.mark.parametrize("iou", [0.3, 0.45, 0.7])
def test_nms_when_random_boxes_any_coordinates_then_equals_reference(iou):
    rng = np.random.default_rng(int(iou * 100))
    for trial in range(150):
        n = int(rng.integers(1, 80))
        boxes, scores, class_ids = random_boxes(rng, n, int(rng.integers(1, 6)))
        want = reference_nms(boxes.astype(np.float64), scores, iou, class_ids)
        assert nms(boxes, scores, iou, class_ids=class_ids).tolist() == want, f"trial {trial}"
        limit = int(rng.integers(1, 5))
        assert nms(boxes, scores, iou, class_ids=class_ids, limit=limit).tolist() == want[:limit]


def test_nms_greedy_and_opencv_when_same_regions_then_same_boxes():
    """The numpy loop the benchmark compares with keeps what OpenCV keeps."""
    rng = np.random.default_rng(7)
    for _ in range(50):
        boxes, scores, class_ids = random_boxes(rng, 60, 4)
        regions = class_regions(boxes, class_ids)
        assert nms_greedy(regions, scores, 0.45).tolist() == nms_opencv(regions, scores, 0.45).tolist()


def test_class_regions_when_any_coordinates_then_classes_never_overlap():
    rng = np.random.default_rng(3)
    boxes, _, class_ids = random_boxes(rng, 200, 5)
    moved = class_regions(boxes, class_ids)
    for c in range(5):
        mine, others = moved[class_ids == c], moved[class_ids != c]
        if len(mine) and len(others):
            # every other class lies wholly before or after this class's span, on both axes
            assert (others[:, 0] > mine[:, 2].max()).all() or (others[:, 2] < mine[:, 0].min()).all() or \
                ((others[:, 0] > mine[:, 2].max()) | (others[:, 2] < mine[:, 0].min())).all()
