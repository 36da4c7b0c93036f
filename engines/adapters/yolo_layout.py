"""Which Ultralytics-style YOLO export a model is: its metadata, and the layout of its prediction tensor.

Layouts (one frame's prediction tensor, batch axis removed; `extra` channels follow the classes: 32 mask
coefficients for segmentation, K*D keypoint values for pose):
  v8   [4 + nc + extra, N]   YOLOv8/v11/v12 and YOLO26's one-to-many head: cx, cy, w, h, class scores.
  v5   [N, 5 + nc + extra]   YOLOv5 (its own repository): cx, cy, w, h, objectness, class scores.
  e2e  [N, 6 + extra]        end-to-end: YOLOv10, YOLO26 (`nms=False`), `export(nms=True)`: x1, y1, x2, y2,
                             score, class id; already free of duplicates, no NMS.
Ultralytics writes `names`, `imgsz`, `task`, `end2end` (and `kpt_shape` for pose) into the ONNX metadata.

Layout rule, (a, b) the prediction's shape:
  1. Metadata `end2end: True` (or `nms: True` in its export args): e2e.
  2. With the class count known (metadata names, else the labels file): v8 or v5 when exactly one of them
     fits it; rows of 6 + extra that fit neither are e2e.
  3. Otherwise the short axis is the channels: v8 when a < b. Rows (a > b) are e2e when b == 6 + extra and
     the metadata does not say otherwise, unless a is exactly YOLOv5's anchor count for the input size
     (3 anchors per cell at strides 8, 16, 32); else v5.
  Nothing fits: ValueError naming the shape.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

TASKS = ("detect", "pose", "segment")  # what the yolo family decodes; `classify` is the classifier family


@dataclass(frozen=True)
class YoloMeta:
    """What an Ultralytics ONNX export says about itself; every field optional (other exporters write none)."""

    names: tuple[str, ...] = ()
    imgsz: tuple[int, int] | None = None  # (h, w)
    task: str | None = None
    end2end: bool | None = None
    kpt_shape: tuple[int, int] | None = None  # (keypoints, 2 or 3 values each)


def _literal(text: str | None):
    if not text:
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_metadata(meta: dict[str, str]) -> YoloMeta:
    """The Ultralytics fields of an ONNX model's metadata_props; unreadable fields are left out."""
    names: tuple[str, ...] = ()
    raw = _literal(meta.get("names"))
    if isinstance(raw, dict) and raw and all(isinstance(k, int) and k >= 0 for k in raw):
        names = tuple(str(raw.get(i, i)) for i in range(max(raw) + 1))
    elif isinstance(raw, (list, tuple)):
        names = tuple(str(v) for v in raw)
    imgsz = _literal(meta.get("imgsz"))
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    elif isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(isinstance(v, int) for v in imgsz):
        imgsz = (int(imgsz[0]), int(imgsz[1]))
    else:
        imgsz = None
    end2end = {"True": True, "False": False}.get(meta.get("end2end", ""))
    args = _literal(meta.get("args"))
    if isinstance(args, dict) and args.get("nms") is True:
        end2end = True  # export(nms=True): NMS is inside the graph, outputs are [N, 6 + extra]
    kpt = _literal(meta.get("kpt_shape"))
    kpt_shape = (int(kpt[0]), int(kpt[1])) if isinstance(kpt, (list, tuple)) and len(kpt) == 2 else None
    task = meta.get("task") or None
    return YoloMeta(names, imgsz, task, end2end, kpt_shape)


def v5_rows(input_hw: tuple[int, int]) -> int:
    """YOLOv5's candidate count: 3 anchors per cell of the stride 8, 16 and 32 grids."""
    h, w = input_hw
    return 3 * sum(-(-h // s) * -(-w // s) for s in (8, 16, 32))


def describe_layouts(extra: int) -> str:
    more = f" + {extra} extra" if extra else ""
    return (f"v8/v11 [4+nc{more}, N], v5 [N, 5+nc{more}] or end-to-end [N, 6{more}] (x1, y1, x2, y2, score, "
            "class)")


def detect_layout(shape: tuple, nc: int = 0, extra: int = 0, end2end: bool | None = None,
                  input_hw: tuple[int, int] | None = None) -> str:
    """'v8', 'v5' or 'e2e' for a per-frame prediction shape (a, b); see the module docstring."""
    a, b = int(shape[0]), int(shape[1])
    fits = {"v8": a >= 5 + extra, "v5": b >= 6 + extra, "e2e": b == 6 + extra}
    if end2end:
        if fits["e2e"]:
            return "e2e"
        raise ValueError(f"the model's metadata says end-to-end, which needs [N, {6 + extra}] per frame "
                         f"(x1, y1, x2, y2, score, class{', extras' * bool(extra)}); its output is {list(shape)}")
    if nc > 0:
        v8, v5 = a == 4 + nc + extra, b == 5 + nc + extra
        if v8 != v5:
            return "v8" if v8 else "v5"
        if not v8 and fits["e2e"] and end2end is None and a > b:
            return "e2e"
    if a < b and fits["v8"]:
        return "v8"
    if a > b:
        if fits["e2e"] and end2end is None and (input_hw is None or a != v5_rows(input_hw)):
            return "e2e"
        if fits["v5"]:
            return "v5"
    raise ValueError(f"output {list(shape)} per frame fits no YOLO layout: {describe_layouts(extra)}")
