"""Which OpenCV this Python gets, how it was built, and what to do when it cannot be imported.

Nothing here imports cv2 at module level: the CLI asks before anything imports it (so a missing or
broken OpenCV is one line naming the fix, not a traceback from deep inside a source), and `perceptd doctor`
asks to report it. OpenCV is an extra (`perceptd[cv]`, pip's opencv-python) because on a Jetson the OpenCV to
keep is JetPack's, built with GStreamer, which pip's wheel would shadow.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

# pip distributions that install a top-level cv2 (any of them shadows a system OpenCV).
PIP_OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")

INSTALL_HINT = ("pip install 'perceptd[cv]' (pip's OpenCV), or on a Jetson keep JetPack's OpenCV: a venv made "
                "with --system-site-packages (README: Running on a Jetson)")


@dataclass(frozen=True)
class OpenCVInfo:
    ok: bool
    version: str = ""
    path: str = ""  # cv2's module file, symlinks resolved
    pip_dist: str = ""  # "opencv-python 5.0.0.93" when a pip wheel provides this cv2; "" otherwise
    build: dict = field(default_factory=dict)  # {"FFMPEG": "YES", "GStreamer": "YES (1.22.0)", ...}
    error: str = ""  # why it cannot be imported, as one line
    fix: str = ""  # what to do about it
    numpy_mismatch: bool = False

    @property
    def origin(self) -> str:
        if self.pip_dist:
            return f"pip ({self.pip_dist})"
        return "system" if "/dist-packages/" in self.path else "other"

    def has(self, feature: str) -> bool:
        return self.build.get(feature, "NO").upper().startswith("YES")


def numpy_version() -> str:
    try:
        return importlib.metadata.version("numpy")
    except importlib.metadata.PackageNotFoundError:
        return ""


def _pip_dist_for(cv2_path: str) -> str:
    for name in PIP_OPENCV:
        try:
            d = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        top = Path(d.locate_file("cv2")).resolve()
        if cv2_path == str(top) or cv2_path.startswith(str(top) + os.sep):
            return f"{name} {d.version}"
    return ""


def _one_line(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {' '.join(str(exc).split())}"


def probe_opencv(build_info: bool = True) -> OpenCVInfo:
    """Import cv2 (once per process, as every source will) and describe it; never raises."""
    spec = importlib.util.find_spec("cv2")
    if spec is None:
        return OpenCVInfo(False, error="OpenCV (cv2) is not installed for this Python", fix=INSTALL_HINT)
    path = str(Path(spec.origin or "").resolve())
    noise = io.StringIO()
    try:
        # numpy prints a screenful about modules built against numpy 1.x before the ImportError; the
        # ImportError is what we report, with the fix.
        with contextlib.redirect_stderr(noise):
            import cv2
    except ImportError as exc:
        text = _one_line(exc)
        said = text + noise.getvalue()
        if any(m in said for m in ("multiarray failed to import", "_ARRAY_API", "compiled using NumPy 1.x")):
            npv = numpy_version()
            return OpenCVInfo(False, path=path, pip_dist=_pip_dist_for(path), numpy_mismatch=True,
                              error=f"the OpenCV at {path} was built against numpy 1.x and this Python has numpy "
                                    f"{npv}, so it cannot be imported ({text})",
                              fix="pip install 'numpy<2' in this environment (JetPack's and Debian's OpenCV are "
                                  "built against numpy 1.x; the Jetson install keeps it with -c "
                                  "config/jetson-constraints.txt)")
        return OpenCVInfo(False, path=path, pip_dist=_pip_dist_for(path), error=f"cv2 at {path} fails to import "
                          f"({text})", fix=f"reinstall it: {INSTALL_HINT}")
    build: dict = {}
    if build_info:
        info = cv2.getBuildInformation()
        video_io = info.split("Video I/O:", 1)[-1].split("Parallel framework:", 1)[0]
        for key in ("FFMPEG", "GStreamer", "v4l/v4l2"):
            m = re.search(rf"^\s*{re.escape(key)}:\s*(.+)$", video_io, re.MULTILINE)
            build[key] = m.group(1).strip() if m else "NO"
        m = re.search(r"^\s*NVIDIA CUDA:\s*(.+)$", info, re.MULTILINE)
        build["CUDA"] = m.group(1).strip() if m else "NO"
    path = str(Path(getattr(cv2, "__file__", None) or path).resolve())
    return OpenCVInfo(True, version=cv2.__version__, path=path, pip_dist=_pip_dist_for(path), build=build)


def require_opencv() -> None:
    """UserError (one line, exit 2) when cv2 cannot be imported, naming what to install."""
    info = probe_opencv(build_info=False)
    if not info.ok:
        raise UserError(f"{info.error}; {info.fix}")
