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


def test_backends_when_read_never_import_the_model_families():
    """A backend never knows the model family (int8 calibration's preprocessing comes from the caller):
    no import of engines.adapters anywhere in them, lazy imports inside functions included."""
    import ast

    backends = ["base", "build", "cache", "calibration", "fp16", "onnxruntime", "select", "tensorrt", "torch",
                "verify"]
    for name in backends:
        tree = ast.parse((REPO / "engines" / f"{name}.py").read_text())
        imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("engines.adapters")], f"engines/{name}.py imports adapters"
