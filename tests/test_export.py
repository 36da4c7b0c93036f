"""`perceptd export` on a user's own small CNN, trained here for a few steps, then run by the real pipeline
as a classifier on both backends: the pipeline's scores equal torch's softmax on the same frames."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from engines.adapters import AdapterParams
from engines.adapters.classifier import ClassifierAdapter
from engines.export import ExportError, build_model, parse_input_shape
from pipeline.cli import build_parser, cmd_export
from pipeline.errors import ConfigError, UserError
from pipeline.settings import load_settings
from pipeline.supervisor import WorkerClient
from tests import user_cnn
from tests.conftest import decoded_frames, make_clip, read_jsonl, run_perceptd
from tests.test_worker import spec as worker_spec

SHAPE = f"1,3,{user_cnn.SIZE},{user_cnn.SIZE}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """The user's workflow: train, torch.save(state_dict), write a labels file."""
    d = tmp_path_factory.mktemp("user_cnn")
    model = user_cnn.train()
    torch.save(model.state_dict(), d / "weights.pth")
    (d / "labels.txt").write_text("\n".join(user_cnn.LABELS) + "\n")
    return {"dir": d, "weights": d / "weights.pth", "labels": d / "labels.txt"}


@pytest.fixture(scope="module")
def exported(trained, cache_dir) -> dict[str, Path]:
    d = trained["dir"]
    proc = run_perceptd("export", "--model", "tests.user_cnn:make", "--weights", str(trained["weights"]),
                        "--input-shape", SHAPE, "--output", str(d / "cnn.onnx"), "--labels", str(trained["labels"]),
                        "--torchscript", str(d / "cnn.pt"), cache_dir=cache_dir, check=True)
    return {"onnx": d / "cnn.onnx", "pt": d / "cnn.pt", "stdout": proc.stdout}


