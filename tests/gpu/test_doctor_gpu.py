"""`perceptd doctor` on a CUDA machine: its driver-API view of the GPU (ctypes, no toolkit) agrees with
torch's. Skipped without a CUDA GPU that torch sees."""

from __future__ import annotations

import pytest

from tests.test_doctor import by_name, doctor

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU")]


def test_doctor_when_a_cuda_gpu_is_present_reports_its_name_and_compute_capability(tmp_path, cache_dir):
    config = tmp_path / "c.yaml"
    config.write_text("sources: [sample:carphone]\nmetrics:\n  port: 0\n")
    _, report = doctor("-c", str(config), cache_dir=cache_dir)
    gpu = by_name(report)["cuda device"]
    first = gpu["facts"]["devices"][0]
    assert gpu["verdict"] == "ok", gpu
    assert first["name"] == torch.cuda.get_device_name(0)
    assert first["compute_capability"] == "{}.{}".format(*torch.cuda.get_device_capability(0))
