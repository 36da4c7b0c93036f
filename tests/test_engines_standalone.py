"""engines/ is a library of its own: the daemon (pipeline/) uses it, never the reverse."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import engines
from tests.conftest import REPO

# Backends whose own runtime is absent here (TensorRT/pycuda) still import: they load it lazily.
PROBE = """
import importlib, pkgutil, sys
import engines
for m in pkgutil.walk_packages(engines.__path__, "engines."):
    importlib.import_module(m.name)
print(" ".join(sorted(n for n in sys.modules if n == "pipeline" or n.startswith("pipeline."))))
"""


def test_engines_when_every_module_is_imported_pull_in_nothing_from_pipeline():
    modules = [m.name for m in pkgutil.walk_packages(engines.__path__, "engines.")]
    assert {"engines.base", "engines.build", "engines.adapters.yolo", "engines.tensorrt"} <= set(modules)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "", f"engines imports the daemon: {proc.stdout}"
