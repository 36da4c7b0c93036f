"""Facts about the machine for `perceptd doctor`: Jetson release, GStreamer elements, CUDA devices, V4L2
nodes, directories and ports. Each probe returns what it found and never raises.

Files a Jetson identifies itself by (/etc/nv_tegra_release, /proc/device-tree/model, /tmp/argus_socket,
/dev/video*) are read below `root`, so a test can hand a directory laid out like a Jetson's; programs
(gst-inspect-1.0, nvpmodel, v4l2-ctl) come from PATH and are skipped when absent.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# L4T release -> JetPack, from NVIDIA's JetPack archive. Exact releases first; a release not listed
# falls back to its major line.
JETPACK_BY_L4T = {
    "36.4.4": "6.2.1", "36.4.3": "6.2", "36.4.0": "6.1", "36.4": "6.1", "36.3.0": "6.0", "36.3": "6.0",
    "36.2.0": "6.0 DP", "35.6.1": "5.1.5", "35.6.0": "5.1.4", "35.5.0": "5.1.3", "35.4.1": "5.1.2",
    "35.3.1": "5.1.1", "35.2.1": "5.1", "35.1.0": "5.0.2", "34.1.1": "5.0.1 DP", "34.1.0": "5.0 DP",
    "32.7.6": "4.6.6", "32.7.5": "4.6.5", "32.7.4": "4.6.4", "32.7.3": "4.6.3", "32.7.2": "4.6.2",
    "32.7.1": "4.6.1", "32.6.1": "4.6",
}
JETPACK_BY_MAJOR = {"36": "6.x", "35": "5.x", "34": "5.0 DP", "32": "4.x"}


@dataclass(frozen=True)
class L4T:
    release: str  # "36.4.3"
    jetpack: str  # "6.2"; "" when the release is unknown
    board: str  # /proc/device-tree/model, e.g. "NVIDIA Jetson Orin Nano Developer Kit"; "" if unreadable

    @property
    def major(self) -> int:
        return int(self.release.split(".")[0])


def jetpack_for(release: str) -> str:
    if release in JETPACK_BY_L4T:
        return JETPACK_BY_L4T[release]
    return JETPACK_BY_MAJOR.get(release.split(".")[0], "")


def read_l4t(root: Path) -> L4T | None:
    """The L4T release from /etc/nv_tegra_release ("# R36 (release), REVISION: 4.3, ..."); None off a Jetson."""
    try:
        text = (root / "etc/nv_tegra_release").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        return L4T("unreadable", "", "")
    release = f"{m.group(1)}.{m.group(2).strip('.')}"
    try:
        board = (root / "proc/device-tree/model").read_bytes().rstrip(b"\0\n").decode(errors="replace")
    except OSError:
        board = ""
    return L4T(release, jetpack_for(release), board)


def run_tool(*argv: str, timeout: float = 10) -> tuple[int, str] | None:
    """(exit code, stdout+stderr) of a tool from PATH; None when it is not installed."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, errors="replace")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return p.returncode, p.stdout + p.stderr


def power_mode() -> str | None:
    """`nvpmodel -q`'s mode line ("NV Power Mode: MAXN"); None without nvpmodel."""
    out = run_tool("nvpmodel", "-q")
    if out is None:
        return None
    m = re.search(r"NV Power Mode:\s*(.+)", out[1])
    return m.group(1).strip() if m else f"unreadable (nvpmodel -q exited {out[0]}: {out[1].strip()[:120]})"


def gst_elements() -> set[str] | None:
    """Every element name the GStreamer registry has, from one `gst-inspect-1.0` listing; None without it."""
    out = run_tool("gst-inspect-1.0", timeout=60)  # a first run builds the registry cache: seconds
    if out is None:
        return None
    return {m.group(1) for m in re.finditer(r"^[\w.-]+:\s+([\w.-]+):", out[1], re.MULTILINE)}


