"""The saliency map (engines/saliency.py) as a colour heat map blended into a frame, under the boxes.

Only the part of the frame the map covers is touched (a classifier's centre crop leaves the sides as they
are), and only the map's cells over it are scaled up (a letterbox's padding rows are not). The colour is
looked up at the map's resolution and the coloured cells are then scaled to the frame's pixels with
cv2.resize: on the machine this was written on, cv2.warpAffine (one call from map to frame) took 6 ms at
720p and applyColorMap on the full-size map 3 ms, against about 2 ms for this (benchmarks/saliency.py).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engines.saliency import Saliency

# Blue (cold) to red (hot), as Grad-CAM figures show it: JET without its last eighth, whose dark red made the
# hottest spot (a face) look dimmer than the orange around it once blended.
COLORS = cv2.applyColorMap(np.round(np.arange(256) * 0.875).astype(np.uint8).reshape(256, 1), cv2.COLORMAP_JET)


def covered(shape_hw: tuple[int, int], box) -> tuple[int, int, int, int] | None:
    """The frame's pixels (x0, y0, x1, y1) under the map's box, or None when none are."""
    h, w = shape_hw
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(w, math.ceil(box[2])), min(h, math.ceil(box[3]))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _span(lo: int, hi: int, b0: float, b1: float, cells: int) -> tuple[int, int, int, int]:
    """Along one axis: the map cells (c0, c1) over pixels [lo, hi), the pixel size they scale to, and where
    pixel `lo` falls in that scaled strip. One cell of margin each side keeps the interpolation at the edges."""
    cell = (b1 - b0) / cells
    c0 = max(0, math.floor((lo - b0) / cell) - 1)
    c1 = min(cells, math.ceil((hi - b0) / cell) + 1)
    start = max(0, round(lo - (b0 + c0 * cell)))
    size = max(round((c1 - c0) * cell), start + hi - lo)
    return c0, c1, size, start


def heat_image(saliency: Saliency, region: tuple[int, int, int, int]) -> np.ndarray:
    """The coloured map over `region` (x0, y0, x1, y1) of the frame, as a BGR uint8 image of its size."""
    x0, y0, x1, y1 = region
    bx0, by0, bx1, by1 = saliency.box
    mh, mw = saliency.map.shape
    cx0, cx1, sw, sx = _span(x0, x1, bx0, bx1, mw)
    cy0, cy1, sh, sy = _span(y0, y1, by0, by1, mh)
    colour = cv2.applyColorMap(np.ascontiguousarray(saliency.map[cy0:cy1, cx0:cx1]), COLORS)
    scaled = cv2.resize(colour, (sw, sh), interpolation=cv2.INTER_LINEAR)
    return scaled[sy:sy + y1 - y0, sx:sx + x1 - x0]


def blend(image: np.ndarray, saliency: Saliency, alpha: float) -> None:
    """Blend the heat map into `image` (BGR uint8, in place) with opacity `alpha`."""
    region = covered(image.shape[:2], saliency.box)
    if region is None or alpha <= 0:
        return
    x0, y0, x1, y1 = region
    roi = image[y0:y1, x0:x1]
    cv2.addWeighted(roi, 1.0 - alpha, heat_image(saliency, region), alpha, 0.0, dst=roi)
