"""The TensorRT engine cache on disk: what a file was built for, whether it may be loaded, and the locks.

An engine file is only valid for the exact model bytes, TensorRT version, GPU, precision and shapes it
was built for; TensorRT may crash (not raise) when handed anything else. So every engine has a JSON
sidecar recording those facts plus the engine's own size and SHA-256, written after the engine, and
nothing is deserialised unless the sidecar matches both the wanted facts and the file. Everything here is
plain Python: it runs, and is tested, without TensorRT.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

from engines.errors import UserError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the sidecar's meaning changes: every older engine is then rebuilt


def default_cache_dir() -> Path:
    """Where materialised models and built engines live when the caller names no directory."""
    # systemd's CacheDirectory= sets CACHE_DIRECTORY; a user's own runs use XDG.
    for var in ("PERCEPTD_CACHE_DIR", "CACHE_DIRECTORY"):
        if os.environ.get(var):
            return Path(os.environ[var].split(":")[0])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "perceptd"


@dataclass(frozen=True)
class EngineKey:
    """What an engine is built for. Two builds with equal keys are interchangeable."""

    model_sha256: str
    tensorrt: str  # full version, e.g. "10.3.0.30": TensorRT refuses plans from any other version
    gpu: str  # device name: same compute capability, different SM count -> different tactics
    compute_capability: str  # "8.7"
    precision: str  # fp32 | fp16 | int8
    batch: tuple[int, int]  # optimisation profile (min, max)
    input_hw: tuple[int, int]
    dla_core: Optional[int] = None
    calibration: str = ""  # int8: digest of the calibration data (images or cache); "" otherwise

    def facts(self) -> dict:
        d = asdict(self)
        d["batch"], d["input_hw"] = list(self.batch), list(self.input_hw)
        return d

    def file_name(self, model_stem: str) -> str:
        """Readable where it helps a person pick a file, exact through the digest of every field."""
        digest = hashlib.sha256(json.dumps(self.facts(), sort_keys=True).encode()).hexdigest()[:10]
        parts = [key_stem(model_stem, self.model_sha256), f"trt{self.tensorrt}",
                 f"{_slug(self.gpu)[:24]}-sm{self.compute_capability.replace('.', '')}", self.precision,
                 f"b{self.batch[0]}-{self.batch[1]}", f"{self.input_hw[0]}x{self.input_hw[1]}"]
        if self.dla_core is not None:
            parts.append(f"dla{self.dla_core}")
        parts.append(digest)
        return "-".join(parts) + ".engine"


def key_stem(model_stem: str, sha256: str) -> str:
    """The model's name and content hash (once: built-in models' file names already carry it)."""
    stem = _slug(model_stem)[:40]
    return stem if sha256[:12] in stem else f"{stem}-{sha256[:12]}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.") or "x"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(".json")


def timing_cache_path(engines_dir: Path, key: EngineKey) -> Path:
    """One timing cache per TensorRT version and GPU: TensorRT ignores (or rejects) any other's entries."""
    sm = key.compute_capability.replace(".", "")
    return engines_dir / f"timing-trt{key.tensorrt}-{_slug(key.gpu)[:24]}-sm{sm}.cache"


def make_sidecar(key: EngineKey, engine_path: Path, build_s: float, extra: dict | None = None) -> dict:
    return {"format": FORMAT, **key.facts(), "engine_file": engine_path.name,
            "engine_bytes": engine_path.stat().st_size, "engine_sha256": sha256_file(engine_path),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(build_s, 1),
            "verification": None, **(extra or {})}


def read_sidecar(path: Path) -> dict | None:
    """The sidecar, or None when it is missing, truncated or not ours (any of which means: rebuild)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Decision:
    action: Literal["load", "build"]
    reason: str


def decide(engine_path: Path, key: EngineKey) -> Decision:
    """Load only when the sidecar matches every wanted fact and the engine file is the one it describes."""
    if not engine_path.is_file():
        return Decision("build", "no engine built yet")
    side = sidecar_path(engine_path)
    if not side.exists():
        return Decision("build", f"{side.name} is missing (an interrupted build?)")
    data = read_sidecar(side)
    if data is None:
        return Decision("build", f"{side.name} is corrupt")
    if data.get("format") != FORMAT:
        return Decision("build", f"{side.name} has format {data.get('format')!r}, this perceptd writes {FORMAT}")
    for field, want in key.facts().items():
        if data.get(field) != want:
            return Decision("build", f"stale: built for {field} {data.get(field)!r}, wanted {want!r}")
    try:
        size = engine_path.stat().st_size
    except OSError as exc:
        return Decision("build", f"cannot read {engine_path.name} ({exc.strerror})")
    if size != data.get("engine_bytes"):
        return Decision("build", f"{engine_path.name} is {size} bytes, its sidecar says {data.get('engine_bytes')}")
    if sha256_file(engine_path) != data.get("engine_sha256"):
        return Decision("build", f"{engine_path.name} does not match its sidecar's SHA-256 (corrupt)")
    return Decision("load", "cached engine matches")


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one (a crash mid-write leaves a .tmp)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_sidecar(engine_path: Path, data: dict) -> None:
    atomic_write(sidecar_path(engine_path), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def ensure_writable(directory: Path) -> None:
    """Fail before a build that could never be saved: otherwise every start would build for minutes again."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"engine cache directory {directory} is not writable ({exc.strerror or exc}); set "
                        "engine.cache_dir (or PERCEPTD_CACHE_DIR) to a writable directory (under systemd: "
                        "CacheDirectory=perceptd), or build the engine there with `perceptd build-engine` as "
                        "a user who can write it") from None


class LockTimeout(TimeoutError):
    """Another process held a cache lock for longer than we were willing to wait."""


class FileLock:
    """An exclusive fcntl.flock on `path`, between processes (the daemon's worker, `perceptd build-engine`).

    The kernel drops the lock when its holder dies, so a killed build never leaves the cache locked.
    """

    def __init__(self, path: Path, timeout_s: float, what: str = "the engine cache"):
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_pid(fd)
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LockTimeout(f"{self.path} is locked by {holder} for {self.what}; waited "
                                      f"{self.timeout_s:.0f} s") from None
                if not told:
                    log.info("waiting for %s: %s holds %s", self.what, holder, self.path)
                    told = True
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"
