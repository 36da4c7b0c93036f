"""Ultralytics as the peer the YOLO benchmark compares with, always in a process of its own: importing it
sets process-wide OpenCV and torch state (threads among them) that the measurements must not inherit.
Never imported by perceptd; the benchmark runs it only when `ultralytics` is importable.

    python -m benchmarks.ultralytics_peer export OUT.onnx [--imgsz 640] [--dynamic]
        YOLO11n from Ultralytics' own yaml (random weights, seeded: speed does not depend on them), exported
        to ONNX as a user would (simplified, metadata written).
    python -m benchmarks.ultralytics_peer predict MODEL.onnx CLIP --warmup S --duration S
        model.predict(CLIP, stream=True) on that ONNX: frames per second over the timed part.
    python -m benchmarks.ultralytics_peer streams MODEL.onnx STREAMS_FILE --warmup S --duration S
        Its multi-stream mode: a .streams file (one source per line) read by LoadStreams, a batch of one
        frame per stream per call.

Each prints one JSON line last. Offline: YOLO_OFFLINE and YOLO_AUTOINSTALL=False keep it from downloading or
pip-installing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "False"
os.environ["YOLO_VERBOSE"] = "False"
os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="ultralytics-cfg-"))


def export(out: str, imgsz: int, dynamic: bool) -> dict:
    import shutil

    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the export lands next to the (virtual) weights: here
        path = model.export(format="onnx", imgsz=imgsz, dynamic=dynamic, simplify=True)
        shutil.move(path, out)
    import ultralytics

    return {"path": out, "ultralytics": ultralytics.__version__}


def _usable_nms() -> None:
    """Ultralytics imports torchvision for its NMS whenever it is installed; a torchvision wheel built for
    another torch (a CUDA wheel beside a CPU torch) imports but lacks its operators. Then its NMS is swapped
    for Ultralytics' own torch NMS, which matches torchvision's results (ultralytics.utils.nms.TorchNMS)."""
    import types

    import torch

    try:
        import torchvision

        torchvision.ops.nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
        return
    except (ImportError, RuntimeError):  # a mismatched build fails on import or on its first call
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        torchvision = sys.modules["torchvision"] = types.ModuleType("torchvision")
        torchvision.ops = types.SimpleNamespace()
    from ultralytics.utils.nms import TorchNMS

    torchvision.ops.nms = TorchNMS.nms
    print("benchmarks.ultralytics_peer: torchvision's NMS does not load here; Ultralytics' own torch NMS used",
          file=sys.stderr)


def _timed(results, warmup_s: float, duration_s: float, per_item) -> dict:
    """Count what the generator yields after the warm-up, for the duration."""
    start = time.perf_counter()
    t0, n = None, 0
    for item in results:
        now = time.perf_counter()
        if t0 is None:
            if now - start >= warmup_s:
                t0 = now
            continue
        n += per_item(item)
        if now - t0 >= duration_s:
            return {"fps": n / (now - t0), "frames": n, "seconds": now - t0}
    raise SystemExit(f"the source ended before the timed run did ({n} frames timed)")


def predict(model_path: str, clip: str, warmup_s: float, duration_s: float) -> dict:
    from ultralytics import YOLO

    _usable_nms()
    model = YOLO(model_path, task="detect")
    results = model.predict(clip, stream=True, device="cpu", verbose=False, save=False)
    return _timed(results, warmup_s, duration_s, lambda r: 1)


def streams(model_path: str, streams_file: str, warmup_s: float, duration_s: float) -> dict:
    from ultralytics import YOLO

    _usable_nms()
    model = YOLO(model_path, task="detect")
    n_streams = sum(1 for line in open(streams_file) if line.strip())
    # One Results per stream per call: the frames of every stream processed together.
    results = model.predict(streams_file, stream=True, device="cpu", verbose=False, save=False)
    out = _timed(results, warmup_s, duration_s, lambda r: 1)
    out["streams"] = n_streams
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ultralytics_peer")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("out")
    e.add_argument("--imgsz", type=int, default=640)
    e.add_argument("--dynamic", action="store_true")
    for name in ("predict", "streams"):
        p = sub.add_parser(name)
        p.add_argument("model")
        p.add_argument("source")
        p.add_argument("--warmup", type=float, default=2.0)
        p.add_argument("--duration", type=float, default=8.0)
    a = ap.parse_args(argv)
    if a.cmd == "export":
        out = export(a.out, a.imgsz, a.dynamic)
    elif a.cmd == "predict":
        out = predict(a.model, a.source, a.warmup, a.duration)
    else:
        out = streams(a.model, a.source, a.warmup, a.duration)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
