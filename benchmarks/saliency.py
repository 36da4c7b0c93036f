"""What sinks.overlay.saliency costs per frame on one core: the map (in the worker, from outputs the model
already produced) and the heat map's blend (in the sink), at 640x360 and 1280x720.

    python -m benchmarks.saliency [--clip sample:bigbuckbunny] [--frames 8] [--repeats 200] [--warmup 20]

Real frames of the clip, scaled to each size. mobilenet_v2 (class activation map) and retinaface (score map)
run for real, once per frame and untimed, to get their outputs. The YOLO map's cost depends only on the
output's shape, so it is timed on a random [84, 8400] v8 output of a 640x640 input (80 classes). Each call
is timed alone after untimed warm-up, as the thread's CPU time (thread_time_ns: the cost on one core, OpenCV
held to one thread); microseconds, median and p99 over frames x repeats. Also: what the built-in
mobilenet_v2's extra output (the feature map) costs the engine call when the map is off, ONNX Runtime on one
thread.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.config import load_frames
from benchmarks.stats import percentile
from engines.adapters import AdapterParams
from engines.adapters.classifier import ClassifierAdapter
from engines.adapters.retinaface import RetinaFaceAdapter, input_size_for_sources
from engines.adapters.yolo import YoloAdapter
from engines.base import EngineOptions, create_engine
from engines.zoo import BUILTINS, materialise
from pipeline.sinks.heatmap import blend

SIZES = ((640, 360), (1280, 720))


def timed(fn, repeats: int, warmup: int, clock=time.thread_time_ns) -> list[float]:
    """Microseconds per call. By default the calling thread's CPU time: the cost on one core, which a busy
    neighbour (a shared 2-core VM) does not inflate the way it inflates wall-clock time."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1e3)
    return out


def read_frames(clip: str, n: int) -> list[np.ndarray]:
    """`n` frames spread over the clip's first 10n."""
    frames, _ = load_frames(clip, n * 10)
    return frames[::max(1, len(frames) // n)][:n]


def outputs_for(adapter, model: Path, frames, engine_cache: dict):
    """[(outputs, fit)] per frame, the model run for real (untimed)."""
    key = (str(model), adapter.input_hw)
    if key not in engine_cache:
        engine = create_engine("onnxruntime", model, EngineOptions(max_batch=1, threads=1, input_hw=adapter.input_hw))
        names = [o.name for o in engine.outputs]
        adapter.check_outputs([o.shape for o in engine.outputs], names)
        engine_cache[key] = (engine, names)
    engine, names = engine_cache[key]
    assert adapter.enable_saliency((), names, str(model)) is None
    out = []
    for frame in frames:
        batch = np.zeros((1, 3, *adapter.input_hw), np.float32)
        fit = adapter.preprocess(frame, batch[0])
        out.append(([o[0] for o in engine.infer(batch)], fit))
    return out


def yolo_outputs(frames):
    adapter = YoloAdapter((640, 640), [str(i) for i in range(80)], AdapterParams())
    adapter.check_outputs([(1, 84, 8400)])
    adapter.enable_saliency((), ["output0"], "")
    rng = np.random.default_rng(0)
    out = []
    for frame in frames:
        fit = adapter.preprocess(frame, np.zeros((3, 640, 640), np.float32))
        pred = rng.random((84, 8400), dtype=np.float32)
        pred[4:] **= 8  # mostly low class scores, as a detector's are
        out.append(([pred], fit))
    return adapter, out


def measure(adapter, cases, frames, repeats: int, warmup: int) -> dict[str, list[float]]:
    per = max(1, repeats // len(cases))
    res = {"map": [], "blend": [], "total": []}
    for (outs, fit), frame in zip(cases, frames):
        res["map"] += timed(lambda: adapter.saliency(outs, fit), per, warmup)
        sal = adapter.saliency(outs, fit)
        image = frame.copy()
        res["blend"] += timed(lambda: blend(image, sal, 0.4), per, warmup)
        res["total"] += timed(lambda: blend(image, adapter.saliency(outs, fit), 0.4), per, warmup)
    return res


def extra_output_cost(model: Path, repeats: int, warmup: int) -> tuple[float, float]:
    """Median ms of mobilenet_v2's engine call fetching (logits, features) vs logits alone, ORT 1 thread."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    both, logits = [], []
    for _ in range(repeats // 10 or 1):  # interleaved, so that a busy neighbour slows both alike
        both += timed(lambda: session.run(["output", "features"], {"input": x}), 10, warmup, time.perf_counter_ns)
        logits += timed(lambda: session.run(["output"], {"input": x}), 10, warmup, time.perf_counter_ns)
        warmup = 1
    return percentile(both, 50) / 1e3, percentile(logits, 50) / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.saliency", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clip", default="sample:bigbuckbunny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per model, size and step")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--cache-dir", type=Path, default=None, help="where the built-in models are (default: a "
                    "temporary directory; mobilenet_v2 is exported there once, about 30 s)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # one core, as the goal is stated
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="perceptd-saliency-"))
    source = read_frames(args.clip, args.frames)
    mobilenet = materialise("mobilenet_v2", cache, "onnxruntime")
    retinaface = materialise("retinaface", cache)
    engines: dict = {}
    print(f"saliency cost on one core, microseconds per frame ({args.frames} frames of {args.clip}, "
          f"{args.repeats} calls per step after {args.warmup} warm-up)")
    print(f"{'size':>9} {'model':<26} {'map p50':>8} {'p99':>7} {'blend p50':>9} {'p99':>7} "
          f"{'total p50':>9} {'p99':>7}")
    for w, h in SIZES:
        frames = [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in source]
        runs = []
        classifier = ClassifierAdapter((224, 224), list(BUILTINS["mobilenet_v2"].labels), AdapterParams(confidence=0))
        runs.append(("mobilenet_v2 (CAM 7x7)", classifier, outputs_for(classifier, mobilenet, frames, engines)))
        face = RetinaFaceAdapter(input_size_for_sources((h, w)), ["face"], AdapterParams())
        runs.append((f"retinaface {face.input_hw[1]}x{face.input_hw[0]}", face, outputs_for(face, retinaface, frames,
                                                                                            engines)))
        yolo, cases = yolo_outputs(frames)
        runs.append(("yolo v8 640x640, 80 cls", yolo, cases))
        for name, adapter, cases in runs:
            r = measure(adapter, cases, frames, args.repeats, args.warmup)
            cells = " ".join(f"{percentile(r[k], 50):>{9 if k != 'map' else 8}.0f} {percentile(r[k], 99):>7.0f}"
                             for k in ("map", "blend", "total"))
            print(f"{w}x{h:<4} {name:<26} {cells}")
    both, logits = extra_output_cost(mobilenet, args.repeats, args.warmup)
    print(f"mobilenet_v2 engine call, saliency off: {both:.2f} ms with the features output fetched, "
          f"{logits:.2f} ms with logits only (ONNX Runtime, 1 thread, wall clock, interleaved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
