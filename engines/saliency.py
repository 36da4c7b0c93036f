"""Where the network looks, per frame, from outputs the model already computes (no second pass, no gradients).

- Classifiers ending in global average pooling and a linear layer: the class activation map (Zhou et al.,
  2016), exact for such networks: the last feature map weighted by the chosen class's row of the linear
  layer. Its mean plus the class's bias is the class's logit; Grad-CAM at that layer is the same map up to a
  positive factor. `perceptd export --saliency` adds the feature map as an output and stores the linear
  layer in the ONNX file's metadata (CAM_KEY, CAM_WEIGHTS_KEY), where `CamWeights.from_model` finds it.
- Detectors: the pre-NMS class score of each cell, max over its anchors and classes (score_grids),
  upsampled to the finest stride and merged across strides by max. Absolute scores (0-1): a frame with
  nothing in it stays cold.

The result, `Saliency`, is small (a uint8 map at the network's resolution, where it falls in the source, the
peak and a coarse grid) and crosses from the worker to the sinks inside the WorkResult.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engines.onnxmeta import read_metadata

log = logging.getLogger(__name__)

CAM_KEY = "perceptd_saliency"  # JSON: kind, output, classes, channels, dtype
CAM_WEIGHTS_KEY = "perceptd_saliency_weights"  # base64 of the linear layer: weight [nc, C] then bias [nc], <f4
GRID = 8  # the JSONL's coarse grid: GRID x GRID cells over the source frame
_PEAK_MIN_SIDE = 32  # coarse maps (a classifier's 7x7) are upsampled to about this before taking the peak


@dataclass(frozen=True, eq=False)
class Saliency:
    """One frame's map. `map` (uint8, 255 = 1.0) covers `box` in source pixels: its outer edges fall there,
    past the frame where the network input had padding. `grid` covers the whole frame, row-major, 0-1."""

    map: np.ndarray
    box: tuple[float, float, float, float]
    peak: tuple[float, float]
    grid: np.ndarray
    label: str = ""  # a classifier's map is of one class: which

    def to_json(self) -> dict:
        out = {"peak": [round(self.peak[0], 1), round(self.peak[1], 1)],
               "grid": [[round(float(v), 3) for v in row] for row in self.grid]}
        if self.label:
            out["label"] = self.label
        return out


def source_box(fit, input_hw: tuple[int, int]) -> tuple[float, float, float, float]:
    """Where the network input's outer edges fall in source pixels (Letterbox mapping, pads may be negative)."""
    h, w = input_hw
    return (-fit.pad_x / fit.sx, -fit.pad_y / fit.sy, (w - fit.pad_x) / fit.sx, (h - fit.pad_y) / fit.sy)


def map_to_target(map_hw: tuple[int, int], box, scale_xy: tuple[float, float]) -> np.ndarray:
    """The 2x3 affine taking map pixel indices to target pixel indices, where a target pixel is `scale_xy`
    source pixels (pixel centres at +0.5 on both sides)."""
    mh, mw = map_hw
    x0, y0, x1, y1 = box
    kx, ky = 1.0 / scale_xy[0], 1.0 / scale_xy[1]
    ax, ay = (x1 - x0) / mw * kx, (y1 - y0) / mh * ky
    return np.float32([[ax, 0, (x0 + 0.5 * (x1 - x0) / mw) * kx - 0.5], [0, ay, (y0 + 0.5 * (y1 - y0) / mh) * ky - 0.5]])


def summarise(values: np.ndarray, fit, input_hw: tuple[int, int]) -> Saliency:
    """A float map in [0, 1] over the network input -> Saliency (peak and grid in source pixels).
    OpenCV calls where numpy's would be several times slower (multi-axis reductions, casts)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    box = source_box(fit, input_hw)
    mh, mw = values.shape
    up = max(1, math.ceil(_PEAK_MIN_SIDE / min(mh, mw)))
    fine = cv2.resize(values, (mw * up, mh * up), interpolation=cv2.INTER_LINEAR) if up > 1 else values
    _, _, _, (px, py) = cv2.minMaxLoc(fine)
    x0, y0, x1, y1 = box
    peak = (min(max(x0 + (px + 0.5) * (x1 - x0) / fine.shape[1], 0.0), float(fit.src_w)),
            min(max(y0 + (py + 0.5) * (y1 - y0) / fine.shape[0], 0.0), float(fit.src_h)))
    grid = np.clip(grid_max(values, box, fit.src_w, fit.src_h), 0.0, 1.0)
    return Saliency(cv2.convertScaleAbs(values, alpha=255.0), box, (float(peak[0]), float(peak[1])), grid)


def _cell_ranges(size: float, b0: float, b1: float, cells: int) -> list[tuple[int, int]]:
    """Per grid cell along one axis of `size` source pixels: the map cells [lo, hi) it overlaps."""
    edges = (np.arange(GRID + 1) * (size / GRID) - b0) * (cells / (b1 - b0))
    lo = np.clip(np.floor(edges[:-1]), 0, cells).astype(int)
    hi = np.clip(np.ceil(edges[1:]), 0, cells).astype(int)
    return list(zip(lo.tolist(), hi.tolist()))


def grid_max(values: np.ndarray, box, src_w: int, src_h: int) -> np.ndarray:
    """GRID x GRID over the source frame: the strongest map cell overlapping each grid cell (0 where the map
    does not reach). The max, not a sample: a lone hot cell (a small face) keeps its value."""
    rows = _cell_ranges(src_h, box[1], box[3], values.shape[0])
    cols = _cell_ranges(src_w, box[0], box[2], values.shape[1])
    grid = np.zeros((GRID, GRID), np.float32)
    for gy, (r0, r1) in enumerate(rows):
        if r1 > r0:
            band = values[r0:r1].max(axis=0)
            grid[gy] = [band[c0:c1].max() if c1 > c0 else 0.0 for c0, c1 in cols]
    return grid


def merge_strides(grids: list[np.ndarray]) -> np.ndarray:
    """Per-stride score grids -> one map at the finest grid's size, max across strides. A coarse cell covers
    whole fine cells (a stride-16 cell is 2x2 stride-8 cells), so each is repeated over them: interpolating
    would lower a lone cell's score (a face seen at one stride only)."""
    finest = max(grids, key=lambda g: g.size)
    fh, fw = finest.shape
    out = finest.astype(np.float32, copy=True)
    for g in grids:
        if g is finest:
            continue
        ky, kx = math.ceil(fh / g.shape[0]), math.ceil(fw / g.shape[1])
        up = cv2.resize(g.astype(np.float32, copy=False), (g.shape[1] * kx, g.shape[0] * ky),
                        interpolation=cv2.INTER_NEAREST)
        np.maximum(out, up[:fh, :fw], out=out)
    return out


