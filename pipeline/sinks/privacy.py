"""Privacy masking: blur, pixelate or fill the regions of chosen labels in every output that shows
pixels (the video file and the live view). Detections still go to the events log."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.frame import Detection


def mask_regions(image: np.ndarray, detections: tuple[Detection, ...], labels: frozenset[str], mode: str,
                 padding: float) -> int:
    """Mask, in place, each detection whose label is in `labels`; returns how many regions were masked.

    `padding` grows each box by that fraction of its size on every side (hair, ears, a chin the detector
    cut off). Regions are clipped to the image.
    """
    h, w = image.shape[:2]
    masked = 0
    for det in detections:
        if det.label not in labels:
            continue
        x1, y1, x2, y2 = det.box
        px, py = (x2 - x1) * padding, (y2 - y1) * padding
        x1, y1 = max(0, int(x1 - px)), max(0, int(y1 - py))
        x2, y2 = min(w, int(np.ceil(x2 + px))), min(h, int(np.ceil(y2 + py)))
        if x2 <= x1 or y2 <= y1:
            continue
        region = image[y1:y2, x1:x2]
        if mode == "fill":
            region[:] = 0
        elif mode == "pixelate":
            # 5 blocks across the short side: a face becomes a few flat tiles, unrecognisable.
            blocks = max(1, min(region.shape[:2]) // 5)
            small = cv2.resize(region, (max(1, region.shape[1] // blocks), max(1, region.shape[0] // blocks)),
                               interpolation=cv2.INTER_AREA)
            region[:] = cv2.resize(small, (region.shape[1], region.shape[0]), interpolation=cv2.INTER_NEAREST)
        else:
            # A kernel a third of the region: strong enough that features are gone, not just softened.
            k = max(3, (min(region.shape[:2]) // 3) | 1)
            region[:] = cv2.GaussianBlur(region, (k, k), 0)
            region[:] = cv2.blur(region, (k, k))
        masked += 1
    return masked
