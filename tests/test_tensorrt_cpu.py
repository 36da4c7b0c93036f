"""Everything around TensorRT that runs without it: cache key, sidecar matching, rebuild decisions, the
cache lock, the unwritable cache directory, precision plans per TensorRT generation (int8 refusals),
engine verification against ONNX Runtime, and the CLI/backend without TensorRT (int8 calibration data:
tests/test_tensorrt_int8.py; engines/tensorrt.py itself over a stand-in TensorRT: tests/test_tensorrt_layer.py).

TensorRT cannot run here, so load_or_build is driven by StandInBuilder: it returns bytes where TensorRT
would return a plan. Everything else (files, locks, ONNX Runtime, real models) is real.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engines.base import EngineError, EngineOptions, create_engine
from engines.build import (OnnxFacts, RuntimeFacts, TensorRTOptions, inspect_onnx, load_or_build, plan_build,
                           plan_precision, record_verification)
from engines.cache import EngineKey, FileLock, decide, sidecar_path, timing_cache_path
from engines.verify import EngineVerificationError, Verification, check, compare_with_onnxruntime
from engines.zoo import materialise
from pipeline.errors import ModelError, UserError
from tests.conftest import REPO, run_perceptd
from tests.test_fp16 import runner, tiny_conv_model

KEY = EngineKey("ab" * 32, "10.3.0.30", "Orin", "8.7", "fp16", (1, 4), (640, 640))
JETSON_10 = RuntimeFacts("10.3.0.30", "Orin", "8.7", dla_cores=2)


class StandInBuilder:
    """TensorRT's builder where TensorRT cannot run: a deterministic 'plan' per job, and a timing cache."""

    def __init__(self):
        self.calls: list[tuple] = []

    def build(self, job, onnx_bytes: bytes, timing_cache: bytes | None):
        self.calls.append((job.key, timing_cache))
        return b"PLAN:" + json.dumps(job.key.facts()).encode(), b"TIMING:%d" % len(self.calls)


@pytest.fixture(scope="module")
def retinaface(cache_dir) -> Path:
    return materialise("retinaface", cache_dir)


@pytest.fixture(scope="module")
def retinaface_facts(retinaface) -> OnnxFacts:
    return inspect_onnx(retinaface)


def options(tmp_path, precision="fp32", max_batch=4, input_hw=(640, 640), **trt) -> EngineOptions:
    return EngineOptions(max_batch=max_batch, precision=precision, device="cuda", input_hw=input_hw,
                         cache_dir=str(tmp_path / "cache"), tensorrt=TensorRTOptions(**trt))


# --------------------------------------------------------------------------------------- key, sidecar

@pytest.mark.parametrize("field,value", [
    ("model_sha256", "cd" * 32), ("tensorrt", "10.3.0.31"), ("gpu", "Xavier"), ("compute_capability", "7.2"),
    ("precision", "int8"), ("batch", (1, 8)), ("input_hw", (480, 640)), ("dla_core", 0),
    ("calibration", "images:0123")])
def test_engine_key_when_any_field_changes_names_another_file(field, value):
    other = dataclasses.replace(KEY, **{field: value})
    assert other.file_name("retinaface") != KEY.file_name("retinaface")
    assert KEY.file_name("retinaface") == dataclasses.replace(KEY).file_name("retinaface")  # stable


def test_engine_key_when_named_shows_what_it_was_built_for():
    name = KEY.file_name("retinaface")
    for part in ("retinaface", "abababababab", "trt10.3.0.30", "orin-sm87", "fp16", "b1-4", "640x640"):
        assert part in name
    assert name.endswith(".engine")


@pytest.fixture()
def built(tmp_path, retinaface, retinaface_facts):
    """A job whose engine has been 'built' once, and the stand-in builder that built it."""
    job = plan_build(retinaface, options(tmp_path, "fp16"), retinaface_facts, JETSON_10)
    builder = StandInBuilder()
    artifact = load_or_build(job, builder)
    assert artifact.built and len(builder.calls) == 1
    return job, builder


def test_load_or_build_when_sidecar_matches_loads_without_building(built):
    job, builder = built
    artifact = load_or_build(job, builder)
    assert not artifact.built and len(builder.calls) == 1
    assert artifact.data == job.engine_path.read_bytes()
    side = json.loads(sidecar_path(job.engine_path).read_text())
    assert side["tensorrt"] == "10.3.0.30" and side["precision"] == "fp16" and side["batch"] == [1, 4]
    assert side["model_sha256"] == job.onnx.sha256 and side["input_hw"] == [640, 640]
    assert "built_at" in side and side["build_seconds"] >= 0


