"""A real perceptd process for the fault-injection tests: started from a config dict in its own process group
(so a test can SIGKILL all of it), its metrics port read from its log, and its end-of-run frame accounting
parsed, so that every test can assert that frames were conserved."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import yaml

from tests.conftest import REPO, metrics_port, parse_metrics, perceptd_cmd, perceptd_env

ACCOUNTING = re.compile(r"source '([^']+)': (\d+) captured (=|!=) (\d+) processed \+ (\d+) dropped")


class Daemon:
    def __init__(self, tmp_path: Path, cache_dir: Path, sources: list, name: str = "perceptd", env: dict | None = None,
                 user: int | None = None, **sections):
        self.dir = tmp_path
        self.out = Path(sections.get("sinks", {}).get("output_dir", tmp_path / "out"))
        self.config_path = tmp_path / f"{name}.yaml"
        self.log_path = tmp_path / f"{name}.log"
        self.cache_dir = cache_dir
        self.env = env or {}
        self.user = user
        self.write_config(sources, **sections)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def write_config(self, sources: list, **sections) -> None:
        cfg = {"sources": sources,
               "sinks": {"output_dir": str(self.out), "progress": "log", "log_interval_s": 1},
               "metrics": {"port": 0}, "service": {"status_interval_s": 0.5}}
        for key, value in sections.items():
            cfg.setdefault(key, {}).update(value)
        self.config_path.write_text(yaml.safe_dump(cfg))

    def start(self, wait_ready: bool = True) -> "Daemon":
        env = perceptd_env(self.cache_dir)
        env.update(self.env)
        log = open(self.log_path, "a")
        extra = {"user": self.user, "group": self.user, "extra_groups": []} if self.user is not None else {}
        self.proc = subprocess.Popen(perceptd_cmd("run", "-c", str(self.config_path)), env=env, cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, **extra)
        if wait_ready:
            self.port = metrics_port(self.log_path, self.proc)
            self.wait_log(r"worker \d+ ready", 120)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 60, after: int = 0) -> re.Match:
        """The first match of `pattern` in the log past character `after`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.compile(pattern).search(self.log, after)
            if m:
                return m
            self._check_alive(pattern)
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for /{pattern}/ in the log:\n{self.log[-3000:]}")

    def scrape(self) -> dict[str, float]:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return parse_metrics(r.read().decode())

    def metric(self, name: str, **labels) -> float:
        key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        return self.scrape().get(key, 0.0)

    def wait_metric(self, predicate, timeout: float, what: str) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                m = self.scrape()
                if predicate(m):
                    return m
            except OSError:
                pass
            self._check_alive(what)
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log[-3000:]}")

    def processed(self, source: str) -> float:
        return self.metric("perceptd_frames_processed_total", source=source)

    def wait_processed(self, source: str, more: int, timeout: float = 60) -> float:
        start = self.processed(source)
        m = self.wait_metric(lambda m: m.get(f'perceptd_frames_processed_total{{source="{source}"}}', 0)
                             >= start + more, timeout, f"{more} more frames from '{source}'")
        return m[f'perceptd_frames_processed_total{{source="{source}"}}']

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"perceptd did not stop within {timeout} s:\n{self.log[-3000:]}")

    def kill_group(self) -> None:
        """SIGKILL to the daemon, its worker and everything else in its process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def worker_pid(self) -> int:
        return int(re.findall(r"worker (\d+) ready", self.log)[-1])

    def accounting(self) -> dict[str, tuple[int, int, int]]:
        """The last end-of-run line per source: (captured, processed, dropped); asserts they add up."""
        out = {}
        for name, captured, sign, processed, dropped in ACCOUNTING.findall(self.log):
            assert sign == "=", f"frames not conserved for '{name}': {captured} != {processed} + {dropped}"
            out[name] = (int(captured), int(processed), int(dropped))
        return out

    def _check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"perceptd exited {self.proc.returncode} while waiting for {what}:\n"
                                 f"{self.log[-3000:]}")

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_group()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every finalised output file's bytes, by name (dot files, i.e. partial files and the lock, left out)."""
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file() and not p.name.startswith(".")}
