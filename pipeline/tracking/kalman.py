"""A constant-velocity Kalman filter over many boxes at once (numpy, no per-track Python loops).

State per track: centre x, centre y, aspect ratio (w/h), height, and their velocities, as in SORT and
ByteTrack. Noise scales with the box height, so a large near object and a small far one are equally
certain relative to their size. One step is one frame; callers that skip frames call predict() once per
frame they skipped.
"""

from __future__ import annotations

import numpy as np

_POS = 1.0 / 20  # position noise, as a fraction of the height
_VEL = 1.0 / 160  # velocity noise, likewise

_F = np.eye(8)
_F[:4, 4:] = np.eye(4)  # x' = x + v
_DIAG8, _DIAG4 = np.arange(8), np.arange(4)
# Standard deviations as (scale by the box height, constant): per frame these are a multiply and an add,
# not a stack of eight small arrays (the tracker's cost at a few boxes is numpy call overhead).
_INIT = (np.array([2 * _POS, 2 * _POS, 0, 2 * _POS, 10 * _VEL, 10 * _VEL, 0, 10 * _VEL]),
         np.array([0, 0, 1e-2, 0, 0, 0, 1e-5, 0]))
_PROCESS = (np.array([_POS, _POS, 0, _POS, _VEL, _VEL, 0, _VEL]), np.array([0, 0, 1e-2, 0, 0, 0, 1e-5, 0]))
_MEASURE = (np.array([_POS, _POS, 0, _POS]), np.array([0, 0, 1e-1, 0]))


def _variance(h: np.ndarray, scale_const: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    scale, const = scale_const
    return (h[:, None] * scale + const) ** 2


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    out = np.empty((len(boxes), 4))
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    out[:, 0] = boxes[:, 0] + w / 2
    out[:, 1] = boxes[:, 1] + h / 2
    out[:, 2] = w / np.maximum(h, 1e-6)
    out[:, 3] = h
    return out


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    out = np.empty((len(xyah), 4))
    half_w = xyah[:, 2] * xyah[:, 3] / 2
    half_h = xyah[:, 3] / 2
    out[:, 0] = xyah[:, 0] - half_w
    out[:, 1] = xyah[:, 1] - half_h
    out[:, 2] = xyah[:, 0] + half_w
    out[:, 3] = xyah[:, 1] + half_h
    return out


class KalmanBoxes:
    """Means [N, 8] and covariances [N, 8, 8] of N tracks; rows are added, updated and removed together
    with the tracker's own arrays."""

    def __init__(self):
        self.mean = np.zeros((0, 8))
        self.cov = np.zeros((0, 8, 8))

    def __len__(self) -> int:
        return len(self.mean)

    def add(self, xyah: np.ndarray) -> None:
        mean = np.concatenate([xyah, np.zeros_like(xyah)], axis=1)
        cov = np.zeros((len(xyah), 8, 8))
        cov[:, _DIAG8, _DIAG8] = _variance(xyah[:, 3], _INIT)
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])

    def keep(self, rows: np.ndarray) -> None:
        self.mean = self.mean[rows]
        self.cov = self.cov[rows]

    def predict(self) -> None:
        if not len(self.mean):
            return
        noise = _variance(self.mean[:, 3], _PROCESS)
        self.mean = self.mean @ _F.T
        self.cov = _F @ self.cov @ _F.T
        self.cov[:, _DIAG8, _DIAG8] += noise

    def update(self, rows: np.ndarray, xyah: np.ndarray) -> None:
        """Correct the tracks at `rows` with measured boxes (xyah), one per row."""
        if not len(rows):
            return
        mean, cov = self.mean[rows], self.cov[rows]
        s = cov[:, :4, :4].copy()  # H P H^T
        s[:, _DIAG4, _DIAG4] += _variance(mean[:, 3], _MEASURE)
        pht = cov[:, :, :4]  # P H^T
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
        innovation = xyah - mean[:, :4]
        self.mean[rows] = mean + np.einsum("nij,nj->ni", gain, innovation)
        self.cov[rows] = cov - gain @ cov[:, :4, :]

    def boxes(self) -> np.ndarray:
        return xyah_to_xyxy(self.mean[:, :4])
