"""A run's results as files: results.json (everything), results.md (the tables), results.png (latency
over time under live load, fps per configuration). The markdown and the plot are made from the JSON
alone, so they can be made again from a results file:

    python -m benchmarks.report benchmarks/results/<run>/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("capture", "queue", "preprocess", "inference", "postprocess", "sink", "other", "total")


def write(doc: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "results.png"}
    paths["json"].write_text(json.dumps(doc, indent=1, default=str) + "\n")
    paths["markdown"].write_text(markdown(doc))
    try:
        plot(doc, paths["plot"])
    except ImportError:
        print("benchmarks: matplotlib is not installed, so no results.png; pip install 'perceptd[bench]' and run "
              f"python -m benchmarks.report {paths['json']}", file=sys.stderr)
        del paths["plot"]
    return paths


# markdown -------------------------------------------------------------------------------------------------

def _m(node, *path):
    """The median at `path` (a spread dict's), or None."""
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node.get("median") if isinstance(node, dict) else node


def _f(v, digits=1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _range(node) -> str:
    if not isinstance(node, dict) or node.get("min") is None or node.get("n", 0) < 2:
        return "–"
    return f"{node['min']:.1f}–{node['max']:.1f}"


def throughput_rows(res: dict) -> list[tuple[str, dict, str]]:
    """(configuration, fps spread, latency note) in the order the README explains them."""
    rows = []
    if "decode_only" in res:
        rows.append(("decode only (OpenCV read loop)", res["decode_only"]["fps"], ""))
    for key, e in res.get("engine_only", {}).items():
        lat = e["latency_ms"]
        rows.append((f"engine only, {key.replace('_', ' ')}", e["fps"],
                     f"per call p50 {_f(_m(lat, 'p50'), 2)} / p99 {_f(_m(lat, 'p99'), 2)} ms"))
    if "plain_loop" in res:
        rows.append(("plain serial loop", res["plain_loop"]["fps"], ""))
    if "pipeline" in res:
        p = res["pipeline"]
        rows.append(("perceptd pipeline, unpaced", p["fps"],
                     f"e2e p50 {_f(_m(p, 'latency_ms', 'total', 'p50'))} / "
                     f"p99 {_f(_m(p, 'latency_ms', 'total', 'p99'))} ms, "
                     f"batch {_f(_m(p, 'mean_batch'), 2)}, CPU cores daemon {_f(_m(p, 'cpu_cores_main'), 2)} / "
                     f"worker {_f(_m(p, 'cpu_cores_worker'), 2)}"))
    for n, s in res.get("sources", {}).items():
        u = s["unpaced"]
        if u is res.get("pipeline") or (n == "1" and "pipeline" in res):
            continue  # the same run as the row above
        rows.append((f"perceptd, {n} source(s) unpaced (aggregate)", u["fps"], f"batch {_f(_m(u, 'mean_batch'), 2)}"))
    return rows


def live_rows(res: dict) -> list[tuple[str, dict]]:
    rows = [(f"live {load}% of engine capacity", res[f"live_{load}"]) for load in (50, 200) if f"live_{load}" in res]
    rows += [(f"{n} source(s) at native fps", s["paced"]) for n, s in res.get("sources", {}).items()]
    return rows


def markdown(doc: dict) -> str:
    res, s, mach = doc["results"], doc["settings"], doc["machine"]
    cpu, v = mach["cpu"], mach["versions"]
    gpus = ", ".join(g.get("name", "?") for g in mach.get("gpu", [])) or "none"
    eng = res.get("engine") or res.get("pipeline", {}).get("worker", {})  # what ran, as the worker says
    size = eng.get("input_size") or s.get("input_size")
    yolo_only = s.get("sections") == ["yolo"]
    lines = [
        f"# perceptd benchmark, {doc['started']}", "",
        f"Command: `{doc['command']}` ({doc.get('elapsed_s', 0):.0f} s)", "",
        f"- Machine: {cpu['model']}, {cpu['logical_cores']} logical cores ({cpu['usable_cores']} usable), "
        f"{cpu['memory_gb']} GB; GPU: {gpus}; load average at start {cpu['load_average']}",
        f"- Versions: Python {v.get('python')}, numpy {v.get('numpy')}, OpenCV "
        f"{v.get('opencv-python') or v.get('opencv-python-headless')}, onnxruntime "
        f"{v.get('onnxruntime') or v.get('onnxruntime-gpu')}, torch {v.get('torch', '–')}, "
        f"TensorRT {v.get('tensorrt', '–')}, perceptd {v.get('perceptd')} ({v.get('git')})",
        "- The YOLO section only: its model and clip are described there" if yolo_only else
        f"- Clip {s['clip']['uri']} {s['clip']['width']}x{s['clip']['height']} @ {s['clip']['fps']:.2f} fps; "
        f"model {s['model']}" + (f" input {size[0]}x{size[1]} (HxW)" if size else "") + "; "
        f"engine {eng.get('backend', s['backend'])} on {eng.get('device', s['device'])} "
        f"{eng.get('precision', s['precision'])}, max batch {eng.get('max_batch', s['batch'])}, "
        f"threads {eng.get('threads') or s['threads'] or 'all'}"
        + (" (the worker as engine.instances and engine.spin_wait say, the plain loop with ONNX Runtime's default)"
           if eng.get("backend", s["backend"]) == "onnxruntime" else "")
        + (f"; settings {s['set']}" if s.get("set") else ""),
        f"- Each measurement: {s['warmup_s']:g} s warm-up, {s['duration_s']:g} s timed, {s['repeats']} repeat(s); "
        f"median (min–max over repeats){'; QUICK MODE: indicative only' if s.get('quick') else ''}", "",
        "## Throughput", "", "| configuration | fps (median) | min–max | notes |", "|---|---:|---:|---|",
    ]
    for name, fps, note in throughput_rows(res):
        lines.append(f"| {name} | {_f(fps['median'])} | {_range(fps)} | {note} |")
    rat = {k: v for k, v in doc.get("ratios", {}).items() if v is not None}
    if rat:
        lines += ["", "Ratios: " + "; ".join(f"{k} **{v:.2f}x**" for k, v in rat.items())]
    rows = live_rows(res)
    if rows:
        lines += ["", "## Latency under live load (end-to-end and per stage, ms: p50 / p99)", "",
                  "| configuration | offered fps (target) | processed fps | dropped | " + " | ".join(STAGES[:-1])
                  + " | total p50 / p95 / p99 | p99 drift ms/min | batch | CPU cores daemon / worker |",
                  "|---|---:|---:|---:|" + "---:|" * (len(STAGES) - 1) + "---:|---:|---:|---:|"]
        for name, r in rows:
            lat = r["latency_ms"]
            stages = " | ".join(f"{_f(_m(lat, st, 'p50'))} / {_f(_m(lat, st, 'p99'))}" for st in STAGES[:-1])
            limited = " (source-limited)" if r.get("source_limited") else ""
            lines.append(
                f"| {name} | {_f(_m(r, 'offered_fps'))} ({_f(_m(r, 'target_fps'))}){limited} | {_f(_m(r, 'fps'))} | "
                f"{_f(100 * (_m(r, 'drop_fraction') or 0))}% | {stages} | "
                f"{_f(_m(lat, 'total', 'p50'))} / {_f(_m(lat, 'total', 'p95'))} / {_f(_m(lat, 'total', 'p99'))} | "
                f"{_f(_m(r, 'p99_slope_ms_per_min'), 2)} | {_f(_m(r, 'mean_batch'), 2)} | "
                f"{_f(_m(r, 'cpu_cores_main'), 2)} / {_f(_m(r, 'cpu_cores_worker'), 2)} |")
        if res.get("capacity_fps"):
            lines += ["", f"Engine capacity for the loads: {res['capacity_fps']:.0f} fps "
                      "(1 / median batch-1 call time)."]
        lines += ["", "`other`: the part of the total no stage names: the worker waiting for a batch to fill "
                  "(pipeline.batch_timeout_ms), batch-mates' pre/postprocessing, the result's trip back, the sink's "
                  "queue."]
    lines += yolo_lines(res.get("yolo"))
    mem = res.get("memory")
    if mem:
        end = mem.get("rss_mb_end", {})
        dev = mem.get("device_mb_per_hour")
        lines += ["", "## Memory", "",
                  f"{mem['seconds']:.0f} s unpaced, sampled every {mem['interval_s']:g} s, "
                  f"slope after {mem['settle_s']:.0f} s: "
                  f"daemon {_f(mem['main_rss_mb_per_hour'])} MB/h, worker {_f(mem['worker_rss_mb_per_hour'])} MB/h, "
                  f"together **{_f(mem['rss_mb_per_10min'], 2)} MB per 10 min**; RSS at the end: daemon "
                  f"{_f(end.get('main'))} MB, worker {_f(end.get('worker'))} MB"
                  + (f"; device memory {_f(dev)} MB/h ({mem['gpu_source']})" if dev is not None else "") + "."]
    tg = doc.get("targets", {})
    if tg:
        lines += ["", "## Targets", "", "| target | wanted | measured | met | by |", "|---|---:|---:|---|---:|"]
        for t in tg.values():
            lines.append(f"| {t['what']} | {_f(t['target'], 2)} | {_f(t['measured'], 2)} | "
                         f"{'met' if t['met'] else '**missed**'} | {t['margin']:+.2f} |")
    return "\n".join(lines) + "\n"


YOLO_ROWS = (("engine_default", "ONNX Runtime alone, default session options, one preprocessed frame"),
             ("engine_worker", "ONNX Runtime alone, as the worker runs it under load (engine.instances: every "
              "lane at once)"),
             ("plain_loop", "plain serial loop: read, preprocess, run, postprocess"),
             ("ultralytics", "Ultralytics predict(stream=True), same ONNX"),
             ("perceptd", "perceptd pipeline (defaults)"),
             ("perceptd_instances_1", "perceptd pipeline, engine.instances: 1 (the old default: one call at a "
              "time on every thread)"),
             ("perceptd_spin_off", "perceptd pipeline, engine.spin_wait: false (an older default)"))


def yolo_lines(y: dict | None) -> list[str]:
    if not y:
        return []
    if "skipped" in y:
        return ["", "## YOLO", "", f"Skipped: {y['skipped']}."]
    c, clip = y["compare"], y["clip"]
    eng = c.get("engine", {})
    lines = ["", "## YOLO", "",
             f"{y['model']} ({eng.get('family', 'yolo')}, input {'x'.join(map(str, eng.get('input_size', [])))}, "
             f"threads {eng.get('threads', '?')}, spin_wait {eng.get('spin_wait', '–')}, instances "
             f"{eng.get('instances', 1)}) on {clip['source']} "
             f"written at {clip['width']}x{clip['height']} (MPEG-4), video off; every configuration once per round, "
             "rounds repeated; median (min–max), load average (1 min) at the end of each run.", "",
             "| configuration | fps (median) | min–max | vs the bare engine | CPU cores daemon / worker | load |",
             "|---|---:|---:|---:|---:|---|"]
    base = _m(c.get("engine_default", {}), "fps")
    for key, name in YOLO_ROWS:
        r = c.get(key)
        if not r:
            continue
        fps = _m(r, "fps")
        cores = (f"{_f(_m(r, 'cpu_cores_main'), 2)} / {_f(_m(r, 'cpu_cores_worker'), 2)}"
                 if "cpu_cores_main" in r else "–")
        loads = ", ".join(f"{v:.1f}" for v in (r.get("load_1min", {}).get("values") or []))
        lines.append(f"| {name} | {_f(fps)} | {_range(r['fps'])} | {_f(fps / base if fps and base else None, 2)} | "
                     f"{cores} | {loads} |")
    rat = {k: v for k, v in c.get("ratios", {}).items() if v is not None}
    if rat:
        lines += ["", "Ratios: " + "; ".join(f"{k} **{v:.2f}x**" for k, v in rat.items())]
    ms = y.get("many_sources")
    if ms:
        def what(key: str) -> str:  # batch_4: one call of 4 frames; instances_2: 2 one-frame calls at once
            kind, n = key.split("_")
            return f"batch {n}, one call at a time" if kind == "batch" else f"{n} one-frame calls at once (lanes)"

        eb = "; ".join(f"{what(k)} {_f(v['fps'])} fps (p50 {_f(v['latency_ms'].get('p50'))} ms per call)"
                       for k, v in ms["engine_batched"].items())
        lines += ["", "### YOLO, many cameras", "",
                  "Each camera: the clip served over HTTP as MJPEG at its frame rate (benchmarks/mjpeg_server.py); "
                  "dynamic-shape export, input "
                  + ("x".join(map(str, ms["input_size"])) + " (HxW: the rectangular input Ultralytics' predictor "
                     "gives such a model, perceptd given the same model.input_size)" if ms.get("input_size") else
                     "640x640") + f". Engine alone: {eb}.", "",
                  "| cameras | offered fps | perceptd processed fps | dropped | batch | p50 / p99 ms | "
                  "CPU cores daemon / worker | Ultralytics streams fps |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, row in ms["sources"].items():
            p, u = row.get("perceptd", {}), row.get("ultralytics", {})
            lat = p.get("latency_ms", {}).get("total", {})
            lines.append(f"| {n} | {_f(row.get('offered_fps'))} | {_f(_m(p, 'fps'))} | "
                         f"{_f(100 * (_m(p, 'drop_fraction') or 0))}% | {_f(_m(p, 'mean_batch'), 2)} | "
                         f"{_f(_m(lat, 'p50'))} / {_f(_m(lat, 'p99'))} | "
                         f"{_f(_m(p, 'cpu_cores_main'), 2)} / {_f(_m(p, 'cpu_cores_worker'), 2)} | {_f(_m(u, 'fps'))} |")
    return lines


# plot -----------------------------------------------------------------------------------------------------

def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    res = doc["results"]
    fig, (lat_ax, fps_ax) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.2]})
    for (load, colour) in ((50, "tab:blue"), (200, "tab:red")):
        series = res.get(f"live_{load}", {}).get("series") or []
        if series:
            t = [x[0] for x in series]
            lat_ax.plot(t, [x[1] for x in series], color=colour, label=f"{load}% load p99")
            lat_ax.plot(t, [x[2] for x in series], color=colour, linestyle="--", label=f"{load}% load p50")
    e99 = _m(res, "engine_only", "batch_1", "latency_ms", "p99")
    if e99:
        lat_ax.axhline(e99, color="grey", linewidth=0.8, label="engine only p99")
    lat_ax.set(title="End-to-end latency under live load", xlabel="time in the timed run (s)", ylabel="ms")
    lat_ax.set_ylim(bottom=0)
    lat_ax.grid(alpha=0.3)
    if lat_ax.lines:
        lat_ax.legend(fontsize=8)
    rows = throughput_rows(res) + [(name, r["fps"], "") for name, r in live_rows(res)]
    names = [r[0] for r in rows]
    med = [r[1]["median"] or 0 for r in rows]
    err = [[m - (r[1]["min"] or m) for m, r in zip(med, rows)], [(r[1]["max"] or m) - m for m, r in zip(med, rows)]]
    # Grey: the baselines; green: perceptd as fast as it goes; orange: perceptd paced by live sources.
    colours = ["tab:gray" if n.startswith(("decode", "engine", "plain")) else "tab:green" if "perceptd" in n
               else "tab:orange" for n in names]
    fps_ax.barh(range(len(rows)), med, xerr=err, color=colours, alpha=0.85)
    fps_ax.set_yticks(range(len(rows)), names, fontsize=8)
    fps_ax.invert_yaxis()
    fps_ax.set(title="Frames per second (median, min-max)", xlabel="fps")
    fps_ax.grid(axis="x", alpha=0.3)
    for i, m in enumerate(med):
        fps_ax.text(m, i, f" {m:.0f}", va="center", fontsize=7)
    s = doc["settings"]
    eng = res.get("engine") or res.get("pipeline", {}).get("worker", {})
    fig.suptitle(f"perceptd {s['model']} on {eng.get('backend', s['backend'])}/{eng.get('device', s['device'])}, "
                 f"{s['clip']['uri']}: {doc['started']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.report RESULTS.json", file=sys.stderr)
        return 2
    src = Path(argv[0])
    doc = json.loads(src.read_text())
    (src.parent / "results.md").write_text(markdown(doc))
    plot(doc, src.parent / "results.png")
    print(f"wrote {src.parent / 'results.md'} and {src.parent / 'results.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
