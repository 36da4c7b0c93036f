"""Helpers for comparing perceptd's YOLO decoding with Ultralytics' (tests/ultralytics_ref.py, run in its own
process): exporting the models once per session, running perceptd on real frames, matching detections."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.adapters import AdapterParams
from engines.adapters.masks import box_mask
from engines.adapters.yolo import YoloAdapter
from engines.base import EngineOptions, create_engine
from engines.detection import Detection
from engines.onnxmeta import read_metadata
from tests.conftest import REPO, photo_bgr

SCRIPT = REPO / "tests" / "ultralytics_ref.py"
CONF, IOU, MAX_DET = 0.25, 0.45, 100
PHOTOS = ("astronaut", "coffee", "chelsea")
CARPHONE_FRAMES = (0, 60, 119)


def need(condition: bool, what: str) -> None:
    """CI installs the test references (.ci/test-references.txt): there a missing one is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing; .ci/run should have installed it")
        pytest.skip(f"{what} is not installed here")


def need_ultralytics() -> None:
    need(importlib.util.find_spec("ultralytics") is not None, "ultralytics (the test reference, "
         "pip install -c .ci/constraints.txt -r .ci/test-references.txt)")


def reference_env(tmp: Path) -> dict:
    env = dict(os.environ)
    env["YOLO_CONFIG_DIR"] = str(tmp / "ultralytics-config")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def export_models(out: Path) -> dict[str, Path]:
    """Every model of tests/ultralytics_ref.py's MODELS, exported to ONNX by Ultralytics into `out`."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "export", str(out)], cwd=out, env=reference_env(out),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {k: Path(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def frames(carphone: Path) -> list[tuple[str, np.ndarray]]:
    """Real photos (scikit-image) and decoded frames of the carphone clip, BGR."""
    out = [(name, photo_bgr(name)) for name in PHOTOS]
    cap = cv2.VideoCapture(str(carphone))
    index = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if index in CARPHONE_FRAMES:
            out.append((f"carphone#{index}", frame))
        index += 1
    cap.release()
    assert len(out) == len(PHOTOS) + len(CARPHONE_FRAMES)
    return out


@dataclass
class Case:
    model: str
    task: str
    path: Path
    frame_name: str
    frame: np.ndarray
    input: np.ndarray  # (1, 3, H, W): perceptd's network input
    raw: list[np.ndarray]  # the engine's outputs for it, batch axis kept
    detections: list[Detection]  # perceptd's decoding
    masks: list | None = None  # segmentation: each detection's whole mask in source pixels (bool)


def full_masks(adapter: YoloAdapter, raw, fit, dets: list[Detection], hw) -> list[np.ndarray]:
    """The mask perceptd computed for each detection (its polygon is that mask's outer contour), found
    again from the candidate whose box became the detection's."""
    boxes, _, _, coeffs = adapter._candidates(raw[0][0])
    src = fit.boxes_to_source(boxes.astype(np.float32))
    out = []
    for d in dets:
        k = int(np.abs(src - np.asarray(d.box, dtype=np.float32)).sum(axis=1).argmin())
        mask = np.zeros(hw, dtype=bool)
        found = box_mask(coeffs[k], raw[1][0], boxes[k], fit, adapter.input_hw)
        if found is not None:
            m, x0, y0 = found
            mask[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m > 0
        out.append(mask)
    return out


def run_perceptd(model: str, path: Path, frame_list, params: AdapterParams | None = None) -> list[Case]:
    """perceptd's adapter and ONNX Runtime engine on each frame, as the worker runs them."""
    meta = read_metadata(path)
    params = params or AdapterParams(confidence=CONF, iou=IOU, max_detections=MAX_DET)
    cases = []
    with create_engine("onnxruntime", path, EngineOptions(max_batch=1)) as engine:
        hw = tuple(engine.inputs[0].shape[2:])
        adapter = YoloAdapter(hw, [], params, metadata=meta)
        adapter.check_outputs([o.shape for o in engine.outputs], [o.name for o in engine.outputs])
        for name, frame in frame_list:
            x = np.empty((1, 3, *hw), dtype=np.float32)
            fit = adapter.preprocess(frame, x[0])
            raw = engine.infer(x)
            dets = adapter.postprocess([r[0] for r in raw], fit)
            masks = full_masks(adapter, raw, fit, dets, frame.shape[:2]) if adapter.task == "segment" else None
            cases.append(Case(model, adapter.task, path, name, frame, x, raw, dets, masks))
    return cases


def reference(cases: list[Case], tmp: Path) -> list[dict]:
    """Ultralytics' results for each case: {"decoder": ..., "end_to_end": ...} (tests/ultralytics_ref.py)."""
    arrays = {}
    spec = {"conf": CONF, "iou": IOU, "max_det": MAX_DET, "cases": []}
    for i, c in enumerate(cases):
        spec["cases"].append({"model": c.model, "task": c.task, "path": str(c.path), "outputs": len(c.raw)})
        arrays[f"frame{i}"] = c.frame
        arrays[f"input{i}"] = c.input
        for j, r in enumerate(c.raw):
            arrays[f"raw{i}_{j}"] = r
    npz, out = tmp / "cases.npz", tmp / "reference.json"
    np.savez(npz, spec=json.dumps(spec), **arrays)
    proc = subprocess.run([sys.executable, str(SCRIPT), "reference", str(npz), str(out)], cwd=tmp,
                          env=reference_env(tmp), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    with np.load(out.with_suffix(".masks.npz")) as packed:
        for i, (c, r) in enumerate(zip(cases, results)):
            if "polygons" in r["decoder"]:
                n, size = len(r["decoder"]["boxes"]), c.frame.shape[0] * c.frame.shape[1]
                r["decoder"]["masks"] = [np.unpackbits(packed[f"{i}_{j}"])[:size].reshape(c.frame.shape[:2])
                                         .astype(bool) for j in range(n)]
    return results


def box_iou(a, b) -> float:
    if np.allclose(a, b, atol=1e-3):
        return 1.0  # the same box, even one with no area left after clipping to the frame
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def polygon_mask(points, hw) -> np.ndarray:
    mask = np.zeros(hw, dtype=np.uint8)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) >= 3:
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


def mask_iou(a, b, hw) -> float:
    ma, mb = polygon_mask(a, hw), polygon_mask(b, hw)
    union = (ma | mb).sum()
    return float((ma & mb).sum() / union) if union else 1.0


@dataclass
class Agreement:
    """How one side's detections match the other's: pairs of the same class, greedily by IoU (>= 0.5)."""

    ours: int = 0
    theirs: int = 0
    matched: int = 0
    box_ious: list = None
    score_diffs: list = None
    keypoint_px: list = None  # mean keypoint distance per matched pair, source pixels
    mask_ious: list = None  # whole masks, source pixels (when both sides have them)
    outline_ious: list = None  # the polygons: outer contour of each mask's largest part, filled

    def __post_init__(self):
        self.box_ious, self.score_diffs, self.keypoint_px, self.mask_ious, self.outline_ious = [], [], [], [], []

    def add(self, dets: list[Detection], ref: dict, hw: tuple[int, int], masks: list | None = None) -> None:
        self.ours += len(dets)
        self.theirs += len(ref["boxes"])
        free = set(range(len(dets)))
        for j in np.argsort(-np.asarray(ref["scores"]), kind="stable"):
            best, best_key, best_iou = None, None, 0.0
            for i in free:  # the best IoU, then the closest score: near-duplicates pair with their own twin
                if dets[i].class_id == ref["classes"][j]:
                    iou = box_iou(dets[i].box, ref["boxes"][j])
                    key = (round(iou, 4), -abs(dets[i].score - ref["scores"][j]))
                    if iou >= 0.5 and (best_key is None or key > best_key):
                        best, best_key, best_iou = i, key, iou
            if best is None:
                continue
            free.discard(best)
            d = dets[best]
            self.matched += 1
            self.box_ious.append(best_iou)
            self.score_diffs.append(abs(d.score - ref["scores"][j]))
            if "keypoints" in ref:
                ours, theirs = np.asarray(d.keypoints)[:, :2], np.asarray(ref["keypoints"][j])[:, :2]
                self.keypoint_px.append(float(np.linalg.norm(ours - theirs, axis=1).mean()))
            if "polygons" in ref:
                self.outline_ious.append(mask_iou(d.polygon, ref["polygons"][j], hw))
            if masks is not None and "masks" in ref:
                a, b = masks[best], ref["masks"][j]
                union = (a | b).sum()
                self.mask_ious.append(float((a & b).sum() / union) if union else 1.0)

    @property
    def recall(self) -> float:
        """Matched pairs over the larger of the two counts: 1.0 only when both sides agree on every box."""
        return self.matched / max(self.ours, self.theirs, 1)

    def summary(self) -> str:
        parts = [f"{self.matched}/{self.theirs} reference detections matched ({self.ours} perceptd)",
                 f"box IoU mean {np.mean(self.box_ious or [0]):.4f} min {np.min(self.box_ious or [0]):.4f}",
                 f"score |diff| max {np.max(self.score_diffs or [0]):.2e}"]
        if self.keypoint_px:
            parts.append(f"keypoints mean {np.mean(self.keypoint_px):.3f} px, max {np.max(self.keypoint_px):.3f} px")
        if self.mask_ious:
            parts.append(f"mask IoU mean {np.mean(self.mask_ious):.4f} median {np.median(self.mask_ious):.4f} "
                         f"min {np.min(self.mask_ious):.4f}")
        if self.outline_ious:
            parts.append(f"polygon (largest part) IoU mean {np.mean(self.outline_ious):.4f} "
                         f"median {np.median(self.outline_ious):.4f}")
        return "; ".join(parts)