def test_load_or_build_when_tensorrt_version_changed_builds_a_new_engine(built, retinaface, retinaface_facts, tmp_path):
    job, builder = built
    newer = plan_build(retinaface, options(tmp_path, "fp16"), retinaface_facts,
                       dataclasses.replace(JETSON_10, tensorrt="10.7.0.23"))
    assert newer.engine_path != job.engine_path
    assert load_or_build(newer, builder).built and len(builder.calls) == 2


@pytest.mark.parametrize("field,value", [("tensorrt", "8.6.2"), ("model_sha256", "0" * 64), ("gpu", "Xavier")])
def test_decide_when_sidecar_was_written_for_something_else_rebuilds(built, field, value):
    job, _ = built
    side = sidecar_path(job.engine_path)
    data = json.loads(side.read_text())
    data[field] = value
    side.write_text(json.dumps(data))
    decision = decide(job.engine_path, job.key)
    assert decision.action == "build" and field in decision.reason


def test_load_or_build_when_sidecar_is_truncated_rebuilds(built):
    job, builder = built
    side = sidecar_path(job.engine_path)
    side.write_text(side.read_text()[:40])
    decision = decide(job.engine_path, job.key)
    assert (decision.action, decision.reason) == ("build", f"{side.name} is corrupt")
    assert load_or_build(job, builder).built and len(builder.calls) == 2
    assert decide(job.engine_path, job.key).action == "load"  # the rebuild rewrote a good sidecar


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_load_or_build_when_engine_file_does_not_match_its_sidecar_rebuilds(built, damage):
    job, builder = built
    data = bytearray(job.engine_path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[10] ^= 0xFF  # same size, different content: only the SHA-256 tells
    job.engine_path.write_bytes(bytes(data))
    decision = decide(job.engine_path, job.key)
    assert decision.action == "build" and ("bytes" in decision.reason or "SHA-256" in decision.reason)
    assert load_or_build(job, builder).built


def test_decide_when_sidecar_is_missing_rebuilds(built):
    job, _ = built
    sidecar_path(job.engine_path).unlink()
    assert decide(job.engine_path, job.key).action == "build"


def test_load_or_build_when_building_again_starts_from_the_saved_timing_cache(built):
    job, builder = built
    path = timing_cache_path(job.engine_path.parent, job.key)
    assert path.read_bytes() == b"TIMING:1"
    load_or_build(job, builder, force=True)
    assert builder.calls[-1][1] == b"TIMING:1" and path.read_bytes() == b"TIMING:2"


def test_load_or_build_when_cache_dir_is_not_writable_is_one_line_naming_dir_and_fix(tmp_path, retinaface,
                                                                                     retinaface_facts):
    # Under a regular file nothing can be created, even as root (chmod does not stop root).
    (tmp_path / "file").write_text("not a directory")
    opts = dataclasses.replace(options(tmp_path, "fp16"), cache_dir=str(tmp_path / "file" / "cache"))
    job = plan_build(retinaface, opts, retinaface_facts, JETSON_10)
    builder = StandInBuilder()
    with pytest.raises(UserError) as err:
        load_or_build(job, builder)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "file" / "cache" / "engines") in msg
    assert "not writable" in msg and "engine.cache_dir" in msg and not builder.calls  # failed before building


def test_load_or_build_when_cache_is_read_only_but_matches_still_loads(built, monkeypatch):
    """Prebuilt engines shipped in a read-only directory: loading needs no write access."""
    job, builder = built
    import engines.build

    def no_writes(directory):
        raise AssertionError("a matching engine must load without write access")

    monkeypatch.setattr(engines.build, "ensure_writable", no_writes)
    assert not load_or_build(job, builder).built


# --------------------------------------------------------------------------------------- the lock

LOCKER = """
import sys, time
from engines.cache import FileLock, LockTimeout
try:
    with FileLock(sys.argv[1], float(sys.argv[2])):
        print("locked", flush=True)
        time.sleep(float(sys.argv[3]))
except LockTimeout as exc:
    print("timeout", exc, flush=True)
    sys.exit(3)
"""


