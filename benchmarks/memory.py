"""Memory through a long unpaced run: resident memory of the daemon and its worker (and device memory on
a GPU), sampled every second; growth per hour is the least-squares slope after a warm-up, so a leak shows
as a positive slope however noisy single samples are."""

from __future__ import annotations

import os
import shutil
import subprocess

from benchmarks import pipeline_runs
from benchmarks.config import BenchConfig
from benchmarks.stats import slope

_MB = 1 / (1 << 20)


class GpuMemory:
    """The worker's device memory: NVML per process when nvidia-ml-py is installed, else nvidia-smi; the
    whole device's use when per-process figures are not visible (containers hide other PID namespaces)."""

    def __init__(self):
        self.source: str | None = None
        self._nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self.source = "nvml"
        except Exception:  # not installed, or no driver
            self._smi = shutil.which("nvidia-smi")
            self.source = "nvidia-smi" if self._smi else None

    def sample_mb(self, pid: int | None) -> float | None:
        try:
            return self._nvml_mb(pid) if self._nvml is not None else self._smi_mb(pid) if self.source else None
        except Exception:  # a driver hiccup costs one sample, not the run
            return None

    def _nvml_mb(self, pid):
        nv = self._nvml
        h = nv.nvmlDeviceGetHandleByIndex(0)
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(h):
            if proc.pid == pid and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory * _MB
        return nv.nvmlDeviceGetMemoryInfo(h).used * _MB

    def _smi_mb(self, pid):
        apps = subprocess.run([self._smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=5).stdout
        for line in apps.splitlines():
            p, _, used = line.partition(",")
            if p.strip() == str(pid):
                return float(used)
        total = subprocess.run([self._smi, "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                               capture_output=True, text=True, timeout=5).stdout
        return float(total.split()[0]) if total.strip() else None


def rss_mb(pid: int | None) -> float | None:
    from pipeline.resources import proc_stats

    stats = proc_stats(pid) if pid else None
    return stats[1] * _MB if stats else None


def soak(cfg: BenchConfig, seconds: float, interval_s: float = 1.0, gpu: bool = False) -> dict:
    """One unpaced looping run of `seconds`; RSS of both processes every interval_s; MB/hour slopes over
    the samples after the warm-up (the first fifth of the run, at most a minute: allocators and caches
    settle there)."""
    gpu_mem = GpuMemory() if gpu else None
    samples: list[list] = []  # [t, main MB, worker MB, device MB or None]
    next_at = [0.0]

    def tick(p, t):
        if t >= next_at[0]:
            next_at[0] = t + interval_s
            pid = p.worker.pid
            samples.append([round(t, 2), rss_mb(os.getpid()), rss_mb(pid),
                            gpu_mem.sample_mb(pid) if gpu_mem else None])

    # The warm-up is part of the sampled run: cfg.warmup_s is zeroed so the samples start at once.
    from dataclasses import replace

    settle = min(60.0, seconds / 5)
    pipeline_runs.run(replace(cfg, warmup_s=0.0), [{"name": "soak", "uri": cfg.clip.uri, "loop": True}],
                      "soak", seconds, on_tick=tick, events=False)
    kept = [s for s in samples if s[0] >= settle and s[1] is not None and s[2] is not None]
    times_h = [s[0] / 3600 for s in kept]
    out = {"seconds": seconds, "interval_s": interval_s, "settle_s": settle, "samples": samples,
           "columns": ["t_s", "main_rss_mb", "worker_rss_mb", "device_mb"],
           "gpu_source": gpu_mem.source if gpu_mem else None}
    for col, key in ((1, "main"), (2, "worker")):
        out[f"{key}_rss_mb_per_hour"] = slope(times_h, [s[col] for s in kept])
    out["rss_mb_per_hour"] = out["main_rss_mb_per_hour"] + out["worker_rss_mb_per_hour"]
    out["rss_mb_per_10min"] = out["rss_mb_per_hour"] / 6
    out["rss_mb_end"] = {"main": samples[-1][1], "worker": samples[-1][2]} if samples else {}
    dev = [s for s in kept if s[3] is not None]
    out["device_mb_per_hour"] = slope([s[0] / 3600 for s in dev], [s[3] for s in dev]) if len(dev) > 1 else None
    return out
