"""int8 calibration without TensorRT: which images, keyed how, refused when, preprocessed by whom.

The calibration cache and the engine are keyed on the images (names, sizes, content) and on the
preprocessing the pipeline hands over; too few images for one batch are refused with the count needed.
The calibrator itself runs through tests/trt_standin.py, which drives it as TensorRT's builder does.
Images are scikit-image's real photos; models are real ONNX files.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engines.adapters import AdapterParams, adapter_class
from engines.base import EngineOptions, create_engine
from engines.build import TensorRTOptions, inspect_onnx, plan_build
from engines.calibration import batches, calibration_source, read_cache, write_cache
from engines.errors import UserError
from pipeline.calibration import FramePreprocess
from tests.conftest import photo_bgr
from tests.test_fp16 import tiny_conv_model
from tests.test_tensorrt_cpu import JETSON_10
from tests.trt_standin import StandIn

RETINAFACE = FramePreprocess("retinaface")


@pytest.fixture()
def frames(photos, tmp_path) -> Path:
    """A folder of three real photos (and a text file that is not an image)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in photos.values():
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("ignored")
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_conv_model(tmp_path_factory.mktemp("int8") / "tiny.onnx")


def int8_options(tmp_path, max_batch=2, **trt) -> EngineOptions:
    trt.setdefault("calibration_preprocess", FramePreprocess("classifier"))
    return EngineOptions(max_batch=max_batch, precision="int8", device="cuda", input_hw=(32, 32),
                         cache_dir=str(tmp_path / "cache"), tensorrt=TensorRTOptions(**trt))


def plan(tmp_path, model, **trt):
    return plan_build(model, int8_options(tmp_path, **trt), inspect_onnx(model), JETSON_10)


def test_photos_fixture_is_real():  # guards the calibration tests against an empty fixture
    assert photo_bgr("astronaut").shape == (512, 512, 3)


def test_plan_build_when_int8_has_images_keys_the_engine_and_the_cache_on_them(tmp_path, tiny, frames):
    job = plan(tmp_path, tiny, calibration_images=str(frames))
    assert job.plan.calibrate and [p.name for p in job.calibration.images] == [
        "astronaut.png", "chelsea.png", "coffee.png"]
    assert job.key.calibration.startswith("images:") and job.calibration.cache_path.suffix == ".calib"
    assert job.key.calibration[7:19] in job.calibration.cache_path.name  # the default cache names its data
    shutil.copy(frames / "coffee.png", frames / "extra.png")
    again = plan(tmp_path, tiny, calibration_images=str(frames))
    assert again.engine_path != job.engine_path and again.calibration.cache_path != job.calibration.cache_path