@dataclass(frozen=True)
class CudaDevice:
    name: str
    compute_capability: tuple[int, int]
    memory_mb: int

    @property
    def fast_fp16(self) -> bool:
        """Full-rate fp16 arithmetic: sm 5.3 (Jetson TX1), 6.0, 6.2 (TX2) and every GPU from 7.0 (Volta,
        Xavier, Turing, Ampere, Orin...); not 6.1 (GTX 10xx) nor 5.0/5.2 (Maxwell desktop)."""
        cc = self.compute_capability
        return cc >= (7, 0) or cc in ((5, 3), (6, 0), (6, 2))


def cuda_devices() -> tuple[list[CudaDevice], str]:
    """CUDA devices through the driver API (libcuda): no toolkit, pycuda or torch needed. ([], why) if none."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return [], "no CUDA driver (libcuda.so.1 not found)"
    err = cu.cuInit(0)
    if err != 0:
        return [], f"the CUDA driver does not initialise (cuInit error {err})"
    count = ctypes.c_int(0)
    if cu.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return [], "the CUDA driver sees no device"
    devices = []
    for i in range(count.value):
        dev, name, major, minor, mem = ctypes.c_int(), ctypes.create_string_buffer(256), ctypes.c_int(), \
            ctypes.c_int(), ctypes.c_size_t()
        cu.cuDeviceGet(ctypes.byref(dev), i)
        cu.cuDeviceGetName(name, 256, dev)
        cu.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cu.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
        cu.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        devices.append(CudaDevice(name.value.decode(errors="replace"), (major.value, minor.value),
                                  mem.value >> 20))
    return devices, ""


@dataclass(frozen=True)
class VideoNode:
    path: str  # as the config names it, /dev/videoN (read below root)
    char_device: bool
    accessible: bool  # this user may open it read-write (the video group)
    formats: tuple[str, ...] | None  # FourCCs from v4l2-ctl; None when not listed


def video_nodes(root: Path) -> tuple[list[VideoNode], bool]:
    """/dev/video* below root, with their formats where v4l2-ctl can list them; (nodes, v4l2-ctl present)."""
    has_ctl = shutil.which("v4l2-ctl") is not None
    nodes = []
    for p in sorted((root / "dev").glob("video*"), key=lambda q: (len(q.name), q.name)):
        try:
            char = stat.S_ISCHR(p.stat().st_mode)
        except OSError:
            continue
        formats = None
        if char and has_ctl:
            out = run_tool("v4l2-ctl", "-d", str(p), "--list-formats")
            if out is not None and out[0] == 0:
                formats = tuple(dict.fromkeys(re.findall(r"\[\d+\]:\s*'(\w+)'", out[1])))
        nodes.append(VideoNode(f"/dev/{p.name}", char, os.access(p, os.R_OK | os.W_OK), formats))
    return nodes, has_ctl


def is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


def dir_writable(path: Path) -> tuple[bool, str]:
    """Can this user create files in `path` (creating it first where needed)? Tried for real where the
    directory exists: permission bits say nothing about read-only mounts or, for root, anything at all."""
    path = Path(path).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        return False, f"{probe} is not a directory"
    if probe != path:
        ok = os.access(probe, os.W_OK | os.X_OK)
        return ok, f"will be created in {probe}" if ok else f"cannot be created: {probe} is not writable by this user"
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".perceptd-doctor-"):
            pass
    except OSError as exc:
        return False, f"{path} is not writable ({exc.strerror})"
    return True, "writable"


def port_free(host: str, port: int) -> tuple[bool, str]:
    """Can the metrics server bind host:port? Bound the way it binds (SO_REUSEADDR), then released."""
    if port == 0:
        return True, "0: a free port is picked at start"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return False, f"{host} does not resolve ({exc})"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            return False, f"{host}:{port} cannot be bound ({exc.strerror})"
    return True, f"{host}:{port} is free"
