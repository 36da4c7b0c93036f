"""perceptd against the baselines a user would otherwise pick, side by side in one run.

    python -m benchmarks [--quick] [--model retinaface] [--backend onnxruntime] [--device auto]
        [--clip sample:carphone] [--duration S] [--repeats N] [--sources 1,2,4,8] [--batch N]
        [--soak S] [--input-size H W] [--out DIR]

(also `perceptd bench ...` from a checkout). Measures, on the same clip, model, backend and threads:
decode only, engine only (batch 1 and the max batch), a plain serial loop, the pipeline unpaced, the
pipeline under a live source at 50% and 200% of the engine's capacity, N sources at once, memory
through a long run, and YOLO11n against the bare engine and Ultralytics (benchmarks/yolo.py). Writes results.json, results.md and results.png into --out; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.stats import spread

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("decode", "engine", "plain", "pipeline", "live", "sources", "memory", "yolo")
# --quick: the whole suite in well under a minute on two cores; the numbers are indicative only.
QUICK = {"duration": 1.5, "warmup": 0.5, "repeats": 1, "soak": 10.0}
FULL = {"duration": 20.0, "warmup": 3.0, "repeats": 3, "soak": 600.0}


def build_parser(prog: str = "python -m benchmarks") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs, one repeat, 10 s soak (for tests)")
    ap.add_argument("--model", default="retinaface", help="built-in model name or model file")
    ap.add_argument("--backend", default="onnxruntime", help="engine.backend (onnxruntime, torch, tensorrt, auto)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="engine.device (auto: the GPU when the backend can use one)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    ap.add_argument("--clip", default="sample:carphone", help="video file or sample:NAME")
    ap.add_argument("--duration", type=float, help=f"timed seconds per run (default {FULL['duration']:g}, "
                    f"quick {QUICK['duration']:g})")
    ap.add_argument("--warmup", type=float, help=f"untimed seconds before each run (default {FULL['warmup']:g})")
    ap.add_argument("--repeats", type=int, help=f"runs per measurement (default {FULL['repeats']}, quick 1)")
    ap.add_argument("--sources", default="1,2,4,8", help="source counts for the many-sources runs")
    ap.add_argument("--batch", type=int, default=4, help="engine.max_batch")
    ap.add_argument("--threads", type=int, default=0, help="engine.threads (0: every usable core)")
    ap.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="default: the model's for the clip")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other setting for every run, dotted as in the config (pipeline.queue_size=2); repeatable")
    ap.add_argument("--soak", type=float,
                    help=f"memory run seconds (default {FULL['soak']:g}, quick {QUICK['soak']:g})")
    ap.add_argument("--yolo-clip", default="sample:bigbuckbunny", help="the YOLO section's clip (benchmarks/yolo.py)")
    ap.add_argument("--yolo-size", default="768x576", help="WxH the YOLO clip is written at (vtest.avi's), or 'source'")
    ap.add_argument("--yolo-sources", default="", metavar="N,N",
                    help="camera counts for YOLO's many-sources runs, e.g. 1,4,8 (default: none; a few minutes each)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, help="output directory (default benchmarks/results/<date>-<backend>)")
    return ap


def parse_sets(items: list[str]) -> tuple[tuple[str, object], ...]:
    """--set KEY=VALUE, the value read as YAML (2 -> int, true -> bool, [1, 2] -> list)."""
    import yaml

    from pipeline.errors import UserError

    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: give KEY=VALUE, e.g. pipeline.queue_size=2 (got {item!r})")
        out.append((key.strip(), yaml.safe_load(value)))
    return tuple(out)


def config_from(args: argparse.Namespace, scratch: Path):
    from benchmarks.config import BenchConfig, Clip

    d = QUICK if args.quick else FULL
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else d[name]  # noqa: E731
    return BenchConfig(Clip.probe(args.clip), args.model, args.backend, args.device, args.precision, args.batch,
                       args.threads, tuple(args.input_size) if args.input_size else None, pick("duration"),
                       pick("warmup"), pick("repeats"), scratch, parse_sets(args.set))


def combine(runs: list[dict]) -> dict:
    """Repeats of one measurement -> median/min/max of every number, recursively; the rest from the first."""
    out = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(first, dict):
            out[key] = combine([v for v in values if isinstance(v, dict)])
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = spread(values)
        else:
            out[key] = first
    return out


def repeated(name: str, n: int, fn) -> dict:
    runs = []
    for i in range(n):
        t0 = time.monotonic()
        runs.append(fn(i))
        fps = runs[-1].get("fps")
        log(f"{name} [{i + 1}/{n}] {fps:.1f} fps ({time.monotonic() - t0:.1f} s)" if fps else f"{name} done")
    out = combine(runs)
    if "series" in runs[0]:  # the latency-over-time of the repeat whose p99 is the median
        by_p99 = sorted(runs, key=lambda r: r["latency_ms"]["total"].get("p99", math.inf))
        out["series"] = by_p99[len(by_p99) // 2]["series"]
    return out


_T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _T0:6.1f} s] {message}", file=sys.stderr, flush=True)


def measure(cfg, sections: set[str], source_counts: list[int], soak_s: float, yolo_args=None) -> dict:
    from benchmarks import measure as m
    from benchmarks import memory
    from benchmarks import pipeline_runs as pr

    res: dict = {}
    r = cfg.repeats
    if "decode" in sections:
        res["decode_only"] = repeated("decode only", r, lambda i: m.decode_only(cfg))
    if sections & {"engine", "plain", "live"}:
        runner = m.load_runner(cfg)  # loaded (and warmed up) once: loading is not what is measured
        try:
            res["engine"] = m.describe_engine(runner)
            batches = sorted({1, runner.max_batch})
            res["engine_only"] = {f"batch_{b}": repeated(f"engine only, batch {b}", r,
                                                         lambda i, b=b: m.engine_only(runner, cfg, b)) for b in batches}
        finally:
            runner.engine.close()
        if "plain" in sections:
            # Its own engine: ONNX Runtime as a hand-written loop gets it, threads spin-waiting between
            # operators (they own the machine there); the worker turns that off (engines.base.EngineOptions).
            plain_runner = m.load_runner(cfg, spin_wait=True)
            try:
                res["plain_engine"] = m.describe_engine(plain_runner)
                res["plain_loop"] = repeated("plain loop", r, lambda i: m.plain_loop(
                    plain_runner, cfg, cfg.scratch / f"plain{i}.mp4"))
            finally:
                plain_runner.engine.close()
    if "pipeline" in sections:
        res["pipeline"] = repeated("pipeline unpaced", r, lambda i: pr.unpaced(cfg, 1, f"pipeline{i}"))
    if "live" in sections:
        # The engine's capacity from its median call time: a stall on a shared machine moves the mean
        # (fps) a lot and the median little, and the offered loads should not follow the stalls.
        capacity = 1000 / res["engine_only"]["batch_1"]["latency_ms"]["p50"]["median"]
        res["capacity_fps"] = capacity
        for load in (50, 200):
            target = capacity * load / 100
            res[f"live_{load}"] = repeated(f"live {load}% ({target:.0f} fps offered)", r,
                                           lambda i, t=target, ld=load: pr.paced(cfg, 1, t, f"live{ld}-{i}"))
    if "sources" in sections:
        res["sources"] = {}
        for n in source_counts:
            paced = repeated(f"{n} source(s) at {cfg.clip.fps:.2f} fps each", r,
                             lambda i, n=n: pr.paced(cfg, n, cfg.clip.fps, f"paced{n}-{i}"))
            # One source unpaced is the pipeline measurement above: not run twice.
            unpaced = res["pipeline"] if n == 1 and "pipeline" in res else repeated(
                f"{n} source(s) unpaced", r, lambda i, n=n: pr.unpaced(cfg, n, f"unpaced{n}-{i}"))
            res["sources"][str(n)] = {"paced": paced, "unpaced": unpaced}
    if "yolo" in sections:
        from benchmarks import yolo

        res["yolo"] = yolo.run(cfg, *yolo_args)
    if "memory" in sections:
        log(f"memory soak: {soak_s:.0f} s unpaced")
        on_gpu = res.get("engine", {}).get("device", cfg.device) != "cpu"
        res["memory"] = memory.soak(cfg, soak_s, interval_s=min(1.0, soak_s / 20), gpu=on_gpu)
    return res


def _median(res: dict, *path):
    node = res
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node["median"] if isinstance(node, dict) else node


def ratios(res: dict) -> dict:
    pipe, plain = _median(res, "pipeline", "fps"), _median(res, "plain_loop", "fps")
    eng = res.get("engine_only", {})
    top = max(eng, key=lambda k: int(k.split("_")[1])) if eng else None
    e1, en = _median(eng, "batch_1", "fps"), _median(eng, top, "fps") if top else None
    div = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    return {"pipeline/plain_loop": div(pipe, plain), "pipeline/engine_only": div(pipe, en),
            "pipeline/engine_only_batch_1": div(pipe, e1), "plain_loop/engine_only_batch_1": div(plain, e1)}


def targets(res: dict, rat: dict) -> dict:
    """The issue's targets, measured. Each: target, measured, met, and the margin (positive = met by)."""
    out = {}

    def add(name, what, target, measured, higher_is_better):
        if measured is None or target is None:
            return
        met = measured >= target if higher_is_better else measured <= target
        out[name] = {"what": what, "target": target, "measured": measured, "met": bool(met),
                     "margin": (measured - target) if higher_is_better else (target - measured)}

    add("pipeline_vs_plain_loop", "pipeline fps / plain-loop fps >=", 1.3, rat["pipeline/plain_loop"], True)
    if res.get("engine", {}).get("device", "cpu") != "cpu":
        add("pipeline_vs_engine_only", "pipeline fps / engine-only fps (GPU) >=", 0.9, rat["pipeline/engine_only"],
            True)
    e99 = _median(res, "engine_only", "batch_1", "latency_ms", "p99")
    if e99 is not None:
        add("live_50_p99", "p99 end-to-end ms at 50% load <= engine p99 + 10 ms", e99 + 10,
            _median(res, "live_50", "latency_ms", "total", "p99"), False)
        add("live_200_p99", "p99 end-to-end ms at 200% load <= 3 x engine p99", 3 * e99,
            _median(res, "live_200", "latency_ms", "total", "p99"), False)
    live = res.get("live_200")
    if live:
        # "Does not grow": the p99's rise over the run, by its slope, stays within 10% of the p99.
        growth = _median(live, "p99_slope_ms_per_min") * _median(live, "duration_s") / 60
        add("live_200_no_drift", "p99 rise over the run (slope x length), ms <= 10% of p99",
            0.1 * _median(live, "latency_ms", "total", "p99"), growth, False)
        add("live_200_drops_counted", "frames neither processed nor counted as dropped ==", 0,
            _median(live, "unaccounted"), False)
    yolo = res.get("yolo", {}).get("compare", {}).get("ratios", {})
    add("yolo_vs_engine", "YOLO: perceptd fps / ONNX Runtime alone (default session options) >=", 0.95,
        yolo.get("perceptd/engine_only"), True)
    add("yolo_vs_ultralytics", "YOLO: perceptd fps / Ultralytics predict(stream=True) >=", 1.0,
        yolo.get("perceptd/ultralytics"), True)
    mem = res.get("memory")
    if mem:
        add("rss_growth", "RSS growth (daemon + worker) per 10 min, MB <", 5.0, mem["rss_mb_per_10min"], False)
    return out


