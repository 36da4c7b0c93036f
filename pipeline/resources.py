"""Process and GPU resource metrics, read at scrape time.

CPU and RSS for the daemon and its inference worker come from /proc. GPU utilisation and memory come
from NVML on desktop GPUs (nvidia-ml-py, when installed) or tegrastats on Jetson; where neither exists
the GPU series are simply absent.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
from typing import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger(__name__)

# Exported only where a GPU is found; dashboards may reference them anyway.
GPU_METRICS = ("perceptd_gpu_utilization_ratio", "perceptd_gpu_memory_used_bytes", "perceptd_gpu_memory_total_bytes")

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def lower_priority(increment: int, what: str) -> None:
    """Raise the calling thread's nice value by `increment`; threads it starts afterwards inherit it.

    On Linux a nice value belongs to a thread, so this demotes one thread of a process (the recorder) as
    well as a whole process when called first thing in it (the worker). Where it is refused (a sandbox),
    `what` runs at its parent's priority.
    """
    try:
        os.nice(increment)
    except OSError as exc:
        log.debug("%s priority unchanged: %s", what, exc)


def proc_stats(pid: int) -> tuple[float, int] | None:
    """(cpu seconds, resident bytes) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/statm") as f:
            rss_pages = int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5), after pid and comm
    return (utime + stime) / _TICKS, rss_pages * _PAGE


class Tegrastats:
    """Jetson: one long-running `tegrastats` whose latest line is parsed on scrape."""

    GR3D = re.compile(r"GR3D_FREQ (\d+)%")
    RAM = re.compile(r"RAM (\d+)/(\d+)MB")

    def __init__(self, binary: str):
        self.latest = ""
        self._proc = subprocess.Popen([binary, "--interval", "1000"], stdout=subprocess.PIPE, text=True,
                                      stderr=subprocess.DEVNULL)
        threading.Thread(target=self._pump, name="tegrastats", daemon=True).start()

    def _pump(self) -> None:
        for line in self._proc.stdout:
            self.latest = line

    def sample(self) -> dict:
        out = {}
        if m := self.GR3D.search(self.latest):
            out["util"] = int(m.group(1)) / 100
        if m := self.RAM.search(self.latest):  # Jetson GPU memory is the shared system RAM
            out["used"], out["total"] = int(m.group(1)) << 20, int(m.group(2)) << 20
        return out

    def close(self) -> None:
        self._proc.terminate()


class ResourceCollector:
    """A prometheus collector: register it on the daemon's registry."""

    def __init__(self, worker_pid: Callable[[], int | None]):
        self._worker_pid = worker_pid
        self._nvml = None
        self._tegra = None
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # not installed, or no NVIDIA driver: no GPU series
            binary = shutil.which("tegrastats")
            if binary:
                try:
                    self._tegra = Tegrastats(binary)
                except OSError as exc:
                    log.debug("tegrastats unavailable: %s", exc)

    def collect(self):
        cpu = CounterMetricFamily("perceptd_process_cpu_seconds", "CPU time used", labels=["process"])
        rss = GaugeMetricFamily("perceptd_process_resident_memory_bytes", "Resident memory", labels=["process"])
        for name, pid in (("main", os.getpid()), ("worker", self._worker_pid())):
            stats = proc_stats(pid) if pid else None
            if stats:
                cpu.add_metric([name], stats[0])
                rss.add_metric([name], stats[1])
        yield cpu
        yield rss
        gpus = self._gpu_samples()
        if gpus:
            util = GaugeMetricFamily("perceptd_gpu_utilization_ratio", "GPU busy fraction", labels=["gpu"])
            used = GaugeMetricFamily("perceptd_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
            total = GaugeMetricFamily("perceptd_gpu_memory_total_bytes", "GPU memory size", labels=["gpu"])
            for gpu, sample in gpus.items():
                if "util" in sample:
                    util.add_metric([gpu], sample["util"])
                if "used" in sample:
                    used.add_metric([gpu], sample["used"])
                    total.add_metric([gpu], sample["total"])
            yield util
            yield used
            yield total

    def _gpu_samples(self) -> dict[str, dict]:
        if self._nvml is not None:
            nv, out = self._nvml, {}
            try:
                for i in range(nv.nvmlDeviceGetCount()):
                    h = nv.nvmlDeviceGetHandleByIndex(i)
                    mem = nv.nvmlDeviceGetMemoryInfo(h)
                    out[str(i)] = {"util": nv.nvmlDeviceGetUtilizationRates(h).gpu / 100,
                                   "used": mem.used, "total": mem.total}
            except Exception as exc:  # a driver hiccup must not break /metrics
                log.debug("NVML query failed: %s", exc)
            return out
        if self._tegra is not None:
            sample = self._tegra.sample()
            return {"0": sample} if sample else {}
        return {}

    def close(self) -> None:
        if self._tegra is not None:
            self._tegra.close()