def test_plan_build_when_an_image_changes_in_place_keys_a_new_engine(tmp_path, tiny, frames):
    """Same names, same sizes, other pixels: only the content digest tells."""
    job = plan(tmp_path, tiny, calibration_images=str(frames))
    data = bytearray((frames / "coffee.png").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (frames / "coffee.png").write_bytes(bytes(data))
    again = plan(tmp_path, tiny, calibration_images=str(frames))
    assert again.key.calibration != job.key.calibration and again.engine_path != job.engine_path


def test_plan_build_when_preprocessing_changes_keys_a_new_engine(tmp_path, tiny, frames):
    imagenet = plan(tmp_path, tiny, calibration_images=str(frames))
    other = FramePreprocess("classifier", (("mean", (0.5, 0.5, 0.5)), ("std", (0.5, 0.5, 0.5)), ("resize", "crop")))
    custom = plan(tmp_path, tiny, calibration_images=str(frames), calibration_preprocess=other)
    assert custom.key.calibration != imagenet.key.calibration
    assert plan(tmp_path, tiny, calibration_images=str(frames)).key == imagenet.key  # stable across plans


def test_calibration_source_when_fewer_images_than_one_batch_refuses_with_the_count_needed(tmp_path, tiny, frames):
    with pytest.raises(UserError) as err:
        plan(tmp_path, tiny, max_batch=4, calibration_images=str(frames))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("engine.calibration_images:") and str(frames) in msg
    assert "has 3 image(s)" in msg and "batches of 4" in msg and "at least 1 more" in msg
    assert "engine.max_batch" in msg


def test_calibration_source_when_the_caller_gives_no_preprocessing_refuses_naming_model_family(tmp_path, frames):
    with pytest.raises(UserError, match="model.family") as err:
        calibration_source(frames, None, tmp_path / "x", 2, None)
    assert "\n" not in str(err.value)


def test_calibration_source_when_folder_is_empty_or_missing_refuses(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no images"):
        calibration_source(tmp_path / "empty", None, tmp_path / "x", 1, RETINAFACE)
    with pytest.raises(UserError, match="not a directory"):
        calibration_source(tmp_path / "missing", None, tmp_path / "x", 1, RETINAFACE)


def test_calibration_cache_when_made_from_other_images_is_not_read(tmp_path, frames):
    cache = tmp_path / "scales.calib"
    first = calibration_source(frames, cache, tmp_path / "x", 2, RETINAFACE)
    write_cache(first, b"SCALES-A", 1)
    assert read_cache(first) == b"SCALES-A"
    (frames / "astronaut.png").unlink()
    second = calibration_source(frames, cache, tmp_path / "x", 2, RETINAFACE)
    assert second.cache_path == cache and read_cache(second) is None  # calibrate again, do not reuse A's scales
    only_cache = calibration_source(None, cache, tmp_path / "x", 2, None)
    assert read_cache(only_cache) == b"SCALES-A"  # a cache given alone is taken as it is


def test_calibration_batches_when_images_are_given_are_preprocessed_like_frames(photos, frames):
    (frames / "broken.jpg").write_bytes(b"not an image")
    source = calibration_source(frames, None, frames / "default", 2, RETINAFACE)
    assert [p.name for p in source.images] == ["astronaut.png", "broken.jpg", "chelsea.png", "coffee.png"]
    got = list(batches(source.images, RETINAFACE, (2, 3, 256, 256)))
    assert len(got) == 1  # 3 readable images in batches of 2: the partial batch is dropped
    want = np.zeros((3, 256, 256), np.float32)
    adapter_class("retinaface")((256, 256), [], AdapterParams()).preprocess(cv2.imread(str(photos["astronaut"])), want)
    np.testing.assert_array_equal(got[0][0], want)


def _preprocess_in_child(preprocess, image: np.ndarray) -> np.ndarray:
    out = np.zeros((3, 64, 64), np.float32)
    preprocess(image, out)
    return out


def test_frame_preprocess_when_sent_to_a_spawned_process_preprocesses_there_as_here():
    """It rides in EngineOptions into the worker, which is spawned: pickled, imported afresh, same result."""
    custom = FramePreprocess("classifier", (("mean", (0.4, 0.5, 0.6)), ("std", (0.2, 0.3, 0.4)), ("resize", "stretch")))
    assert pickle.loads(pickle.dumps(custom)) == custom
    image = photo_bgr("chelsea")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.apply(_preprocess_in_child, (custom, image))
    np.testing.assert_array_equal(there, _preprocess_in_child(custom, image))


def test_build_worker_spec_when_int8_hands_the_workers_own_preprocessing_to_the_engine(cache_dir):
    from pipeline.settings import load_settings
    from pipeline.spec import build_worker_spec

    overrides = {"model.name": "retinaface", "engine.backend": "tensorrt", "engine.cache_dir": str(cache_dir)}
    spec, _ = build_worker_spec(load_settings(None, {**overrides, "engine.precision": "int8"}), (480, 640))
    assert spec.options.tensorrt.calibration_preprocess == FramePreprocess("retinaface")
    fp16, _ = build_worker_spec(load_settings(None, {**overrides, "engine.precision": "fp16"}), (480, 640))
    assert fp16.options.tensorrt.calibration_preprocess is None


def test_calibrator_when_tensorrt_calibrates_feeds_whole_batches_and_logs_their_number(tmp_path, tiny, frames,
                                                                                      monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="engines")
    stand_in = StandIn("10.3.0").install(monkeypatch)
    with create_engine("tensorrt", tiny, int8_options(tmp_path, calibration_images=str(frames))) as engine:
        cache = engine.job.calibration.cache_path
    assert "int8 calibration: 3 images -> 1 batch(es) of 2 (1 left over)" in caplog.text
    assert "int8 calibration: 1 batch(es) of 2 fed to TensorRT" in caplog.text
    fed = [e for e in stand_in.rec.events if e[0] == "calibration batch"]
    assert len(fed) == 1 and fed[0][1] != 0.0  # the preprocessed photos reached the device buffer
    assert cache.read_bytes() == b"STAND-IN SCALES 1" and cache.with_name(cache.name + ".json").is_file()
    # Another engine from the same images (a new cache_dir for engines, the same calibration cache): no batches.
    caplog.clear()
    options = int8_options(tmp_path / "other", calibration_images=str(frames), calibration_cache=str(cache))
    with create_engine("tensorrt", tiny, options) as engine:
        assert engine.artifact.built
    assert f"int8: using calibration cache {cache}" in caplog.text and "batch(es)" not in caplog.text


def test_calibrator_when_no_image_is_readable_refuses_naming_the_images(tmp_path, tiny, monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(b"not an image")
    StandIn("10.3.0").install(monkeypatch)
    with pytest.raises(UserError) as err:
        create_engine("tensorrt", tiny, int8_options(tmp_path, calibration_images=str(folder)))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("engine.calibration_images: no calibration batch of 2")
    assert "2 image(s)" in msg
