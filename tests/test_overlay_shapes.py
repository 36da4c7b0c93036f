"""Drawing pose keypoints and segmentation masks on a real photo: what is drawn, where, and what privacy
masking keeps from being drawn."""

from __future__ import annotations

import numpy as np

from engines.detection import Detection
from pipeline.settings import OverlaySettings
from pipeline.sinks.overlay import COCO_SKELETON, draw
from tests.conftest import photo_bgr

PLAIN = OverlaySettings(boxes=False, labels=False, banner=False)


def person_keypoints(score=0.9):
    """17 COCO keypoints of an upright figure around x=250, from the nose at y=100 to the ankles at y=420."""
    ys = [100, 90, 90, 95, 95, 160, 160, 230, 230, 290, 290, 300, 300, 360, 360, 420, 420]
    xs = [250, 240, 260, 230, 270, 210, 290, 200, 300, 195, 305, 225, 275, 225, 275, 225, 275]
    return tuple((float(x), float(y), score) for x, y in zip(xs, ys))


def test_draw_when_17_keypoints_then_skeleton_between_confident_joints():
    image = photo_bgr("coffee")
    before = image.copy()
    det = Detection("person", 0.9, (190, 80, 310, 430), 0, keypoints=person_keypoints())
    draw(image, (det,), PLAIN)
    changed = (image != before).any(axis=2)
    kp = det.keypoints
    for a, b in COCO_SKELETON:  # the middle of every limb is drawn
        assert changed[int((kp[a][1] + kp[b][1]) / 2), int((kp[a][0] + kp[b][0]) / 2)], (a, b)
    faint = photo_bgr("coffee")
    draw(faint, (Detection("person", 0.9, (190, 80, 310, 430), 0, keypoints=person_keypoints(0.2)),), PLAIN)
    assert (faint == before).all()  # joints the model is unsure of are not drawn


def test_draw_when_label_is_privacy_masked_then_no_keypoints():
    image = photo_bgr("coffee")
    before = image.copy()
    det = Detection("person", 0.9, (190, 80, 310, 430), 0, keypoints=person_keypoints())
    draw(image, (det,), PLAIN, masked=frozenset({"person"}))
    assert (image == before).all()
    draw(image, (det,), PLAIN.model_copy(update={"keypoints": False}))
    assert (image == before).all()


def test_detection_to_json_when_keypoints_or_polygon_then_only_those_fields():
    det = Detection("person", 0.91234, (1.04, 2, 3, 4), 0, keypoints=((1.26, 2.0, 0.87654),))
    assert det.to_json() == {"label": "person", "score": 0.9123, "box": [1.0, 2, 3, 4],
                             "keypoints": [[1.3, 2.0, 0.877]]}
    assert "keypoints" not in Detection("car", 0.5, (0, 0, 1, 1), polygon=((1, 2), (3, 4), (5, 6))).to_json()


def square(x0, y0, size):
    return ((x0, y0), (x0 + size, y0), (x0 + size, y0 + size), (x0, y0 + size))


def test_draw_when_polygon_then_translucent_fill_inside_only():
    image = photo_bgr("coffee")
    before = image.astype(np.float32)
    det = Detection("cup", 0.9, (100, 100, 200, 200), 3, polygon=square(120, 120, 60))
    draw(image, (det,), PLAIN.model_copy(update={"mask_alpha": 0.5}))
    from pipeline.sinks.overlay import color_for

    inside = image[130:170, 130:170].astype(np.float32)
    np.testing.assert_allclose(inside, 0.5 * before[130:170, 130:170] + 0.5 * np.float32(color_for(3)), atol=1)
    assert (image[:118] == before[:118]).all() and (image[:, 183:] == before[:, 183:]).all()  # nothing outside


def test_draw_when_masked_label_or_masks_off_then_no_fill():
    det = Detection("person", 0.9, (100, 100, 200, 200), 0, polygon=square(120, 120, 60))
    for kwargs, settings in (({"masked": frozenset({"person"})}, PLAIN), ({}, PLAIN.model_copy(update={"masks": False}))):
        image = photo_bgr("coffee")
        before = image.copy()
        draw(image, (det,), settings, **kwargs)
        assert (image == before).all()
