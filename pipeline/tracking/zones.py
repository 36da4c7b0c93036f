"""Zones (polygons) and lines in pixels, and where a track's reference point is relative to them.

Coordinates come from the config as fractions of the frame (pixels when a value is > 1) and are resolved
to pixels once the frame size is known. A reference point near a zone's edge or a line jitters from
frame to frame; SceneEvents (events.py) smooths that with `inertia` before it reports anything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Objects that stand on the ground: their position is where they touch it (the bottom centre of the box),
# which is what a zone drawn on the floor or a line across a doorway means. Others use the box centre.
GROUNDED = frozenset({"person", "bicycle", "car", "motorcycle", "motorbike", "bus", "truck", "train", "dog", "cat",
                      "horse", "sheep", "cow", "vehicle", "pedestrian", "cyclist"})


def resolve(points, width: int, height: int) -> np.ndarray:
    """Config coordinates to pixels: a point whose values are all <= 1 is a fraction of the frame."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    fractional = (np.abs(pts) <= 1.0).all(axis=1)
    return np.where(fractional[:, None], pts * np.array([width, height], dtype=np.float64), pts)


def reference_points(boxes: np.ndarray, labels, anchor: str = "auto") -> np.ndarray:
    """[N, 2]: bottom centre for grounded labels (or anchor 'bottom'), centre otherwise (or 'center')."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    if anchor == "bottom":
        bottom = np.ones(len(boxes), bool)
    elif anchor == "center":
        bottom = np.zeros(len(boxes), bool)
    else:
        bottom = np.array([str(label) in GROUNDED for label in labels], bool)
    return np.stack([cx, np.where(bottom, boxes[:, 3], cy)], axis=1)


def inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd ray casting for many points against one polygon: bool [N]."""
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0][None, :], polygon[:, 1][None, :]
    x2, y2 = np.roll(polygon[:, 0], -1)[None, :], np.roll(polygon[:, 1], -1)[None, :]
    straddles = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return ((straddles & (x < x_cross)).sum(axis=1) % 2) == 1


def side(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Which side of the line a->b each point is on: +1, -1 (0 exactly on it)."""
    d = b - a
    return np.sign(d[0] * (points[:, 1] - a[1]) - d[1] * (points[:, 0] - a[0]))


def segments_cross(p: np.ndarray, q: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Does the path p->q cross the segment a-b (not merely the infinite line through it)?"""
    def orient(u, v, w):
        return np.sign((v[0] - u[0]) * (w[1] - u[1]) - (v[1] - u[1]) * (w[0] - u[0]))
    return orient(p, q, a) != orient(p, q, b) and orient(a, b, p) != orient(a, b, q)


def side_names(a: np.ndarray, b: np.ndarray) -> dict[int, str]:
    """Names for the two sides of a->b, after the direction of travel that reaches them in the image:
    a vertical line has a 'left' and a 'right' side, a horizontal one 'up' and 'down'."""
    d = b - a
    normal = np.array([-d[1], d[0]])  # points to the +1 side (image y grows downwards)
    if abs(normal[0]) >= abs(normal[1]):
        plus = "right" if normal[0] > 0 else "left"
    else:
        plus = "down" if normal[1] > 0 else "up"
    opposite = {"right": "left", "left": "right", "down": "up", "up": "down"}
    return {1: plus, -1: opposite[plus]}


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: np.ndarray  # [K, 2] pixels
    labels: frozenset[str] = frozenset()  # empty: every label

    def counts(self, label: str) -> bool:
        return not self.labels or label in self.labels


@dataclass(frozen=True)
class Line:
    name: str
    a: np.ndarray
    b: np.ndarray
    labels: frozenset[str] = frozenset()

    def counts(self, label: str) -> bool:
        return not self.labels or label in self.labels

    @property
    def sides(self) -> dict[int, str]:
        return side_names(self.a, self.b)