def test_export_when_user_cnn_then_prints_differences_and_writes_checked_files(exported):
    out = exported["stdout"]
    for fmt in ("onnxruntime", "torchscript"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"max abs diff torch vs {fmt}:"))
        assert float(line.split(":")[1].split()[0]) <= 1e-4, line
    import onnx

    model = onnx.load(str(exported["onnx"]))
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # dynamic batch axis
    sidecar = json.loads(Path(str(exported["onnx"]) + ".json").read_text())
    assert sidecar["labels"] == list(user_cnn.LABELS) and sidecar["input_shape"] == [None, 3, 64, 64]


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_pipeline_when_user_cnn_exported_then_scores_equal_torch_softmax(backend, trained, exported, tmp_path,
                                                                         cache_dir):
    rng = np.random.default_rng(7)
    clips = {name: make_clip(tmp_path / f"{name}.avi", user_cnn.stripes(k, rng), 6)
             for k, name in enumerate(user_cnn.LABELS)}
    model_file = exported["onnx"] if backend == "onnxruntime" else exported["pt"]
    cfg = {"sources": [{"name": n, "uri": str(p)} for n, p in clips.items()],
           # Labels come from the export's sidecar; preprocessing as the model was trained: stretch, pixel/255.
           "model": {"name": str(model_file), "family": "classifier", "mean": [0, 0, 0], "std": [1, 1, 1],
                     "resize": "stretch", "top_k": 2},
           "engine": {"backend": backend, "max_batch": 4},
           "sinks": {"output_dir": str(tmp_path / "out"), "video": {"enabled": False}, "progress": "off"},
           "metrics": {"enabled": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_perceptd("run", "-c", str(tmp_path / "c.yaml"), cache_dir=cache_dir, check=True)

    reference = build_model("tests.user_cnn:make", trained["weights"])
    for k, (name, clip) in enumerate(clips.items()):
        frames = decoded_frames(clip)
        with torch.inference_mode():
            probs = torch.softmax(reference(user_cnn.to_tensor(frames)), dim=1).numpy()
        records = read_jsonl(tmp_path / "out" / f"{name}.jsonl")
        assert [r["frame"] for r in records] == list(range(len(frames)))
        for r, p in zip(records, probs):
            got = {d["label"]: d["score"] for d in r["detections"]}
            want = dict(zip(user_cnn.LABELS, p.tolist()))
            assert got.keys() == want.keys()
            assert max(abs(got[c] - want[c]) for c in want) <= 1e-4, (name, r["frame"], got, want)
            assert r["detections"][0]["label"] == user_cnn.LABELS[k]  # and it learned the stripes


def test_export_when_difference_over_tolerance_then_exit_1_and_nothing_written(tmp_path, cache_dir):
    out = tmp_path / "noisy.onnx"
    proc = run_perceptd("export", "--model", "tests.user_cnn:make_noisy", "--input-shape", SHAPE,
                        "--output", str(out), cache_dir=cache_dir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "max abs diff torch vs onnxruntime:" in proc.stdout
    assert "differs from torch" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no model, no sidecar, no temporary file left behind


def test_export_when_factory_is_not_importable_then_exit_2_with_one_line(tmp_path, cache_dir):
    proc = run_perceptd("export", "--model", "tests.no_such_module:make", "--input-shape", SHAPE,
                        "--output", str(tmp_path / "m.onnx"), cache_dir=cache_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cannot import 'tests.no_such_module'" in proc.stderr


def _export_args(tmp_path: Path, *args: str) -> list[str]:
    return ["export", "--output", str(tmp_path / "m.onnx"), *args]


@pytest.mark.parametrize("args, message", [
    (["--model", "tests.user_cnn", "--input-shape", SHAPE], "expected MODULE:FACTORY"),
    (["--model", "tests.user_cnn:nope", "--input-shape", SHAPE], "has no attribute 'nope'"),
    (["--model", "tests.user_cnn:LABELS", "--input-shape", SHAPE], "is not callable"),
    (["--model", "tests.user_cnn:not_a_model", "--input-shape", SHAPE], "not a torch.nn.Module"),
    (["--model", "tests.user_cnn:make", "--weights", "/nonexistent/w.pth", "--input-shape", SHAPE],
     "--weights: file not found"),
    (["--model", "tests.user_cnn:make", "--input-shape", "1,3,64"], "--input-shape: expected N,3,H,W"),
    (["--model", "tests.user_cnn:make", "--input-shape", "1,1,64,64"], "3-channel"),
    (["--model", "tests.user_cnn:make", "--input-shape", "1,3,32,32"], "does not run on [2, 3, 32, 32]"),
])
def test_export_when_arguments_are_bad_then_user_error(args, message, tmp_path):
    with pytest.raises(UserError) as info:
        cmd_export(build_parser().parse_args(_export_args(tmp_path, *args)))
    assert message in str(info.value)
    assert not (tmp_path / "m.onnx").exists()


def test_export_when_weights_do_not_fit_then_names_the_keys(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "w.pth")
    with pytest.raises(ExportError, match="missing keys.*conv1.bias.*"):
        build_model("tests.user_cnn:make", tmp_path / "w.pth")


def test_export_when_labels_do_not_match_classes_then_user_error(tmp_path, trained):
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    args = _export_args(tmp_path, "--model", "tests.user_cnn:make", "--input-shape", SHAPE,
                        "--labels", str(tmp_path / "three.txt"))
    with pytest.raises(UserError, match="3 labels but the model's first output has 2 classes"):
        cmd_export(build_parser().parse_args(args))


def test_parse_input_shape_when_valid_then_four_ints():
    assert parse_input_shape("1,3,224,224") == (1, 3, 224, 224)


def test_classifier_adapter_when_resize_stretch_then_whole_frame_goes_straight_to_the_input():
    frame = user_cnn.stripes(1, np.random.default_rng(3))
    frame = cv2.resize(frame, (96, 80))  # another size and aspect than the model's 64x64
    adapter = ClassifierAdapter((64, 64), [], AdapterParams(), mean=(0, 0, 0), std=(1, 1, 1), resize="stretch")
    out = np.zeros((3, 64, 64), np.float32)
    adapter.preprocess(frame, out)
    expected = user_cnn.to_tensor([cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA)])[0].numpy()
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("model, message", [
    ({"std": [1, 0, 1]}, "std value must be greater than 0"),
    ({"mean": [0, 0]}, "model.mean"),
    ({"resize": "squash"}, "model.resize"),
])
def test_settings_when_classifier_preprocessing_is_bad_then_config_error(model, message, tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"sources": ["a.mp4"], "model": model}))
    with pytest.raises(ConfigError, match=message):
        load_settings(tmp_path / "c.yaml")


def test_worker_when_classifier_preprocessing_is_set_for_a_detector_then_user_error(cache_dir):
    worker = WorkerClient(dataclasses.replace(worker_spec(cache_dir), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    with pytest.raises(UserError, match="model.mean, model.std and model.resize apply to classifiers"):
        worker.start(120)
    worker.kill()
