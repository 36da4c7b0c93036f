"""perceptd's command line: run | check-config | models | export | build-engine | bench | doctor.

Exit codes: 0 done (sources ended, or stopped by SIGINT/SIGTERM after finalising outputs); 2 bad input,
with one line saying what to fix; 1 anything unexpected, with the traceback in the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.errors import UserError
from pipeline.redact import RedactingFormatter, redact_text

log = logging.getLogger("perceptd")


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="perceptd", description="Real-time video perception daemon.")
    p.add_argument("--version", action="version", version=f"perceptd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (built-in face model on the sample clip by default)")
    run.add_argument("-c", "--config", type=Path, help="YAML config (default: built-in defaults)")
    run.add_argument("--source", action="append", metavar="[NAME=]URI",
                     help="file, camera index or /dev/videoN, rtsp/http URL, GStreamer pipeline, sample:carphone; "
                          "repeat for several; replaces the config's sources")
    run.add_argument("--model", metavar="NAME|PATH", help="built-in model name, .onnx path, or .pt/.pt2 for torch")
    run.add_argument("--family", choices=["auto", "retinaface", "yolo", "classifier"], help="model family")
    run.add_argument("--labels", type=Path, help="labels file, one per line")
    run.add_argument("--backend", help="inference backend (onnxruntime, torch)")
    run.add_argument("--output", type=Path, metavar="DIR", help="output directory")
    run.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    run.add_argument("--metrics-port", type=int, metavar="P", help="Prometheus port (0 picks a free one)")
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    chk = sub.add_parser("check-config", help="validate a config file; exit 0 if valid, 2 if not")
    chk.add_argument("config", type=Path)
    chk.add_argument("--prepare", action="store_true",
                     help="also resolve the model and materialise it into the cache (systemd's ExecStartPre)")

    sub.add_parser("models", help="list the built-in models")

    bld = sub.add_parser("build-engine", help="build the TensorRT engine the daemon will load (or find it "
                         "in the cache), checked against ONNX Runtime")
    which = bld.add_mutually_exclusive_group()
    which.add_argument("-c", "--config", type=Path, help="YAML config whose model and engine settings to use")
    which.add_argument("--model", metavar="NAME|PATH", help="built-in model name or .onnx path")
    bld.add_argument("--precision", choices=["fp32", "fp16", "int8"])
    bld.add_argument("--max-batch", type=int, metavar="N", help="largest batch of the optimisation profile")
    bld.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB")
    bld.add_argument("--dla", type=int, metavar="N", help="build for DLA core N (Jetson Xavier/Orin)")
    bld.add_argument("--input-size", metavar="HxW", help="input size for models with a dynamic height/width")

    exp = sub.add_parser("export", help="export a PyTorch model to ONNX and check it against torch")
    exp.add_argument("--model", required=True, metavar="MODULE:FACTORY",
                     help="callable that builds the nn.Module, e.g. mypkg.nets:make or nets.py:Net")
    exp.add_argument("--weights", type=Path, metavar="FILE", help="state dict saved with torch.save")
    exp.add_argument("--input-shape", required=True, metavar="N,3,H,W", help="example input, e.g. 1,3,224,224")
    exp.add_argument("--output", required=True, type=Path, metavar="FILE.onnx", help="ONNX file to write")
    exp.add_argument("--labels", type=Path, metavar="FILE", help="labels, one per line; stored in the sidecar")
    exp.add_argument("--torchscript", type=Path, metavar="FILE.pt", help="also write TorchScript (torch backend)")
    exp.add_argument("--exported-program", type=Path, metavar="FILE.pt2",
                     help="also write a torch.export program (torch backend)")
    exp.add_argument("--saliency", action="store_true",
                     help="classifiers ending in global average pooling + a linear layer: also output the last "
                     "feature map and store the layer, for live class activation maps (sinks.overlay.saliency)")
    exp.add_argument("--tolerance", type=float, metavar="T", default=None,
                     help="largest max-abs difference from torch accepted (default 1e-3)")

    doc = sub.add_parser("doctor", help="report what perceptd sees here (packages, OpenCV build, GStreamer, GPU, "
                         "Jetson, cameras, directories, port); exit 0 if what the config needs is here, 2 if not")
    doc.add_argument("-c", "--config", type=Path, help="YAML config whose needs to check (default: built-in defaults)")
    doc.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    # Where /etc/nv_tegra_release, /proc/device-tree, /tmp/argus_socket and /dev are read: tests fake a Jetson.
    doc.add_argument("--root", type=Path, default=Path("/"), help=argparse.SUPPRESS)

    # Its options belong to the benchmarks module (`perceptd bench --help`): main() hands them over as they are.
    sub.add_parser("bench", add_help=False, help="benchmark the pipeline against the engine alone and a plain "
                   "loop (from a source checkout)")
    return p


def overrides_from(args: argparse.Namespace) -> dict:
    o: dict = {}
    if args.source:
        sources = []
        for spec in args.source:
            name, sep, uri = spec.partition("=")
            # NAME=URI only when NAME looks like a name: URIs themselves contain '=' (query strings).
            if sep and name and "/" not in name and ":" not in name:
                sources.append({"name": name, "uri": uri})
            else:
                sources.append(spec)
        o["sources"] = sources
    for flag, key in (("model", "model.name"), ("family", "model.family"), ("labels", "model.labels"),
                      ("backend", "engine.backend"), ("output", "sinks.output_dir"),
                      ("metrics_port", "metrics.port"), ("log_level", "logging.level")):
        value = getattr(args, flag)
        if value is not None:
            o[key] = str(value) if isinstance(value, Path) else value
    return o


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.service import Service

    service = Service(args.config, overrides_from(args), args.max_frames)
    setup_logging(service.settings.logging.level)
    return service.run()


def cmd_check_config(args: argparse.Namespace) -> int:
    from pipeline.settings import load_settings

    s = load_settings(args.config)
    if args.prepare:
        from pipeline.sinks.files import check_output_dir
        from pipeline.spec import build_worker_spec

        _, model = build_worker_spec(s, (480, 640))  # UserError for a missing or non-ONNX model
        check_output_dir(s.sinks.output_dir)
        print(f"model {model.name}: {model.path}")
        if s.engine.backend == "tensorrt":  # build (or find) the engine now, not under the start timeout
            print(build_tensorrt_engine(s))
    print(f"{args.config}: OK ({len(s.sources)} source(s), model {s.model.name}, backend {s.engine.backend})")
    return 0


def cmd_models(_args: argparse.Namespace) -> int:
    from engines.zoo import BUILTINS

    for name, b in BUILTINS.items():
        print(f"{name:12s} {b.family:11s} {b.description}")
    return 0


def cmd_build_engine(args: argparse.Namespace) -> int:
    """The engine `perceptd run` would build at start-up, built now; exit 2 without TensorRT."""
    from engines.tensorrt import require_tensorrt

    require_tensorrt()  # first: one line, before any slow work, where TensorRT is absent
    from pipeline.settings import load_settings

    o: dict = {}
    for flag, key in (("model", "model.name"), ("precision", "engine.precision"), ("max_batch", "engine.max_batch"),
                      ("workspace", "engine.workspace_mb"), ("dla", "engine.dla_core")):
        if getattr(args, flag) is not None:
            o[key] = getattr(args, flag)
    if args.input_size:
        h, sep, w = args.input_size.lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit()):
            raise UserError(f"--input-size: give HEIGHTxWIDTH, e.g. 640x640 (got {args.input_size!r})")
        o["model.input_size"] = [int(h), int(w)]
    print(build_tensorrt_engine(load_settings(args.config, o), open_files=args.config is not None))
    return 0


def build_tensorrt_engine(settings, open_files: bool = True) -> str:
    """Build (or find in the cache) and verify the TensorRT engine these settings make the daemon load;
    a one-line summary. UserError for anything to fix, TensorRT's refusals included."""
    import dataclasses

    from engines.base import EngineError
    from engines.tensorrt import TensorRTEngine
    from pipeline.errors import SourceError
    from pipeline.sources import make_source
    from pipeline.spec import build_worker_spec
    from pipeline.worker import planned_input_hw

    # A config's files are opened as the daemon opens them: families that follow the sources' resolution
    # (RetinaFace) then get the engine size `perceptd run` will ask for. Live sources are left alone.
    sizes = []
    for src in settings.sources if open_files else ():
        source = make_source(src)
        if not getattr(source, "live", False):
            try:
                source.open()
            except SourceError as exc:
                log.warning("%s; its size is not taken into account", exc)
                continue
            sizes.append((source.info.height, source.info.width))
            source.close()
    hw = (max(h for h, _ in sizes), max(w for _, w in sizes)) if sizes else (480, 640)
    spec, model = build_worker_spec(settings, hw)
    input_hw = spec.options.input_hw or planned_input_hw(spec)
    if len(sizes) < len(settings.sources) and model.family == "retinaface" and not settings.model.input_size:
        log.warning("RetinaFace follows the live sources' resolution, unknown here: building for %s; set "
                    "model.input_size (or --input-size) so the daemon asks for this engine", input_hw)
    try:
        with TensorRTEngine(model.path, dataclasses.replace(spec.options, input_hw=input_hw, device="cuda")) as engine:
            k, v = engine.job.key, engine.artifact.sidecar.get("verification") or {}
            return (f"{engine.artifact.path}: {'built' if engine.artifact.built else 'cached'} (TensorRT {k.tensorrt}, "
                    f"{k.gpu}, {k.precision}, batch {k.batch[0]}..{k.batch[1]}, "
                    f"input {k.input_hw[0]}x{k.input_hw[1]}); "
                    f"vs ONNX Runtime: error {v.get('error', float('nan')):.3g}, max |diff| "
                    f"{v.get('max_abs_diff', float('nan')):.3g}, tolerance {engine.job.tolerance:g}")
    except EngineError as exc:  # a refused or failed build: what to change is in the message
        raise UserError(str(exc)) from None


