"""Quick throughput comparison on one clip, in one run: decode only, a plain serial loop, perceptd.

    python -m benchmarks.quick [--clip sample:carphone] [--frames 600] [--repeats 3] [--input-size H W]

The plain loop is written the way most users write it (read -> preprocess -> run -> postprocess ->
draw -> write) with the same model, adapter, engine and thread settings as the pipeline. Prints the
median and spread of each, and the ratio pipeline / plain loop. The full benchmark suite (latency
under load, many sources, memory) is benchmarks' own issue; this is its first slice.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from engines.adapters import AdapterParams, adapter_class
from engines.adapters.retinaface import input_size_for_sources
from engines.base import EngineOptions, create_engine
from engines.zoo import materialise
from pipeline.settings import default_cache_dir, load_settings
from pipeline.sinks.overlay import draw
from pipeline.sources.file import resolve_sample


def clip_path(clip: str) -> Path:
    return resolve_sample(clip) if clip.startswith("sample:") else Path(clip)


def frames_of(path: Path, n: int):
    """Yields n frames, looping the clip."""
    cap = cv2.VideoCapture(str(path))
    produced = 0
    while produced < n:
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        produced += 1
        yield frame
    cap.release()


def decode_only(path: Path, n: int) -> float:
    t0 = time.perf_counter()
    for _ in frames_of(path, n):
        pass
    return n / (time.perf_counter() - t0)


def plain_loop(path: Path, n: int, input_hw, threads: int, out_dir: Path) -> float:
    engine = create_engine("onnxruntime", materialise("retinaface", default_cache_dir()),
                           EngineOptions(max_batch=1, threads=threads))
    adapter = adapter_class("retinaface")(input_hw, ["face"], AdapterParams(confidence=0.8, iou=0.45))
    settings = load_settings(None).sinks.overlay
    writer = None
    batch = np.zeros((1, 3, *input_hw), np.float32)
    engine.infer(batch)  # warm-up
    t0 = time.perf_counter()
    for frame in frames_of(path, n):
        fit = adapter.preprocess(frame, batch[0])
        dets = adapter.postprocess([o[0] for o in engine.infer(batch)], fit)
        draw(frame, tuple(dets), settings, "plain")
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(out_dir / "plain.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
        writer.write(frame)
    writer.release()
    engine.close()
    return n / (time.perf_counter() - t0)


def pipeline_run(clip: str, n: int, input_size, threads: int, out_dir: Path) -> float:
    from pipeline.runner import Pipeline

    overrides = {"sources": [{"name": "bench", "uri": clip, "loop": True, "max_frames": n}],
                 "sinks.output_dir": str(out_dir), "sinks.progress": "off", "metrics.enabled": False,
                 "engine.threads": threads}
    if input_size:
        overrides["model.input_size"] = list(input_size)
    p = Pipeline(load_settings(None, overrides))
    p.open()
    try:
        p.start()
        p.run()
    finally:
        p.close()
    out = p.outputs[0]
    return (out.processed - 1) / ((out.last_done_ns - out.first_done_ns) / 1e9)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} fps (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default="sample:carphone")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    path = clip_path(args.clip)
    cap = cv2.VideoCapture(str(path))
    hw = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    cap.release()
    input_hw = tuple(args.input_size) if args.input_size else input_size_for_sources(hw)
    print(f"clip {args.clip} {hw[1]}x{hw[0]}, model retinaface input {input_hw[1]}x{input_hw[0]}, "
          f"{args.frames} frames x {args.repeats} repeats")
    results: dict[str, list[float]] = {"decode only": [], "plain loop": [], "perceptd": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            results["decode only"].append(decode_only(path, args.frames))
            results["plain loop"].append(plain_loop(path, args.frames, input_hw, args.threads, Path(tmp)))
            results["perceptd"].append(pipeline_run(args.clip, args.frames, args.input_size, args.threads, Path(tmp)))
    for name, values in results.items():
        print(f"  {name:12s} {spread(values)}")
    ratio = statistics.median(results["perceptd"]) / statistics.median(results["plain loop"])
    print(f"  perceptd / plain loop: {ratio:.2f}x")


if __name__ == "__main__":
    main()