def main(argv: list[str] | None = None, prog: str = "python -m benchmarks", shown: list[str] | None = None) -> int:
    """`shown`: the arguments to record as the command, when a wrapper (benchmarks.yolo) translated them."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # `perceptd bench` arrives with the daemon's info level
    from engines.base import EngineError
    from pipeline.errors import UserError

    sections = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        print(f"{prog}: error: --only: unknown {', '.join(sorted(unknown))}; pick from {','.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    if "live" in sections:
        sections.add("engine")  # the live loads are fractions of the engine's measured capacity
    try:
        counts = [int(n) for n in args.sources.split(",") if n.strip()]
        yolo_counts = [int(n) for n in args.yolo_sources.split(",") if n.strip()]
    except ValueError:
        print(f"{prog}: error: --sources, --yolo-sources: give counts like 1,2,4,8 (got {args.sources!r}, "
              f"{args.yolo_sources!r})", file=sys.stderr)
        return 2
    try:
        yolo_size = None if args.yolo_size == "source" else tuple(int(v) for v in args.yolo_size.split("x"))
        assert yolo_size is None or (len(yolo_size) == 2 and min(yolo_size) >= 16)
    except (ValueError, AssertionError):
        print(f"{prog}: error: --yolo-size: give WxH like 768x576, or source (got {args.yolo_size!r})",
              file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    out = args.out or REPO / "benchmarks" / "results" / (
        f"{started:%Y%m%d-%H%M}-{'yolo' if sections == {'yolo'} else args.backend}"
        f"{'-' + args.device if args.device != 'auto' else ''}"
        f"{'-quick' if args.quick else ''}")
    from benchmarks import machine, report

    try:
        with tempfile.TemporaryDirectory(prefix="perceptd-bench-") as scratch:
            cfg = config_from(args, Path(scratch))
            log(f"clip {cfg.clip.uri} {cfg.clip.width}x{cfg.clip.height} @ {cfg.clip.fps:.2f} fps; model {cfg.model} "
                f"on {cfg.backend}/{cfg.device}; {cfg.repeats} x {cfg.duration_s:g} s runs")
            soak_s = args.soak if args.soak is not None else (QUICK if args.quick else FULL)["soak"]
            res = measure(cfg, sections, counts, soak_s, (yolo_counts, args.yolo_clip, yolo_size))
    except (UserError, EngineError) as exc:  # a bad clip or model, a backend this machine cannot run
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    rat = ratios(res)
    doc = {"command": " ".join([prog, *map(shlex.quote, argv if shown is None else shown)]), "started": started.isoformat(timespec="seconds"),
           "elapsed_s": round(time.monotonic() - _T0, 1), "machine": machine.describe(),
           "settings": {"clip": {"uri": cfg.clip.uri, "width": cfg.clip.width, "height": cfg.clip.height,
                                 "fps": cfg.clip.fps, "frames": cfg.clip.frames},
                        "model": cfg.model, "backend": cfg.backend, "device": cfg.device, "precision": cfg.precision,
                        "batch": cfg.batch, "threads": cfg.threads,
                        "input_size": res.get("engine", {}).get("input_size"),
                        "duration_s": cfg.duration_s, "warmup_s": cfg.warmup_s, "repeats": cfg.repeats,
                        "sources": counts, "yolo_sources": yolo_counts, "soak_s": soak_s, "quick": args.quick,
                        "sections": sorted(sections),
                        "set": dict(cfg.extra)},
           "results": res, "ratios": rat, "targets": targets(res, rat)}
    paths = report.write(doc, out)
    print(paths["markdown"].read_text())
    log("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
