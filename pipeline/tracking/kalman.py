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
_H = np.eye(4, 8)


def xyxy_to_xyah(boxes: np.ndarray) -> np.ndarray:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + w / 2, boxes[:, 1] + h / 2, w / np.maximum(h, 1e-6), h], axis=1)


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    w = xyah[:, 2] * xyah[:, 3]
    h = xyah[:, 3]
    return np.stack([xyah[:, 0] - w / 2, xyah[:, 1] - h / 2, xyah[:, 0] + w / 2, xyah[:, 1] + h / 2], axis=1)


class KalmanBoxes:
    """Means [N, 8] and covariances [N, 8, 8] of N tracks; rows are added, updated and removed together
    with the tracker's own arrays."""

    def __init__(self):
        self.mean = np.zeros((0, 8))
        self.cov = np.zeros((0, 8, 8))

    def __len__(self) -> int:
        return len(self.mean)

    def add(self, xyah: np.ndarray) -> None:
        h = xyah[:, 3]
        mean = np.concatenate([xyah, np.zeros_like(xyah)], axis=1)
        std = np.stack([2 * _POS * h, 2 * _POS * h, np.full_like(h, 1e-2), 2 * _POS * h,
                        10 * _VEL * h, 10 * _VEL * h, np.full_like(h, 1e-5), 10 * _VEL * h], axis=1)
        cov = np.zeros((len(h), 8, 8))
        idx = np.arange(8)
        cov[:, idx, idx] = std ** 2
        self.mean = np.concatenate([self.mean, mean])
        self.cov = np.concatenate([self.cov, cov])

    def keep(self, rows: np.ndarray) -> None:
        self.mean = self.mean[rows]
        self.cov = self.cov[rows]

    def predict(self) -> None:
        if not len(self.mean):
            return
        h = self.mean[:, 3]
        std = np.stack([_POS * h, _POS * h, np.full_like(h, 1e-2), _POS * h,
                        _VEL * h, _VEL * h, np.full_like(h, 1e-5), _VEL * h], axis=1)
        self.mean = self.mean @ _F.T
        self.cov = _F @ self.cov @ _F.T
        idx = np.arange(8)
        self.cov[:, idx, idx] += std ** 2

    def update(self, rows: np.ndarray, xyah: np.ndarray) -> None:
        """Correct the tracks at `rows` with measured boxes (xyah), one per row."""
        if not len(rows):
            return
        mean, cov = self.mean[rows], self.cov[rows]
        h = mean[:, 3]
        r = np.stack([_POS * h, _POS * h, np.full_like(h, 1e-1), _POS * h], axis=1) ** 2
        s = cov[:, :4, :4].copy()  # H P H^T
        idx = np.arange(4)
        s[:, idx, idx] += r
        pht = cov[:, :, :4]  # P H^T
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)  # P H^T S^-1 (S symmetric)
        innovation = xyah - mean[:, :4]
        self.mean[rows] = mean + np.einsum("nij,nj->ni", gain, innovation)
        self.cov[rows] = cov - gain @ cov[:, :4, :]

    def boxes(self) -> np.ndarray:
        return xyah_to_xyxy(self.mean[:, :4])
