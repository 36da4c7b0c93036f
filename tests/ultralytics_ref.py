"""Ultralytics as the test-time reference, run in its own process (it sets process-wide OpenCV and torch
state on import, which the rest of the suite must not inherit). Never imported by perceptd.

    python tests/ultralytics_ref.py export OUT_DIR
        Builds each model of MODELS from Ultralytics' own yaml (random weights, seeded), raises the biases
        listed there so that random weights give confident, varied detections, and exports it to ONNX at
        320x320 as a user would (simplified, metadata written). Prints {name: path} as JSON.
    python tests/ultralytics_ref.py reference CASES.npz OUT.json
        For each case (model, source frame, perceptd's network input and the raw outputs perceptd's engine
        gave for it): Ultralytics' predictor postprocess on those raw outputs ("decoder"), and Ultralytics'
        whole predictor on the source frame ("end_to_end": its own letterbox and its own ONNX Runtime run).
        Segmentation: the decoder's masks in source pixels (scale_masks) go to OUT.masks.npz.

Offline: YOLO_OFFLINE and YOLO_AUTOINSTALL=False keep it from pip-installing or downloading anything; what
the ONNX export needs (onnx, onnxslim) is installed beforehand from .ci/test-references.txt.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ["YOLO_VERBOSE"] = "False"
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-cfg-"))

IMGSZ = 320
# name: (yaml, export arguments, {class id: logit bias}); person, car, dog in COCO order. Ultralytics
# initialises every class bias near -10 (a prior of a few objects per image): set to these instead.
MODELS = {
    "detect": ("yolo11n.yaml", {}, {0: -3.0, 2: -3.5, 16: -4.0}),
    "e2e": ("yolo26n.yaml", {"nms": False}, {0: -3.0, 2: -3.5, 16: -4.0}),  # end-to-end: [1, 300, 6]
    "pose": ("yolo11n-pose.yaml", {}, {0: -2.5}),  # one class, person, as Ultralytics' pose models
    "segment": ("yolo11n-seg.yaml", {}, {0: -3.0, 2: -3.5, 16: -4.0}),
}


def coco_names() -> dict[int, str]:
    import yaml
    from ultralytics.utils import ROOT

    return yaml.safe_load((ROOT / "cfg" / "datasets" / "coco.yaml").read_text())["names"]


def raise_biases(model, biases: dict[int, float]) -> None:
    """Set the last class-score convolution's bias of every head branch (one-to-many and one-to-one)."""
    import torch

    head = model.model.model[-1]
    with torch.no_grad():
        for branch in ("cv3", "one2one_cv3"):
            for seq in getattr(head, branch, None) or ():
                conv = seq[-1]
                for c, b in biases.items():
                    if c < conv.bias.shape[0]:
                        conv.bias[c] = b


def one_class(model, cfg: str) -> None:
    """Rebuild the model from its yaml with nc: 1 (the yaml says 80)."""
    import torch
    from ultralytics.nn.tasks import yaml_model_load

    d = yaml_model_load(cfg)
    d["nc"] = 1
    torch.manual_seed(0)
    rebuilt = type(model.model)(d, nc=1, verbose=False)
    rebuilt.args, rebuilt.task = model.model.args, model.model.task
    model.model = rebuilt


