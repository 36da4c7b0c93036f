"""TensorRT API conformance: every TensorRT name each of perceptd's TensorRT code paths touches exists in
every TensorRT version that reaches the path, and the names TensorRT 11 removed are reached only on the
8.x/10.x paths.

TensorRT cannot run here. Each path runs perceptd's real code (engines/tensorrt.py, build.py,
calibration.py, on a real ONNX model and real photos) against tests/trt_standin.py, which answers as one
TensorRT version would: it has exactly the names found in that version's bindings wheel
(tests/trt_wheels.py), reports __version__ so perceptd takes that version's branches, and records every
name touched, keyword arguments and callbacks (logger, progress monitor, calibrator) included. A name a
path needs and a version lacks fails the path (AttributeError naming it), or shows up in `absent` when
perceptd probed for it; the only probes allowed are listed in PROBES.

The wheels are fetched by .ci/fetch-tensorrt-bindings (part of the README's test command and .ci/run);
where they are missing the tests skip, except under CI, where they fail. `python -m tests.test_tensorrt_api`
prints the table of versions x paths.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from engines.base import EngineOptions, create_engine
from engines.build import TensorRTOptions
from engines.errors import UserError
from pipeline.calibration import FramePreprocess
from tests.conftest import photo_bgr
from tests.test_fp16 import tiny_conv_model
from tests.trt_standin import Recorder, StandIn
from tests.trt_wheels import CACHE, Bindings, find_wheel, listed_versions, read_bindings

# Removed in TensorRT 11 (strongly typed networks only: no precision flags, no calibrators, no implicit
# batch). Qualified: "INT8" alone still exists in 11 (DataType.INT8), so only the stand-in's recording of
# BuilderFlag.INT8 can show it is not reached.
REMOVED_IN_11 = frozenset({
    "BuilderFlag.FP16", "BuilderFlag.INT8", "IBuilderConfig.int8_calibrator", "Builder.platform_has_fast_fp16",
    "tensorrt.IInt8EntropyCalibrator2", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
    "IBuilderConfig.set_calibration_profile"})
# Names perceptd asks for with hasattr/getattr(default), per major version that lacks them.
PROBES = {8: {"tensorrt.IProgressMonitor"}}  # 8.x has no build progress: the heartbeat alone reports it


@dataclass(frozen=True)
class Workspace:
    root: Path
    model: Path  # a small real CNN, dynamic batch, 32x32
    quantized: Path  # the same, explicitly quantized (Q/DQ)
    images: Path  # real photos to calibrate on


def make_workspace(root: Path) -> Workspace:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = [{"input": np.random.default_rng(i).random((1, 3, 32, 32), dtype=np.float32)} for i in range(2)]

        def get_next(self):
            return self.left.pop() if self.left else None

    model = tiny_conv_model(root / "tiny.onnx")
    quantize_static(str(model), str(root / "tiny-qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    images = root / "frames"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        cv2.imwrite(str(images / f"{name}.jpg"), photo_bgr(name))
    return Workspace(root, model, root / "tiny-qdq.onnx", images)


def engine_run(ws: Workspace, model: Path, precision: str, max_batch: int = 4, batches=(1, 3), **trt) -> None:
    """Build (through TensorRT's builder), deserialise, verify against ONNX Runtime and run some batches."""
    options = EngineOptions(max_batch=max_batch, precision=precision, device="cuda",
                            cache_dir=str(ws.root / "cache"), tensorrt=TensorRTOptions(**trt))
    with create_engine("tensorrt", model, options) as engine:
        for n in batches:
            x = np.random.default_rng(n).random((n, 3, 32, 32), dtype=np.float32)
            assert [o.shape[0] for o in engine.infer(x)] == [n, n]


def merge_timing(ws: Workspace) -> None:
    import tensorrt as trt

    from engines.tensorrt import _Builder, _logger

    merged = _Builder(trt, None, _logger(trt)).merge_timing(b"ours", b"theirs")
    assert b"ours" in merged and b"theirs" in merged


def refused(match: str, run: Callable[[Workspace], None]) -> Callable[[Workspace], None]:
    def check(ws: Workspace) -> None:
        with pytest.raises(UserError, match=match):
            run(ws)
    return check


@dataclass(frozen=True)
class CodePath:
    name: str
    run: Callable[[Workspace], None]
    on_11: Callable[[Workspace], None] | None = None  # what 11 does instead (a refusal); None: the same
    reaches: frozenset[str] = frozenset()  # names the 8.x/10.x run must touch, or it checked nothing
    reaches_on_8: frozenset[str] = frozenset()  # and the 8.x run in addition


INT8_CALIBRATED = functools.partial(engine_run, precision="int8", max_batch=2, batches=(1, 2),
                                    calibration_preprocess=FramePreprocess("classifier"))
DLA = functools.partial(engine_run, precision="fp16", max_batch=2, batches=(1,), dla_core=1)
PATHS = [
    CodePath("fp32 build, load, run", lambda ws: engine_run(ws, ws.model, "fp32"),
             reaches=frozenset({"Runtime.deserialize_cuda_engine", "IExecutionContext.execute_async_v3"}),
             reaches_on_8=frozenset({"NetworkDefinitionCreationFlag.EXPLICIT_BATCH"})),
    CodePath("fp16 build, load, run", lambda ws: engine_run(ws, ws.model, "fp16"),
             reaches=frozenset({"BuilderFlag.FP16", "Builder.platform_has_fast_fp16"})),
    CodePath("int8 calibrated on images", lambda ws: INT8_CALIBRATED(ws, ws.model, calibration_images=str(ws.images)),
             refused("explicitly quantized", lambda ws: INT8_CALIBRATED(ws, ws.model,
                                                                         calibration_images=str(ws.images))),
             frozenset({"BuilderFlag.INT8", "IBuilderConfig.int8_calibrator", "tensorrt.IInt8EntropyCalibrator2",
                        "IBuilderConfig.set_calibration_profile",
                        "IInt8EntropyCalibrator2.get_batch", "IInt8EntropyCalibrator2.write_calibration_cache"})),
    CodePath("int8 from a Q/DQ model", lambda ws: engine_run(ws, ws.quantized, "int8")),
    CodePath("DLA core 1, fp16", lambda ws: DLA(ws, ws.model),
             refused("does not build for the DLA", lambda ws: DLA(ws, ws.model)),
             frozenset({"Runtime.DLA_core", "IBuilderConfig.DLA_core", "DeviceType.DLA", "BuilderFlag.GPU_FALLBACK"})),
    CodePath("timing caches merged", merge_timing,
             reaches=frozenset({"ITimingCache.combine", "IBuilderConfig.create_timing_cache"})),
]


@functools.lru_cache(maxsize=None)
def bindings(version: str) -> Bindings | None:
    wheel = find_wheel(version)
    return read_bindings(wheel) if wheel else None


def need_bindings(version: str) -> Bindings:
    """CI fetches the wheels (.ci/run): there a missing one is a failure; elsewhere the test skips."""
    found = bindings(version)
    if found is None:
        what = f"TensorRT {version}'s bindings wheel is not in {CACHE}"
        if os.environ.get("CI"):
            pytest.fail(f"{what}; .ci/run should have fetched it (.ci/fetch-tensorrt-bindings)")
        pytest.skip(f"{what}: run .ci/fetch-tensorrt-bindings")
    return found


def run_path(path: CodePath, b: Bindings, ws: Workspace, monkeypatch) -> Recorder:
    stand_in = StandIn(b.version, b.names).install(monkeypatch)
    (path.on_11 if b.major >= 11 and path.on_11 else path.run)(ws)
    return stand_in.rec


def problems(path: CodePath, b: Bindings, rec: Recorder) -> list[str]:
    """What is wrong with one run; empty when the path conforms."""
    found = []
    missing = sorted(n for n in rec.used if n.rpartition(".")[2] not in b.names)
    if missing:
        found.append(f"uses names TensorRT {b.version} lacks: {missing}")
    unexpected = sorted(rec.absent - PROBES.get(b.major, set()))
    if unexpected:
        found.append(f"asked for names TensorRT {b.version} lacks: {unexpected}")
    if rec.unmodelled:
        found.append(f"the stand-in does not model {sorted(rec.unmodelled)}: add them to tests/trt_standin.py")
    if b.major >= 11 and (rec.used | rec.absent) & REMOVED_IN_11:
        found.append(f"reaches names removed in 11: {sorted((rec.used | rec.absent) & REMOVED_IN_11)}")
    reaches = path.reaches | (path.reaches_on_8 if b.major < 10 else frozenset())
    if b.major < 11 and not reaches <= rec.used:
        found.append(f"never reached {sorted(reaches - rec.used)}: the path checks less than it claims")
    return found


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("trt-api"))


