"""On a CUDA machine, in one go: the benchmark suite for each GPU backend, within a time budget.

    python -m benchmarks.gpu [--budget 450] [--clip sample:carphone] [--out DIR]

Needs nothing beyond perceptd, torch and onnxruntime (onnxruntime-gpu for ONNX Runtime on the GPU;
TensorRT and pycuda are used when importable). Runs, each as its own `python -m benchmarks` process (a
fresh CUDA context each, and one failing backend does not stop the others):

  torch-cuda-fp16        MobileNetV2 through the torch backend on CUDA in fp16
  onnxruntime-mobilenet  the same model through ONNX Runtime (CUDA provider when onnxruntime-gpu has one)
  onnxruntime-retinaface the built-in face model through ONNX Runtime
  tensorrt-retinaface    the built-in face model through TensorRT fp16 (when TensorRT is importable)

RetinaFace ships as ONNX only, so the torch backend runs MobileNetV2: the built-in one when its weights
package is installed, else the same network with random weights (speed does not depend on the weights).
Writes <out>/<config>/results.{json,md,png}, and summary.md / summary.json over all of them; a config
the budget cannot fit any more is skipped and says so. Default out: benchmarks/results/gpu-<date>/.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Short runs: the GPU is fast and eight minutes must hold every backend.
RUN_ARGS = ["--duration", "2.5", "--warmup", "1", "--repeats", "1", "--soak", "15"]
MIN_SECONDS = 75  # a config given less than this would be cut off mid-run: it is skipped instead


def mobilenet_models(work: Path) -> tuple[str, str, str]:
    """(torch model, ONNX model, note): the built-in MobileNetV2, or the same network with random weights."""
    from engines.zoo import materialise
    from pipeline.errors import UserError
    from engines.cache import default_cache_dir

    try:
        materialise("mobilenet_v2", default_cache_dir(), "torch")
        materialise("mobilenet_v2", default_cache_dir(), "onnxruntime")
        return "mobilenet_v2", "mobilenet_v2", "built-in mobilenet_v2"
    except (UserError, ImportError) as exc:
        why = str(exc)
    import torch

    from engines.export import export_model
    from engines.models.mobilenet_v2 import MobileNetV2

    torch.manual_seed(0)
    onnx_path, ts_path = work / "mobilenet_v2_random.onnx", work / "mobilenet_v2_random.pt"
    report = export_model(MobileNetV2().eval(), (1, 3, 224, 224), onnx_path, torchscript=ts_path,
                          labels=[f"class{i}" for i in range(1000)], source="benchmarks.gpu (random weights)")
    if not report.ok:
        raise RuntimeError(f"exporting the random-weight MobileNetV2 failed: {report.diffs}")
    return str(ts_path), str(onnx_path), f"MobileNetV2 with random weights ({why})"


def plan(work: Path) -> list[tuple[str, list[str], str]]:
    """(name, benchmark arguments, note) for each config this machine can run, in priority order."""
    from engines.select import probe_tensorrt

    out = []
    try:
        ts, onnx, note = mobilenet_models(work)
        out.append(("torch-cuda-fp16", ["--model", ts, "--backend", "torch", "--device", "cuda",
                                        "--precision", "fp16"], note))
    except Exception as exc:  # no torch at all, or its export failed: the others still run
        onnx, note = None, f"skipped: no torch model ({exc})"
        out.append(("torch-cuda-fp16", [], note))
    out.append(("onnxruntime-retinaface", ["--model", "retinaface", "--backend", "onnxruntime", "--device", "auto"],
                "built-in retinaface; CUDA provider when onnxruntime-gpu has one, else CPU"))
    trt, why = probe_tensorrt()
    out.append(("tensorrt-retinaface", ["--model", "retinaface", "--backend", "tensorrt", "--precision", "fp16"]
                if trt else [], why if trt else f"skipped: {why}"))
    if onnx:
        out.append(("onnxruntime-mobilenet", ["--model", onnx, "--backend", "onnxruntime", "--device", "auto"], note))
    return out


def run_config(name: str, args: list[str], out: Path, seconds: float, only: str | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "benchmarks", *args, *RUN_ARGS, *(["--only", only] if only else []), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"== {name}: {shlex.join(cmd[1:])} (at most {seconds:.0f} s)", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with open(out / "stdout.md", "w") as stdout:
        try:
            # stderr passes through: the suite's progress lines show as it runs.
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=stdout, timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    status = {"command": shlex.join(["python", *cmd[1:]]), "elapsed_s": round(time.monotonic() - t0, 1),
              "status": "ok" if rc == 0 and (out / "results.json").is_file() else f"failed ({rc})"}
    return status


def summary_row(name: str, doc: dict) -> str:
    from benchmarks.report import _f, _m

    r, rat = doc["results"], doc["ratios"]
    eng = r.get("engine", {})
    e1, en = r.get("engine_only", {}).get("batch_1", {}), r.get("engine_only", {})
    top = en[max(en, key=lambda k: int(k.split("_")[1]))] if en else {}
    met = [t["met"] for t in doc["targets"].values()]
    div = lambda v: _f(v, 2) if v is not None else "–"  # noqa: E731
    return (f"| {name} | {eng.get('backend')} {eng.get('device')} {eng.get('precision')} | "
            f"{_f(_m(e1, 'fps'))} ({_f(_m(e1, 'latency_ms', 'p99'), 2)} ms p99) | {_f(_m(top, 'fps'))} | "
            f"{_f(_m(r, 'plain_loop', 'fps'))} | {_f(_m(r, 'pipeline', 'fps'))} | "
            f"{div(rat.get('pipeline/engine_only'))} | "
            f"{div(rat.get('pipeline/plain_loop'))} | {_f(_m(r, 'live_50', 'latency_ms', 'total', 'p99'))} | "
            f"{_f(_m(r, 'live_200', 'latency_ms', 'total', 'p99'))} | "
            f"{_f(100 * (_m(r, 'live_200', 'drop_fraction') or 0))}% | {sum(met)}/{len(met)} |")


def write_summary(out: Path, command: str, started: str, statuses: dict) -> Path:
    lines = [f"# perceptd GPU benchmark, {started}", "", f"Command: `{command}`", "",
             "| config | engine | engine only b1 fps | engine only max-batch fps | plain loop fps | pipeline fps | "
             "pipeline/engine | pipeline/plain | live 50% p99 ms | live 200% p99 ms | dropped at 200% | targets met |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for name, st in statuses.items():
        result = out / name / "results.json"
        if st.get("status") == "ok":
            lines.append(summary_row(name, json.loads(result.read_text())))
        notes.append(f"- {name}: {st.get('status')}; {st.get('note', '')}"
                     + (f"; `{st['command']}` ({st['elapsed_s']:.0f} s)" if "command" in st else ""))
    lines += ["", "Each config's full tables, targets and plot: `<config>/results.md`, `results.png`.", "", *notes]
    (out / "summary.json").write_text(json.dumps({"command": command, "started": started, "configs": statuses},
                                                 indent=1) + "\n")
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", type=float, default=450, help="seconds for everything (default 450: 7.5 min)")
    ap.add_argument("--clip", default="sample:carphone", help="video file or sample:NAME (sample:bikes is larger)")
    ap.add_argument("--configs", help="comma-separated subset of the configs, by name")
    ap.add_argument("--out", type=Path, help="default benchmarks/results/gpu-<date>")
    ap.add_argument("--no-gpu-check", action="store_true", help=argparse.SUPPRESS)  # tests of this script on CPUs
    ap.add_argument("--only", help=argparse.SUPPRESS)  # tests: fewer sections per config (benchmarks --only)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    from engines.select import probe_gpu

    gpu, why = probe_gpu()
    if not gpu and not args.no_gpu_check:
        print(f"python -m benchmarks.gpu: error: no CUDA GPU here ({why}); run python -m benchmarks instead",
              file=sys.stderr)
        return 2
    started = datetime.now(timezone.utc)
    out = args.out or REPO / "benchmarks" / "results" / f"gpu-{started:%Y%m%d-%H%M}"
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.configs.split(",")) if args.configs else None
    statuses: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="perceptd-gpu-") as work:  # a random-weight model, if made
        for name, bench_args, note in plan(Path(work)):
            if wanted is not None and name not in wanted:
                continue
            left = args.budget - (time.monotonic() - t0)
            if not bench_args:
                statuses[name] = {"status": "skipped", "note": note}
            elif left < MIN_SECONDS:
                statuses[name] = {"status": "skipped", "note": f"{note}; {left:.0f} s of the budget left"}
            else:
                run = run_config(name, [*bench_args, "--clip", args.clip], out / name, left - 5, args.only)
                statuses[name] = {**run, "note": note}
    command = shlex.join(["python", "-m", "benchmarks.gpu", *argv])
    path = write_summary(out, command, started.isoformat(timespec="seconds"), statuses)
    print(path.read_text())
    print(f"wrote {path} in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return 0 if any(s["status"] == "ok" for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