def calibrate_batchnorm(model) -> None:
    """Random convolutions followed by BatchNorm with its initial statistics (mean 0, variance 1) shrink the
    activations layer after layer to nothing (1e-10 at the head): every output would be its bias. A few
    training-mode passes over real photos give BatchNorm real statistics, as training would, and the
    outputs then vary with the image."""
    import cv2
    import numpy as np
    import torch
    from skimage import data

    net = model.model
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the passes
    photos = [cv2.resize(getattr(data, n)(), (IMGSZ, IMGSZ)) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    batch = torch.from_numpy(np.stack(photos).transpose(0, 3, 1, 2).astype(np.float32) / 255)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(batch)
    net.eval()


def export(out_dir: Path) -> dict[str, str]:
    import torch
    from ultralytics import YOLO

    out = {}
    for name, (cfg, kwargs, biases) in MODELS.items():
        torch.manual_seed(0)
        model = YOLO(cfg)
        names = coco_names()
        if name == "pose":
            one_class(model, cfg)
            names = {0: names[0]}
        model.model.names = names
        calibrate_batchnorm(model)
        raise_biases(model, biases)
        path = Path(model.export(format="onnx", imgsz=IMGSZ, **kwargs))
        target = out_dir / f"{Path(cfg).stem}.onnx"
        path.replace(target)
        out[name] = str(target)
    return out


def outer_contour(mask):
    """The largest part's outer contour of a source-pixel mask: what perceptd reports as the polygon."""
    import cv2
    import numpy as np

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return max(contours, key=cv2.contourArea).reshape(-1, 2).tolist() if contours else []


def _result(r, masks: dict | None = None, key: str = "") -> dict:
    d = {"boxes": r.boxes.xyxy.numpy().tolist(), "scores": r.boxes.conf.numpy().tolist(),
         "classes": r.boxes.cls.numpy().astype(int).tolist()}
    if r.keypoints is not None:
        d["keypoints"] = r.keypoints.data.numpy().tolist()
    if r.masks is not None:
        import numpy as np
        from ultralytics.utils import ops

        # Ultralytics' masks at input resolution, taken to source pixels by its own scale_masks.
        source = (ops.scale_masks(r.masks.data[None].float(), r.orig_shape)[0] > 0.5).numpy()
        d["polygons"] = [outer_contour(m) for m in source]
        if masks is not None:
            for j, m in enumerate(source):
                masks[f"{key}_{j}"] = np.packbits(m)
    return d


def reference(cases_path: Path, out_path: Path) -> None:
    import numpy as np
    import torch
    from ultralytics.models.yolo.detect import DetectionPredictor
    from ultralytics.models.yolo.pose import PosePredictor
    from ultralytics.models.yolo.segment import SegmentationPredictor

    cases = np.load(cases_path, allow_pickle=False)
    spec = json.loads(str(cases["spec"]))
    predictors = {}
    results = []
    masks: dict = {}  # the decoder's full masks in source pixels, packed bits: "<case>_<detection>"
    for i, case in enumerate(spec["cases"]):
        key = case["model"]
        if key not in predictors:
            cls = {"pose": PosePredictor, "segment": SegmentationPredictor}.get(case["task"], DetectionPredictor)
            p = cls(overrides=dict(conf=spec["conf"], iou=spec["iou"], max_det=spec["max_det"], imgsz=IMGSZ,
                                   verbose=False, device="cpu", save=False))
            p.setup_model(case["path"])
            # The warm-up imports torchvision, whose PyPI wheel is a CUDA build that a CPU torch cannot load;
            # nothing in this reference needs it (Ultralytics' NMS falls back on its own torch code).
            p.done_warmup = True
            predictors[key] = p
        p = predictors[key]
        frame = cases[f"frame{i}"]
        raw = [torch.from_numpy(cases[f"raw{i}_{j}"]) for j in range(case["outputs"])]
        img = torch.from_numpy(cases[f"input{i}"])
        p.batch = ([f"case{i}"], [frame], [""])
        preds = (raw[0], raw[1]) if case["task"] == "segment" else raw[0]
        decoder = p.postprocess(preds, img, [frame.copy()])[0]
        end_to_end = list(p(source=[frame.copy()], stream=False))[0]
        results.append({"decoder": _result(decoder, masks, f"{i}"), "end_to_end": _result(end_to_end)})
    out_path.write_text(json.dumps(results))
    np.savez_compressed(out_path.with_suffix(".masks.npz"), **masks)


if __name__ == "__main__":
    if sys.argv[1] == "export":
        print(json.dumps(export(Path(sys.argv[2]))))
    else:
        reference(Path(sys.argv[2]), Path(sys.argv[3]))
