"""Drawing predictions and a small fps/latency banner onto the frame (in place, BGR)."""

from __future__ import annotations

import functools

import cv2
import numpy as np

from pipeline.frame import Detection
from pipeline.settings import OverlaySettings

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_LANDMARK_COLORS = ((0, 0, 255), (0, 255, 255), (255, 0, 255), (0, 255, 0), (255, 0, 0))
# COCO's 17 keypoints (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles): the limbs drawn
# between them, as Ultralytics draws them, in three colours: legs, arms and torso, head.
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
_LIMB_COLORS = ((255, 128, 0),) * 4 + ((255, 51, 255),) * 3 + ((51, 153, 255),) * 5 + ((0, 255, 0),) * 7
KEYPOINT_MIN_SCORE = 0.5  # keypoints the model is less sure of (occluded, outside the frame) are not drawn


@functools.lru_cache(maxsize=1024)  # per detection per frame: a cvtColor call each time showed in profiles
def color_for(class_id: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    hue = int((class_id * 0.618033988749895 % 1.0) * 179)
    hsv = np.uint8([[[hue, 220, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_keypoints(image: np.ndarray, keypoints, color, t: int) -> None:
    """Joints above KEYPOINT_MIN_SCORE, and for COCO's 17 the limbs between two such joints."""
    pts = [(int(round(x)), int(round(y)), s >= KEYPOINT_MIN_SCORE) for x, y, s in keypoints]
    if len(pts) == 17:
        for (a, b), limb in zip(COCO_SKELETON, _LIMB_COLORS):
            if pts[a][2] and pts[b][2]:
                cv2.line(image, pts[a][:2], pts[b][:2], limb, t, cv2.LINE_AA)
    for x, y, seen in pts:
        if seen:
            cv2.circle(image, (x, y), t + 1, color, -1, cv2.LINE_AA)


def fill_polygon(image: np.ndarray, polygon, color, alpha: float) -> None:
    """Blend a filled polygon into the image. Only its bounding rectangle is copied and blended: a
    whole-frame blend per mask would cost milliseconds per detection at 1080p."""
    pts = np.round(np.asarray(polygon, dtype=np.float32)).astype(np.int32)
    h, w = image.shape[:2]
    x0, y0 = max(0, int(pts[:, 0].min())), max(0, int(pts[:, 1].min()))
    x1, y1 = min(w, int(pts[:, 0].max()) + 1), min(h, int(pts[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = image[y0:y1, x0:x1]
    tinted = roi.copy()
    cv2.fillPoly(tinted, [pts - (x0, y0)], color, cv2.LINE_8)
    cv2.addWeighted(tinted, alpha, roi, 1.0 - alpha, 0.0, dst=roi)


def draw(image: np.ndarray, detections: tuple[Detection, ...], settings: OverlaySettings, banner: str = "",
         masked: frozenset[str] = frozenset()) -> None:
    """Draw in place. Detections whose label is in `masked` (privacy) get their box and label only: their
    keypoints and mask outline would redraw what the masking hid."""
    h, w = image.shape[:2]
    scale = max(0.35, min(w, h) / 900)
    t = settings.thickness
    for det in detections:
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        color = color_for(max(det.class_id, 0))
        whole_image = x1 <= 0 and y1 <= 0 and x2 >= w - 1 and y2 >= h - 1  # a classifier's result
        if not whole_image and settings.boxes:
            cv2.rectangle(image, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
        shapes = det.label not in masked
        if shapes and settings.masks and len(det.polygon) >= 3:
            fill_polygon(image, det.polygon, color, settings.mask_alpha)
        if shapes and settings.keypoints and det.keypoints:
            draw_keypoints(image, det.keypoints, color, t)
        if shapes and settings.landmarks:
            for i, (px, py) in enumerate(det.landmarks):
                cv2.circle(image, (int(px), int(py)), max(1, t), _LANDMARK_COLORS[i % 5], -1, cv2.LINE_AA)
        if settings.labels:
            text = f"{det.label} {det.score:.2f}"
            (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
            if whole_image:
                # Classes stack down the left edge, under the banner.
                ty = int(th * 2.5) + (th + base + 4) * list(detections).index(det) + th
                tx = 4
            else:
                tx, ty = x1, max(th + base, y1 - 3)
            cv2.rectangle(image, (tx, ty - th - base), (tx + tw + 2, ty + 2), color, -1)
            cv2.putText(image, text, (tx + 1, ty - 1), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    if settings.banner and banner:
        (tw, th), base = cv2.getTextSize(banner, _FONT, scale, 1)
        cv2.rectangle(image, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
        cv2.putText(image, banner, (3, th + 3), _FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)