def stride_cells(input_hw: tuple[int, int], strides, per_cell: int, total: int) -> list[tuple[int, int]] | None:
    """(ny, nx) per stride when `total` rows are `per_cell` per cell of each stride's grid, else None."""
    h, w = input_hw
    cells = [(math.ceil(h / s), math.ceil(w / s)) for s in strides]
    return cells if sum(ny * nx for ny, nx in cells) * per_cell == total else None


def score_grids(scores: np.ndarray, cells: list[tuple[int, int]], per_cell: int,
                anchors_inner: bool) -> list[np.ndarray]:
    """A detector's per-row scores -> per stride, each cell's best over its `per_cell` anchors. Rows run
    stride by stride; within one, cell-major with the anchors inner (RetinaFace) or anchor-major (YOLOv5)."""
    grids, start = [], 0
    for ny, nx in cells:
        block = scores[start:start + ny * nx * per_cell]
        grids.append(block.reshape(ny, nx, per_cell).max(axis=2) if anchors_inner
                     else block.reshape(per_cell, ny, nx).max(axis=0))
        start += block.size
    return grids


@dataclass(frozen=True, eq=False)
class CamWeights:
    """A GAP + linear classifier's linear layer, and which output holds the feature map it pools."""

    output: str
    weight: np.ndarray  # [nc, C] float32
    bias: np.ndarray  # [nc]

    @staticmethod
    def encode(weight: np.ndarray, bias: np.ndarray, output: str) -> dict[str, str]:
        """The metadata entries `perceptd export --saliency` writes into the ONNX file."""
        nc, c = weight.shape
        head = {"kind": "cam", "output": output, "classes": int(nc), "channels": int(c), "dtype": "<f4"}
        blob = np.concatenate([weight.astype("<f4").ravel(), bias.astype("<f4").ravel()]).tobytes()
        return {CAM_KEY: json.dumps(head), CAM_WEIGHTS_KEY: base64.b64encode(blob).decode("ascii")}

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> "CamWeights | None":
        if CAM_KEY not in meta or CAM_WEIGHTS_KEY not in meta:
            return None
        head = json.loads(meta[CAM_KEY])
        if head.get("kind") != "cam" or head.get("dtype") != "<f4":
            raise ValueError(f"{CAM_KEY}: unknown saliency {head}; re-export the model with this perceptd")
        nc, c = int(head["classes"]), int(head["channels"])
        flat = np.frombuffer(base64.b64decode(meta[CAM_WEIGHTS_KEY]), dtype="<f4")
        if flat.size != nc * c + nc:
            raise ValueError(f"{CAM_WEIGHTS_KEY}: {flat.size} values for {nc} classes of {c} channels")
        return cls(str(head["output"]), flat[:nc * c].reshape(nc, c).astype(np.float32), flat[nc * c:].astype(np.float32))

    @classmethod
    def from_model(cls, model_path: str | Path) -> "CamWeights | None":
        """From the ONNX file's metadata; for a TorchScript file, from the ONNX exported beside it."""
        path = Path(model_path)
        if path.suffix in (".pt", ".pt2") and path.with_suffix(".onnx").is_file():
            path = path.with_suffix(".onnx")
        return cls.from_metadata(read_metadata(path))


def class_activation(features: np.ndarray, weights: CamWeights, class_id: int) -> np.ndarray:
    """The raw map for one class: weight[class] . features over channels, (h, w). Its mean + bias[class] is
    that class's logit."""
    c, h, w = features.shape
    return (weights.weight[class_id] @ features.reshape(c, h * w)).reshape(h, w)


def normalise_cam(cam: np.ndarray) -> np.ndarray:
    """Grad-CAM's display convention: the positive evidence only, scaled so the strongest cell is 1."""
    pos = np.maximum(cam, 0.0)
    top = float(pos.max())
    return pos / top if top > 0 else pos