def locker(path: Path, timeout_s: float, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOCKER, str(path), str(timeout_s), str(hold_s)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def test_file_lock_when_held_by_this_process_excludes_another_process(tmp_path):
    lock = tmp_path / "timing.lock"
    with FileLock(lock, 1.0):
        other = locker(lock, 0.3, 0)
        out, _ = other.communicate(timeout=20)
        assert other.returncode == 3 and out.startswith("timeout") and "pid" in out
    other = locker(lock, 5.0, 0)  # released: the other process gets it at once
    out, _ = other.communicate(timeout=20)
    assert other.returncode == 0 and out.strip() == "locked"


def test_file_lock_when_holder_dies_is_released(tmp_path):
    lock = tmp_path / "timing.lock"
    holder = locker(lock, 5.0, 60)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait(10)
    t0 = time.monotonic()
    with FileLock(lock, 5.0):
        assert time.monotonic() - t0 < 2.0


# --------------------------------------------------------------------------------------- precision plans

@pytest.mark.parametrize("version,precision,flags,convert,strong,explicit", [
    ("8.5.2", "fp32", (), False, False, True),
    ("8.6.2.3", "fp16", ("FP16",), False, False, True),
    ("10.3.0.30", "fp16", ("FP16",), False, False, False),
    ("11.0.0", "fp16", (), True, True, False),
    ("11.0.0", "fp32", (), False, True, False),
])
def test_plan_precision_when_tensorrt_is(version, precision, flags, convert, strong, explicit):
    plan = plan_precision(version, precision, has_qdq=False)
    assert (plan.builder_flags, plan.convert_fp16, plan.strongly_typed, plan.explicit_batch_flag) == \
        (flags, convert, strong, explicit)


def test_plan_precision_when_tensorrt_is_older_than_8_5_refuses():
    with pytest.raises(UserError, match="8.5 or newer"):
        plan_precision("8.4.1", "fp32", False)


def test_plan_precision_when_int8_on_tensorrt_10_calibrates_unless_the_model_is_quantized():
    assert plan_precision("10.3.0", "int8", has_qdq=False).calibrate
    explicit = plan_precision("10.3.0", "int8", has_qdq=True)
    assert not explicit.calibrate and "INT8" in explicit.builder_flags


def test_plan_precision_when_int8_on_tensorrt_11_needs_a_quantized_model():
    with pytest.raises(UserError, match="explicitly quantized") as err:
        plan_precision("11.1.0", "int8", has_qdq=False)
    assert "ModelOpt" in str(err.value)
    plan = plan_precision("11.1.0", "int8", has_qdq=True)
    assert plan.strongly_typed and not plan.calibrate and not plan.builder_flags


def test_plan_build_when_int8_has_no_calibration_data_refuses(tmp_path, retinaface, retinaface_facts):
    with pytest.raises(UserError, match="calibration_images") as err:
        plan_build(retinaface, options(tmp_path, "int8"), retinaface_facts, JETSON_10)
    assert "\n" not in str(err.value)
    missing = options(tmp_path, "int8", calibration_cache=str(tmp_path / "nope.calib"))
    with pytest.raises(UserError, match="does not exist"):
        plan_build(retinaface, missing, retinaface_facts, JETSON_10)


def test_plan_build_when_int8_has_only_an_existing_cache_uses_it(tmp_path, retinaface, retinaface_facts):
    cache = tmp_path / "scales.calib"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    job = plan_build(retinaface, options(tmp_path, "int8", calibration_cache=str(cache)), retinaface_facts, JETSON_10)
    assert job.calibration.cache_exists and job.key.calibration.startswith("cache:")


def test_plan_build_when_model_has_dynamic_hw_builds_for_the_configured_size(tmp_path, retinaface, retinaface_facts):
    assert retinaface_facts.input_shape == (None, 3, None, None)
    job = plan_build(retinaface, options(tmp_path, input_hw=(384, 640), max_batch=8), retinaface_facts, JETSON_10)
    assert job.profile == ((1, 3, 384, 640), (8, 3, 384, 640), (8, 3, 384, 640))
    assert job.key.input_hw == (384, 640) and job.key.batch == (1, 8)
    with pytest.raises(ModelError, match="model.input_size"):
        plan_build(retinaface, options(tmp_path, input_hw=None), retinaface_facts, JETSON_10)


def test_plan_build_when_model_has_fixed_hw_ignores_the_configured_size(tmp_path):
    model = tiny_conv_model(tmp_path / "tiny.onnx", hw=(48, 64))
    job = plan_build(model, options(tmp_path, input_hw=(640, 640)), inspect_onnx(model), JETSON_10)
    assert job.key.input_hw == (48, 64) and job.profile[0] == (1, 3, 48, 64)


def test_plan_build_when_dla_is_asked_checks_precision_and_cores(tmp_path, retinaface, retinaface_facts):
    with pytest.raises(UserError, match="fp16"):
        plan_build(retinaface, options(tmp_path, "fp32", dla_core=0), retinaface_facts, JETSON_10)
    with pytest.raises(UserError, match="2 DLA core"):
        plan_build(retinaface, options(tmp_path, "fp16", dla_core=2), retinaface_facts, JETSON_10)
    job = plan_build(retinaface, options(tmp_path, "fp16", dla_core=1), retinaface_facts, JETSON_10)
    assert job.dla_core == 1 and "dla1" in job.engine_path.name
    # The DLA has no dynamic shapes: one batch size, smaller batches are padded at run time.
    assert job.profile[0] == job.profile[2] == (4, 3, 640, 640) and job.key.batch == (4, 4)
    with pytest.raises(UserError, match="does not build for the DLA"):
        plan_build(retinaface, options(tmp_path, "fp16", dla_core=0), retinaface_facts,
                   dataclasses.replace(JETSON_10, tensorrt="11.2.0"))


def test_inspect_onnx_when_model_is_explicitly_quantized_says_so(tmp_path, retinaface_facts):
    from onnxruntime.quantization import QuantFormat, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = [{"input": np.random.default_rng(i).random((1, 3, 32, 32), dtype=np.float32)} for i in range(2)]

        def get_next(self):
            return self.left.pop() if self.left else None

    fp32 = tiny_conv_model(tmp_path / "tiny.onnx")
    quantize_static(str(fp32), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    assert inspect_onnx(tmp_path / "qdq.onnx").has_qdq
    assert not inspect_onnx(fp32).has_qdq and not retinaface_facts.has_qdq


# --------------------------------------------------------------------------------------- verification

def test_verify_when_engine_is_broken_refuses_with_the_measured_error(tmp_path):
    model = tiny_conv_model(tmp_path / "good.onnx")
    broken = tiny_conv_model(tmp_path / "broken.onnx", scale=1.3)  # a real model, slightly wrong weights
    v = compare_with_onnxruntime(runner(broken), model, (3, 32, 32), (1, 4))
    assert v.error > 0.05 and v.samples == 3
    with pytest.raises(EngineVerificationError) as err:
        check(v, 0.05, refuse=True, what="TensorRT fp16 engine x.engine")
    msg = str(err.value)
    assert f"{v.error:.4g}" in msg and "max |diff|" in msg and "engine.verify" in msg
    check(v, 0.05, refuse=False, what="x")  # engine.verify: false reports and accepts


def test_verify_when_engine_returns_nan_refuses():
    v = Verification(float("inf"), float("inf"), {"out": float("inf")}, 1)
    with pytest.raises(EngineVerificationError):
        check(v, 0.05, refuse=True, what="x")


def test_verify_when_engine_matches_passes(tmp_path):
    model = tiny_conv_model(tmp_path / "m.onnx")
    v = compare_with_onnxruntime(runner(model), model, (3, 32, 32), (1, 4))
    assert v.error == 0.0
    check(v, 1e-6, refuse=True, what="x")


def test_record_verification_when_written_is_read_back_from_the_sidecar(built):
    job, builder = built
    artifact = load_or_build(job, builder)
    v = Verification(0.01, 0.2, {"loc": 0.01}, 3)
    record_verification(artifact, v.as_dict())
    again = load_or_build(job, builder)
    assert not again.built and Verification.from_dict(again.sidecar["verification"]) == v


# --------------------------------------------------------------------------------------- without TensorRT

def test_tensorrt_backend_when_tensorrt_is_not_importable_is_a_user_error(retinaface):
    from engines.tensorrt import TensorRTUnavailable

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    with pytest.raises(TensorRTUnavailable) as err:
        create_engine("tensorrt", retinaface, EngineOptions(device="cuda"))
    assert isinstance(err.value, UserError) and isinstance(err.value, EngineError)
    assert "TensorRT is not importable here" in str(err.value) and "engine.backend" in str(err.value)


def test_build_engine_cli_when_tensorrt_is_not_importable_exits_2_with_one_line(retinaface, cache_dir):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    proc = run_perceptd("build-engine", "--model", str(retinaface), "--precision", "fp16", cache_dir=cache_dir,
                        timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("perceptd: error: TensorRT is not importable here")
    assert "JetPack" in lines[0] and "pycuda" in lines[0]


def test_build_heartbeat_when_a_build_runs_reports_progress_to_the_worker_hook(monkeypatch):
    """A long TensorRT build reports progress through engines.base's hook; the worker forwards it to the
    daemon, whose start deadline then counts from the last report instead of killing a slow build."""
    import time

    import engines.build as build
    from engines.base import set_progress_hook

    seen: list[str] = []
    monkeypatch.setattr(build, "HEARTBEAT_S", 0.05)
    set_progress_hook(seen.append)
    try:
        with build._Heartbeat("model.onnx"):
            time.sleep(0.3)
    finally:
        set_progress_hook(None)
    assert seen[0] == "building the TensorRT engine for model.onnx"
    assert len(seen) >= 3 and all("model.onnx" in s for s in seen)
