"""Instance masks from a YOLO segmentation head: each detection's mask coefficients times the prototypes
(a low-resolution, e.g. 80x80, basis), as a polygon in source pixels.

Only the detection's box is computed, and straight at source resolution: the prototype cells under the
box are combined, then one bilinear warp maps them onto the box's source pixels (the letterbox undone in
the same step, per axis, as for boxes), and the mask is what is above 0 (a sigmoid above 0.5) inside the
box. Its outer contour (of the largest part, when the mask falls apart) is what leaves the worker: a few
dozen points, never the mask itself.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from engines.adapters.base import Letterbox


def box_mask(coeffs: np.ndarray, protos: np.ndarray, box_input: np.ndarray, fit: Letterbox,
             input_hw: tuple[int, int]) -> tuple[np.ndarray, int, int] | None:
    """One detection's mask over its box in source pixels: (uint8 mask, x0, y0 of its top-left pixel), or
    None for a box with no pixels. coeffs (nm,), protos (nm, mh, mw), box_input x1y1x2y2 in input pixels."""
    nm, mh, mw = protos.shape
    stride_x, stride_y = input_hw[1] / mw, input_hw[0] / mh
    bx1, by1, bx2, by2 = fit.boxes_to_source(box_input[None])[0]
    x0, y0 = max(0, math.floor(bx1)), max(0, math.floor(by1))
    x1, y1 = min(fit.src_w, math.ceil(bx2)), min(fit.src_h, math.ceil(by2))
    if x1 <= x0 or y1 <= y0:
        return None
    # Prototype cells under the box, with a cell of margin for the bilinear samples at its edges.
    px1, py1, px2, py2 = box_input / (stride_x, stride_y, stride_x, stride_y)
    i0, j0 = max(0, math.floor(px1) - 1), max(0, math.floor(py1) - 1)
    i1, j1 = min(mw, math.ceil(px2) + 1), min(mh, math.ceil(py2) + 1)
    if i1 <= i0 or j1 <= j0:
        return None
    logits = (coeffs.astype(np.float32) @ protos[:, j0:j1, i0:i1].reshape(nm, -1)).reshape(j1 - j0, i1 - i0)
    # Source pixel (x0 + u) has its centre at input x = (x0 + u + 0.5) * sx + pad_x, which is prototype
    # column x / stride - 0.5 (cell centres, as a bilinear upsampling with align_corners=False sees them).
    ax, ay = fit.sx / stride_x, fit.sy / stride_y
    m = np.array([[ax, 0, ((x0 + 0.5) * fit.sx + fit.pad_x) / stride_x - 0.5 - i0],
                  [0, ay, ((y0 + 0.5) * fit.sy + fit.pad_y) / stride_y - 0.5 - j0]], dtype=np.float64)
    warped = cv2.warpAffine(logits, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    mask = (warped > 0).astype(np.uint8)
    # Inside the box only: pixels whose centre lies outside it are cleared.
    cols = np.arange(x0, x1) + 0.5
    rows = np.arange(y0, y1) + 0.5
    mask[:, (cols < bx1) | (cols > bx2)] = 0
    mask[(rows < by1) | (rows > by2)] = 0
    return mask, x0, y0


def mask_polygon(coeffs: np.ndarray, protos: np.ndarray, box_input: np.ndarray, fit: Letterbox,
                 input_hw: tuple[int, int]) -> tuple[tuple[float, float], ...]:
    """The outer contour of one detection's mask (its largest part) in source pixels; () when it is empty."""
    found = box_mask(coeffs, protos, box_input, fit, input_hw)
    if found is None:
        return ()
    mask, x0, y0 = found
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return ()
    outer = max(contours, key=cv2.contourArea).reshape(-1, 2)
    return tuple((float(x + x0), float(y + y0)) for x, y in outer)
