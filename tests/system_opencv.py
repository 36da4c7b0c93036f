"""Running perceptd with Debian's OpenCV (python3-opencv, built with GStreamer), as a Jetson runs it with
JetPack's: the system Python, whose own cv2 and numpy come first, with the repository in front and this
venv's other packages (pydantic, onnxruntime, ...) after everything else on the path."""

from __future__ import annotations

import functools
import subprocess
import sysconfig
from pathlib import Path

from tests.conftest import REPO, perceptd_env

SYSTEM_PYTHON = Path("/usr/bin/python3")
VENV_SITE = sysconfig.get_paths()["purelib"]

BOOT = ("import runpy, sys; sys.path.insert(0, {repo!r}); sys.path.append({site!r}); sys.argv = {argv!r}; "
        "runpy.run_module({module!r}, run_name='__main__')")


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Is there a system Python whose OpenCV has GStreamer?"""
    if not SYSTEM_PYTHON.exists():
        return False
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import cv2, re, sys; sys.exit(0 if re.search("
                            "r'GStreamer:\\s*YES', cv2.getBuildInformation()) else 1)"], capture_output=True)
    return probe.returncode == 0


def command(module: str, *args: str) -> list[str]:
    code = BOOT.format(repo=str(REPO), site=VENV_SITE, argv=[module, *args], module=module)
    return [str(SYSTEM_PYTHON), "-c", code]


def run(module: str, *args: str, cache_dir: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(command(module, *args), env=perceptd_env(cache_dir), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