@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
@pytest.mark.parametrize("version", listed_versions())
def test_tensorrt_code_path_when_run_as_each_version_touches_only_names_that_version_has(version, path, ws,
                                                                                       monkeypatch, tmp_path):
    b = need_bindings(version)
    rec = run_path(path, b, Workspace(tmp_path, ws.model, ws.quantized, ws.images), monkeypatch)
    assert not problems(path, b, rec), problems(path, b, rec)
    assert rec.used  # the path touched TensorRT at all


def test_removed_in_11_when_paths_are_listed_each_name_is_reached_by_an_8_or_10_path():
    """Otherwise 'never reached on 11' would hold for a name no path exercises at all."""
    assert REMOVED_IN_11 <= set().union(*(p.reaches | p.reaches_on_8 for p in PATHS))


@pytest.mark.parametrize("version", listed_versions())
def test_tensorrt_bindings_when_read_find_known_names_and_no_made_up_ones(version):
    names = need_bindings(version).names
    assert {"Builder", "Runtime", "create_network", "BuilderFlag", "deserialize_cuda_engine", "execute_async_v3",
            "set_input_shape", "ILogger", "nptype", "ignore_mismatch"} <= names
    assert not {"create_networks", "NoSuchBuilder", "execute_async_v4"} & names
    if need_bindings(version).major < 11:
        assert {"FP16", "INT8", "int8_calibrator", "IInt8EntropyCalibrator2"} <= names


