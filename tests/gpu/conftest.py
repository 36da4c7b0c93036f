"""tests/gpu: everything here is marked `gpu`; the TensorRT tests (test_tensorrt*.py) are skipped, with the
reason, where TensorRT, pycuda or a CUDA GPU is missing. Other files here carry their own conditions."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def tensorrt_missing() -> str | None:
    from engines.select import probe_gpu, probe_tensorrt

    ok, why = probe_tensorrt()
    if not ok:
        return f"TensorRT/pycuda not importable ({why})"
    ok, why = probe_gpu()
    return None if ok else f"no CUDA GPU ({why})"


def pytest_collection_modifyitems(config, items):
    reason = "?"
    for item in items:
        path = Path(str(item.fspath)).resolve()
        if path.parent != HERE:
            continue
        item.add_marker(pytest.mark.gpu)
        if path.name.startswith("test_tensorrt"):
            if reason == "?":
                reason = tensorrt_missing()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))
