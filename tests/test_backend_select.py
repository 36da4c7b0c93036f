"""`backend: auto`: the choice as a truth table, and the real probes on this machine (no GPU, no TensorRT)."""

from __future__ import annotations

import itertools
import logging

import pytest

from engines.base import EngineOptions, available_backends, create_engine
from engines.select import choose_backend, probe_gpu, probe_tensorrt
from engines.zoo import materialise
from pipeline.settings import load_settings
from pipeline.supervisor import WorkerClient
from tests.test_worker import spec as worker_spec


def expected(trt: bool, gpu: bool, ort_cuda: bool, torch_cuda: bool) -> tuple[str, str]:
    if trt and gpu:
        return "tensorrt", "cuda"
    if ort_cuda:
        return "onnxruntime", "cuda"
    if torch_cuda:
        return "torch", "cuda"
    return "onnxruntime", "cpu"


@pytest.mark.parametrize("facts", list(itertools.product([False, True], repeat=4)),
                         ids=lambda f: "trt{}-gpu{}-ortcuda{}-torchcuda{}".format(*map(int, f)))
def test_choose_backend_when_facts_are(facts):
    choice = choose_backend(*facts)
    assert (choice.backend, choice.device) == expected(*facts)
    assert choice.reason  # always says why


def test_choose_backend_when_tensorrt_has_no_gpu_says_so():
    choice = choose_backend(True, False, False, False)
    assert choice == ("onnxruntime", "cpu", choice.reason)
    assert "no CUDA GPU for TensorRT" in choice.reason and "ONNX Runtime on CPU" in choice.reason


def test_choose_backend_when_only_tensorrt_is_missing_prefers_onnxruntime_cuda_over_torch():
    choice = choose_backend(False, True, True, True)
    assert (choice.backend, choice.device) == ("onnxruntime", "cuda")
    assert "TensorRT is not importable" in choice.reason


def test_auto_backend_when_machine_has_no_gpu_runs_onnxruntime_on_cpu_and_logs_why(cache_dir, caplog):
    trt_ok, _ = probe_tensorrt()
    gpu_ok, _ = probe_gpu()
    if trt_ok or gpu_ok:
        pytest.skip("this machine has TensorRT or a GPU; tests/gpu covers it")
    caplog.set_level(logging.INFO, logger="engines.select")
    with create_engine("auto", materialise("retinaface", cache_dir), EngineOptions(max_batch=2)) as engine:
        assert engine.describe()["backend"] == "onnxruntime" and engine.describe()["device"] == "cpu"
    line = next(r.getMessage() for r in caplog.records if r.name == "engines.select")
    assert line.startswith("backend auto -> onnxruntime on cpu:")
    assert "TensorRT is not importable" in line and "No module named" in line


def test_settings_when_backend_is_auto_or_tensorrt_validate(tmp_path):
    assert {"auto", "tensorrt", "onnxruntime"} <= set(available_backends())
    for backend in ("auto", "tensorrt"):
        assert load_settings(None, {"engine.backend": backend}).engine.backend == backend


def test_worker_when_backend_is_auto_reports_the_backend_it_chose(cache_dir):
    """What the info metric shows: the worker's describe() names the real backend, never "auto"."""
    if probe_tensorrt()[0] or probe_gpu()[0]:
        pytest.skip("this machine has TensorRT or a GPU")
    import dataclasses

    worker = WorkerClient(dataclasses.replace(worker_spec(cache_dir), backend="auto"))
    try:
        info = worker.start(120)
    finally:
        worker.stop()
    assert info["backend"] == "onnxruntime" and info["device"] == "cpu"