def cmd_export(args: argparse.Namespace) -> int:
    """Exit 2 for bad arguments (one line), 1 when an exported model disagrees with torch."""
    from engines.adapters import read_labels

    if args.labels is not None and not args.labels.is_file():
        raise UserError(f"--labels: file not found: {args.labels}")
    if args.tolerance is not None and not args.tolerance > 0:
        raise UserError(f"--tolerance must be positive, got {args.tolerance}")
    try:
        from engines.export import DEFAULT_TOLERANCE, build_model, export_model, parse_input_shape
    except ImportError as exc:
        raise UserError(f"perceptd export needs PyTorch ({exc}); pip install torch") from None
    shape = parse_input_shape(args.input_shape)
    model = build_model(args.model, args.weights)
    tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE
    report = export_model(model, shape, args.output, torchscript=args.torchscript,
                          exported_program=args.exported_program, labels=read_labels(args.labels),
                          tolerance=tolerance, source=args.model, saliency=args.saliency)
    for fmt, diff in report.diffs.items():
        what = "saliency: max |mean(map) + bias - logit|" if fmt == "cam" else f"max abs diff torch vs {fmt}"
        print(f"{what}: {diff:.3g} (tolerance {tolerance:g})")
    if not report.ok:
        worst = max(report.diffs, key=report.diffs.get)
        print(f"perceptd: error: {worst} output differs from torch by {report.diffs[worst]:.3g} > {tolerance:g}; "
              "nothing written (an op exported differently? raise --tolerance only if that is expected)",
              file=sys.stderr)
        return 1
    for path in report.written:
        print(f"wrote {path}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from pipeline.doctor import cmd_doctor as doctor

    return doctor(args.config, args.root, args.json)


def cmd_bench(argv: list[str]) -> int:
    """benchmarks/ lives in the source checkout, not in the installed package: found next to pipeline/."""
    root = Path(__file__).resolve().parents[1]
    if (root / "benchmarks" / "__main__.py").is_file() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError:
        raise UserError("perceptd bench runs from a source checkout (benchmarks/ is not installed with perceptd); "
                        "clone the repository and run `python -m benchmarks` there") from None
    return bench_main(argv, prog="perceptd bench")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    bench_args = argv[1:] if argv[:1] == ["bench"] else None
    args = build_parser().parse_args(argv if bench_args is None else ["bench"])
    # OpenCV's and FFmpeg's own messages bypass our log (and its credential redaction) and repeat, less
    # clearly, what we report; they come back with --log-level debug.
    if getattr(args, "log_level", None) != "debug":
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    setup_logging(getattr(args, "log_level", None) or "info")
    try:
        # OpenCV is an extra (a Jetson keeps JetPack's): where none imports, say what to install before any
        # module deep in a source fails on it (doctor reports it among the rest).
        if args.command in ("run", "bench", "build-engine") or getattr(args, "prepare", False):
            from pipeline.opencv_check import require_opencv

            require_opencv()
        return {"run": cmd_run, "check-config": cmd_check_config, "models": cmd_models,
                "export": cmd_export, "build-engine": cmd_build_engine,
                "bench": lambda _: cmd_bench(bench_args), "doctor": cmd_doctor}[args.command](args)
    except UserError as exc:
        print(f"perceptd: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except Exception:
        log.exception("perceptd failed unexpectedly")
        return 1