@pytest.mark.parametrize("version", [v for v in listed_versions() if int(v.split(".")[0]) >= 11])
def test_tensorrt_bindings_when_version_is_11_lack_what_11_removed(version):
    names = need_bindings(version).names
    assert not {n.rpartition(".")[2] for n in REMOVED_IN_11 if n != "BuilderFlag.INT8"} & names
    assert not {"get_batch", "read_calibration_cache", "platform_has_fast_int8"} & names
    assert "INT8" in names and "STRONGLY_TYPED" in names  # DataType.INT8 stays; strong typing is all there is


def table() -> str:
    """Versions x code paths: names touched, and pass or what failed."""
    rows = ["| TensorRT | code path | names touched | result |", "| --- | --- | --- | --- |"]
    for version in listed_versions():
        b = bindings(version)
        if b is None:
            rows.append(f"| {version} | (wheel not fetched) | | |")
            continue
        for path in PATHS:
            with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
                ws = make_workspace(Path(tmp))
                try:
                    rec = run_path(path, b, ws, mp)
                    found = problems(path, b, rec)
                    result = "; ".join(found) or "pass" + (" (refused before building)"
                                                           if b.major >= 11 and path.on_11 else "")
                except Exception as exc:
                    rec, result = None, f"FAIL: {exc.__class__.__name__}: {exc}"
            rows.append(f"| {version} | {path.name} | {len(rec.used) if rec else '-'} | {result} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
