"""`perceptd doctor` through the real CLI, on this machine as it is and on a directory laid out like a
Jetson's root (/etc/nv_tegra_release, /proc/device-tree/model, a real /tmp/argus_socket, /dev/video*)."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import tempfile
from pathlib import Path

import cv2
import pytest

from pipeline import sysprobe
from tests.conftest import REPO, perceptd_cmd, perceptd_env

VERDICTS = {"ok", "warn", "fail"}


def doctor(*args: str, cache_dir: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs `perceptd doctor --json ARGS`; the process and its parsed report."""
    e = perceptd_env(cache_dir)
    e.update(env or {})
    proc = subprocess.run(perceptd_cmd("doctor", "--json", *args), env=e, capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    assert proc.stdout, proc.stderr[-3000:]
    return proc, json.loads(proc.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def failed(report: dict) -> list[str]:
    return [c["name"] for c in report["checks"] if c["verdict"] == "fail"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_doctor_when_no_gpu_says_so_and_exits_0_for_the_builtin_defaults(cache_dir):
    proc, report = doctor(cache_dir=cache_dir)
    # The defaults listen on 9108: on a machine where something else holds it, that line alone may fail.
    assert failed(report) in ([], ["metrics port"]), [c for c in report["checks"] if c["verdict"] == "fail"]
    assert proc.returncode == (0 if not failed(report) else 2)
    checks = by_name(report)
    devices, _ = sysprobe.cuda_devices()
    if not devices:
        gpu = checks["cuda device"]
        assert gpu["verdict"] == "warn" and gpu["detail"].startswith("none:"), gpu
        assert "inference runs on the CPU (ONNX Runtime)" in gpu["detail"]
        assert checks["fast fp16"]["verdict"] == "ok" and "no GPU" in checks["fast fp16"]["detail"]
    for name in ("python", "perceptd", "numpy", "onnxruntime", "opencv", "opencv ffmpeg", "opencv gstreamer",
                 "tensorrt", "pycuda", "l4t", "argus socket", "video devices", "model", "cache dir",
                 "output dir", "metrics port", "config"):
        assert name in checks, name
    assert checks["opencv"]["facts"]["version"] == cv2.__version__
    assert checks["config"]["detail"].startswith("built-in defaults:")


def test_doctor_when_text_has_a_verdict_per_line_and_json_the_same_checks(cache_dir):
    _, report = doctor(cache_dir=cache_dir)
    assert set(report) >= {"perceptd", "config", "root", "ready", "exit_code", "counts", "checks"}
    for c in report["checks"]:
        assert set(c) == {"name", "verdict", "detail", "fix", "facts"} and c["verdict"] in VERDICTS, c
        assert c["verdict"] == "ok" or c["fix"], c  # a warning or failure says what to do
    text = subprocess.run(perceptd_cmd("doctor"), env=perceptd_env(cache_dir), capture_output=True, text=True,
                          timeout=180, cwd=REPO).stdout.splitlines()
    rows = [line for line in text[1:-1] if not line.startswith(" ")]
    assert [r.split(None, 1)[0] for r in rows] == [c["verdict"] for c in report["checks"]]
    assert [r.split(None, 1)[1].startswith(c["name"]) for r, c in zip(rows, report["checks"])] == [True] * len(rows)
    assert text[-1].startswith("ready" if report["ready"] else "NOT READY")


def test_doctor_when_config_needs_tensorrt_exits_2(tmp_path, cache_dir):
    devices, _ = sysprobe.cuda_devices()
    if devices and all(importlib.util.find_spec(m) for m in ("tensorrt", "pycuda")):
        pytest.skip("TensorRT and a GPU are here: the config's needs are met")
    config = write(tmp_path / "trt.yaml", "sources: [sample:carphone]\nengine:\n  backend: tensorrt\n"
                   "metrics:\n  port: 0\n")
    proc, report = doctor("-c", str(config), cache_dir=cache_dir)
    assert proc.returncode == 2
    checks = by_name(report)
    assert "tensorrt" in failed(report) or "cuda device" in failed(report), failed(report)
    if not devices:
        assert checks["cuda device"]["verdict"] == "fail" and "needs one" in checks["cuda device"]["detail"]
    assert set(failed(report)) <= {"tensorrt", "pycuda", "cuda device"}, failed(report)


def test_doctor_when_gstreamer_source_and_opencv_without_gstreamer_exits_2(tmp_path, cache_dir):
    if "GStreamer:                   YES" in cv2.getBuildInformation():
        pytest.skip("this venv's OpenCV has GStreamer (tests/test_system_opencv.py covers that case)")
    config = write(tmp_path / "gst.yaml", "sources:\n  - name: test\n    uri: videotestsrc ! videoconvert ! "
                   "appsink\nmetrics:\n  port: 0\n")
    proc, report = doctor("-c", str(config), cache_dir=cache_dir)
    assert proc.returncode == 2
    assert set(failed(report)) == {"opencv gstreamer", "source test"}, failed(report)
    assert "--system-site-packages" in by_name(report)["opencv gstreamer"]["fix"]


def test_doctor_when_metrics_port_is_taken_exits_2(tmp_path, cache_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write(tmp_path / "c.yaml", f"sources: [sample:carphone]\nmetrics:\n  port: {port}\n")
        proc, report = doctor("-c", str(config), cache_dir=cache_dir)
    assert proc.returncode == 2
    assert failed(report) == ["metrics port"]
    line = by_name(report)["metrics port"]
    assert f"127.0.0.1:{port}" in line["detail"] and "metrics.port" in line["fix"]


def test_doctor_when_config_is_invalid_exits_2_with_its_yaml_line(tmp_path, cache_dir):
    config = write(tmp_path / "bad.yaml", "sources: [sample:carphone]\nmodel:\n  name: retinaface\n"
                   "  confidense: 0.5\n")
    proc, report = doctor("-c", str(config), cache_dir=cache_dir)
    assert proc.returncode == 2
    assert failed(report) == ["config"]
    detail = by_name(report)["config"]["detail"]
    assert detail.startswith(f"{config}:4:") and "did you mean 'confidence'" in detail, detail
    assert "python" in by_name(report)  # the machine is still reported


def test_doctor_when_cache_dir_cannot_be_written_exits_2(tmp_path, cache_dir):
    blocker = write(tmp_path / "not-a-dir", "a file where the cache directory's parent should be")
    config = write(tmp_path / "c.yaml", f"sources: [sample:carphone]\nengine:\n  cache_dir: {blocker}/cache\n"
                   "metrics:\n  port: 0\n")
    proc, report = doctor("-c", str(config), cache_dir=cache_dir)
    assert proc.returncode == 2
    assert failed(report) == ["cache dir"]
    assert "engine.cache_dir" in by_name(report)["cache dir"]["fix"]


def test_doctor_when_gst_inspect_and_jetson_tools_are_absent_degrades(cache_dir, tmp_path):
    proc, report = doctor("-c", str(write(tmp_path / "c.yaml", "sources: [sample:carphone]\nmetrics:\n  port: 0\n")),
                          cache_dir=cache_dir, env={"PATH": str(tmp_path / "empty")})
    assert proc.returncode == 0, failed(report)
    assert "not installed" in by_name(report)["gst-inspect-1.0"]["detail"]
    assert not any(c["name"].startswith("gst ") for c in report["checks"])


L4T_RELEASES = [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC "
     "2025\n# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n", "36.4.3", "6.2", "ok"),
    ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC "
     "2024\n", "36.3.0", "6.0", "ok"),
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC "
     "2023\n", "35.4.1", "5.1.2", "warn"),
    ("# R35 (release), REVISION: 9.0, GCID: 1, BOARD: t186ref, EABI: aarch64, DATE: -\n", "35.9.0", "5.x", "warn"),
]


def jetson_root(tmp: Path, release_text: str) -> Path:
    root = tmp / "root"
    write(root / "etc/nv_tegra_release", release_text)
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    return root


@pytest.mark.parametrize("text,release,jetpack,verdict", L4T_RELEASES, ids=[r[1] for r in L4T_RELEASES])
def test_doctor_when_root_is_a_jetson_reports_l4t_and_jetpack(tmp_path, cache_dir, text, release, jetpack, verdict):
    root = jetson_root(tmp_path, text)
    config = write(tmp_path / "c.yaml", "sources: [sample:carphone]\nmetrics:\n  port: 0\n")
    proc, report = doctor("-c", str(config), "--root", str(root), cache_dir=cache_dir)
    checks = by_name(report)
    l4t = checks["l4t"]
    assert l4t["verdict"] == verdict and l4t["facts"] == {"release": release, "jetpack": jetpack,
                                                         "board": "NVIDIA Jetson Orin Nano Developer Kit"}, l4t
    assert f"R{release} = JetPack {jetpack} on NVIDIA Jetson Orin Nano" in l4t["detail"]
    if verdict == "warn":
        assert "needs JetPack 6" in l4t["detail"] and "JetPack 5" in l4t["fix"]
    assert "power mode" in checks
    if checks["opencv"]["facts"].get("origin", "").startswith("pip"):  # this venv's opencv-python, on a Jetson
        assert checks["opencv"]["verdict"] == "warn" and "shadows JetPack's" in checks["opencv"]["detail"]
    assert proc.returncode == 0, failed(report)


def test_doctor_when_jetson_root_has_argus_socket_and_cameras_checks_the_config_against_them(cache_dir):
    # A short directory: a Unix socket's path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="pd-") as tmp, socket.socket(socket.AF_UNIX) as argus:
        root = jetson_root(Path(tmp), L4T_RELEASES[0][0])
        (root / "tmp").mkdir()
        argus.bind(str(root / "tmp/argus_socket"))  # as nvargus-daemon leaves it
        for n in (0, 1):
            write(root / f"dev/video{n}", "")
        config = write(Path(tmp) / "c.yaml", "sources: [/dev/video1, 0]\nmetrics:\n  port: 0\n")
        proc, report = doctor("-c", str(config), "--root", str(root), cache_dir=cache_dir)
        checks = by_name(report)
        assert checks["argus socket"]["facts"]["present"] and checks["argus socket"]["verdict"] == "ok"
        assert [d["path"] for d in checks["video devices"]["facts"]["devices"]] == ["/dev/video0", "/dev/video1"]
        assert checks["video devices"]["verdict"] == "ok" and proc.returncode == 0, failed(report)

        write(config, "sources: [/dev/video5]\nmetrics:\n  port: 0\n")
        proc, report = doctor("-c", str(config), "--root", str(root), cache_dir=cache_dir)
        assert proc.returncode == 2 and failed(report) == ["video devices"]
        assert "/dev/video5 not found" in by_name(report)["video devices"]["detail"]
