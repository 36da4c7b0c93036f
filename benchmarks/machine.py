"""What the numbers were measured on: CPU, cores, memory, GPU, load, and the versions that matter.

Versions come from package metadata, not imports: importing torch only to print its version would add
hundreds of MB to the process whose memory the soak measures.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("numpy", "opencv-python", "opencv-python-headless", "onnxruntime", "onnxruntime-gpu", "torch",
            "tensorrt", "pycuda", "prometheus-client", "pydantic")


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu() -> dict:
    info = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                  if line.startswith(("model name", "Model", "Hardware"))), platform.processor() or "?")
    cores = {(block.get("physical id"), block.get("core id")) for block in _cpuinfo_blocks(info)}
    mem_kb = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                   if line.startswith("MemTotal:")), 0)
    return {"model": model, "logical_cores": os.cpu_count(), "physical_cores": len(cores) if len(cores) > 1 else None,
            "usable_cores": len(os.sched_getaffinity(0)), "memory_gb": round(mem_kb / (1 << 20), 1),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def _cpuinfo_blocks(text: str) -> list[dict]:
    blocks = []
    for chunk in text.strip().split("\n\n"):
        blocks.append({k.strip(): v.strip() for k, _, v in (line.partition(":") for line in chunk.splitlines())})
    return blocks


def gpu() -> list[dict]:
    """NVIDIA GPUs through nvidia-smi; a Jetson by its device-tree model; [] for none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,compute_cap",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
            keys = ("name", "driver", "memory_mb", "compute_capability")
            return [dict(zip(keys, (v.strip() for v in line.split(",")))) for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    model = _read("/proc/device-tree/model").strip("\x00 \n")
    return [{"name": model, "jetson": True}] if "jetson" in model.lower() else []


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    from pipeline import __version__

    out["perceptd"] = __version__
    out["git"] = _git()
    return out


def _git() -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) if head else None


def describe() -> dict:
    return {"host": platform.node(), "os": f"{platform.system()} {platform.release()}", "arch": platform.machine(),
            "cpu": cpu(), "gpu": gpu(), "versions": versions(), "executable": sys.executable}
