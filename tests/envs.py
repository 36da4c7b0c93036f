"""Python environments laid out as users have them, made from the packages installed in this venv: one
without OpenCV (perceptd installed without its cv extra), and a venv made with --system-site-packages on
the system Python, where OpenCV is the system's (Debian's python3-opencv here, as JetPack's on a Jetson).

Real interpreters and real installed packages: what changes is only which of them each environment sees
(this venv's packages are linked in, minus the ones left out).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO

SYSTEM_PYTHON = "/usr/bin/python3"


def need(condition: bool, what: str) -> None:
    """CI installs python3-opencv (.ci/apt-packages.txt): there a missing one is a failure."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{what}; .ci/run should have provided it")
        pytest.skip(what)


def system_python() -> dict:
    """The system Python's version and OpenCV (skips, or fails under CI, where it has none)."""
    need(Path(SYSTEM_PYTHON).is_file(), f"{SYSTEM_PYTHON} is not installed")
    probe = ("import json, sys\ntry:\n    import cv2\n    cv = [cv2.__version__, cv2.__file__, "
             "hasattr(cv2, 'IMREAD_COLOR_RGB')]\nexcept ImportError:\n    cv = None\n"
             "print(json.dumps({'version': list(sys.version_info[:2]), 'cv2': cv}))")
    facts = json.loads(subprocess.run([SYSTEM_PYTHON, "-s", "-c", probe], capture_output=True, text=True,
                                      check=True).stdout)
    need(facts["cv2"] is not None, "the system Python has no OpenCV (sudo apt install python3-opencv)")
    return facts


def dist_dir(dest: Path, *dists: str) -> Path:
    """A directory holding only these installed distributions (their packages and metadata, linked)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in dists:
        d = importlib.metadata.distribution(name)
        for top in {f.parts[0] for f in d.files or ()}:
            if top != ".." and not (dest / top).exists():
                (dest / top).symlink_to(Path(d.locate_file(top)))
    return dest


def make_env(dest: Path, base: str, system_site: bool, leave_out: tuple[str, ...]) -> Path:
    """A venv on `base` seeing this venv's packages except those whose names start with `leave_out`
    (perceptd itself comes from the checkout through PYTHONPATH); its python."""
    cmd = [base, "-m", "venv", "--without-pip"] + (["--system-site-packages"] if system_site else []) + [str(dest)]
    subprocess.run(cmd, check=True, capture_output=True)
    python = dest / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    skip = ("__editable__", "_perceptd", "perceptd-", "perceptd.") + leave_out
    for entry in ours.iterdir():
        # .pth files would replay this venv's editable install (another checkout of perceptd) and hooks.
        if entry.suffix == ".pth" or entry.name.lower().startswith(skip):
            continue
        (site / entry.name).symlink_to(entry)
    return python


def env_vars(cache_dir: Path, *paths: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PERCEPTD_CACHE_DIR=str(cache_dir), PYTHONNOUSERSITE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), *map(str, paths)]))
    return env


def perceptd(python: Path, *args: str, cache_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pipeline", *args], env=env_vars(cache_dir), capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def same_python_as_system() -> bool:
    """This venv's compiled packages load in the system Python only when both are the same X.Y."""
    return list(sys.version_info[:2]) == system_python()["version"]
