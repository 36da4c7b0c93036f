"""Saliency maps from real models on real photos and a real clip: the built-in mobilenet_v2's class activation
maps (exact: they agree with torch's Grad-CAM at the same layer and reproduce the logits), `perceptd export
--saliency` on a user's network, RetinaFace's score map on carphone's face, YOLO's layouts, the heat map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engines.adapters import AdapterParams
from engines.adapters.classifier import ClassifierAdapter
from engines.adapters.retinaface import RetinaFaceAdapter, input_size_for_sources
from engines.adapters.yolo import YoloAdapter
from engines.base import EngineOptions, create_engine
from engines.export import export_model
from engines.export_saliency import SaliencyExportError
from engines.saliency import GRID, CamWeights, class_activation
from engines.zoo import BUILTINS, materialise
from pipeline.sinks.heatmap import blend
from tests.conftest import decoded_frames, photo_bgr
from tests.test_adapters import const_model
from tests.user_cnn import UserCNN

# Where the object is in each photo (x1, y1, x2, y2, source pixels), drawn by hand.
HEAD = {"chelsea": (60, 0, 400, 290)}  # the cat's head fills most of the photo; its face centre is below
FACE_CENTRE = (130, 60, 350, 270)  # chelsea: between the eyes and the chin
OBJECTS = {"coffee": (170, 20, 420, 300), "rocket": (250, 100, 470, 427)}  # the cup; the rocket and its pad


def run(adapter, model, images, labels=()):
    """Preprocess, infer and make the map for each image; [(detections, saliency, outputs)]."""
    with create_engine("onnxruntime", model, EngineOptions(max_batch=1, input_hw=adapter.input_hw)) as engine:
        names = [o.name for o in engine.outputs]
        adapter.check_outputs([o.shape for o in engine.outputs], names)
        assert adapter.enable_saliency(labels, names, str(model)) is None
        out = []
        for image in images:
            batch = np.zeros((1, 3, *adapter.input_hw), np.float32)
            fit = adapter.preprocess(image, batch[0])
            outs = [o[0] for o in engine.infer(batch)]
            out.append((adapter.postprocess(outs, fit), adapter.saliency(outs, fit), outs))
        return out


@pytest.fixture(scope="module")
def mobilenet(cache_dir):
    path = materialise("mobilenet_v2", cache_dir, "onnxruntime")  # the session's: exported once for all tests
    adapter = ClassifierAdapter((224, 224), list(BUILTINS["mobilenet_v2"].labels), AdapterParams(confidence=0.0))
    return path, adapter


def inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_cam_when_mobilenet_v2_on_chelsea_then_peak_in_the_cat_head_and_mean_plus_bias_is_the_logit(mobilenet):
    path, adapter = mobilenet
    (dets, sal, outs), = run(adapter, path, [photo_bgr("chelsea")])
    assert "cat" in dets[0].label and sal.label == dets[0].label
    assert inside(sal.peak, HEAD["chelsea"]) and inside(sal.peak, FACE_CENTRE), sal.peak
    cam = CamWeights.from_model(path)
    logits, features = outs[0], outs[1]
    for class_id in np.argsort(-logits)[:5]:  # every class's map, not only the top one
        raw = class_activation(features, cam, int(class_id))
        assert abs(float(raw.mean()) + cam.bias[class_id] - logits[class_id]) < 1e-3
    grid = np.asarray(sal.to_json()["grid"])
    assert grid.shape == (GRID, GRID) and grid.min() >= 0 and grid.max() <= 1
    assert grid[:, 0].max() == grid[:, -1].max() == 0  # outside the centre crop the network saw nothing


@pytest.mark.parametrize("photo", sorted(OBJECTS))
def test_cam_when_mobilenet_v2_on_other_photos_then_peak_on_the_object(mobilenet, photo):
    path, adapter = mobilenet
    (dets, sal, _), = run(adapter, path, [photo_bgr(photo)])
    assert inside(sal.peak, OBJECTS[photo]), (photo, dets[0].label, sal.peak)


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, class_id: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) with torch autograd: ReLU(sum_k mean(d logit / d A_k) A_k) at `layer`."""
    seen = []

    def keep(_module, _inputs, out):  # returns None: a hook's return value would replace the output
        out.retain_grad()
        seen.append(out)

    hook = layer.register_forward_hook(keep)
    try:
        logits = model(x)
        logits[0, class_id].backward()
    finally:
        hook.remove()
    a = seen[0]
    weights = a.grad.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * a).sum(dim=1))[0].detach().numpy()


def test_cam_when_compared_with_torch_grad_cam_at_the_same_layer_then_correlation_at_least_0_99(mobilenet):
    from engines.models.mobilenet_v2 import pretrained

    path, adapter = mobilenet
    model = pretrained()
    names = ("chelsea", "coffee", "rocket", "astronaut")
    results = run(adapter, path, [photo_bgr(n) for n in names])
    cam = CamWeights.from_model(path)
    corr = {}
    for name, (dets, sal, outs) in zip(names, results):
        batch = np.zeros((1, 3, 224, 224), np.float32)
        adapter.preprocess(photo_bgr(name), batch[0])
        reference = grad_cam(model, model.features, torch.from_numpy(batch), dets[0].class_id)
        ours = np.maximum(class_activation(outs[1], cam, dets[0].class_id), 0)
        corr[name] = float(np.corrcoef(ours.ravel(), reference.ravel())[0, 1])
    print("correlation with torch Grad-CAM:", {k: f"{v:.9f}" for k, v in corr.items()})
    assert min(corr.values()) >= 0.99, corr


class GapCNN(nn.Module):
    """A user's network ending as ResNet does: convolutions, an nn.AdaptiveAvgPool2d module, flatten, fc."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def test_export_saliency_when_gap_linear_network_then_features_output_and_weights_in_metadata(tmp_path):
    torch.manual_seed(0)
    report = export_model(GapCNN(), (1, 3, 64, 64), tmp_path / "m.onnx", labels=["a", "b", "c"], saliency=True)
    assert report.ok and report.diffs["cam"] < 1e-4 and report.written, report.diffs
    cam = CamWeights.from_model(tmp_path / "m.onnx")
    assert cam.output == "features" and cam.weight.shape == (3, 16) and report.output_shapes[1] == (16, 16, 16)
    adapter = ClassifierAdapter((64, 64), ["a", "b", "c"], AdapterParams(confidence=0.0), mean=(0, 0, 0),
                                std=(1, 1, 1))
    (dets, sal, _), = run(adapter, tmp_path / "m.onnx", [photo_bgr("coffee")], labels=("b",))
    assert sal.label == "b" and sal.map.shape == (16, 16)  # the configured class, not the top one


def test_export_saliency_when_no_global_average_pooling_then_one_line_error_and_nothing_written(tmp_path):
    with pytest.raises(SaliencyExportError, match="global average pooling"):
        export_model(UserCNN(), (1, 3, 64, 64), tmp_path / "m.onnx", saliency=True)
    assert not list(tmp_path.iterdir())


def test_retinaface_map_when_carphone_then_peak_inside_a_detected_face_in_most_frames(carphone, tmp_path):
    frames = decoded_frames(carphone, 120)[::3]
    adapter = RetinaFaceAdapter(input_size_for_sources(frames[0].shape[:2]), ["face"], AdapterParams(confidence=0.8))
    results = run(adapter, materialise("retinaface", tmp_path), frames)
    hits = sum(any(inside(sal.peak, d.box) for d in dets) for dets, sal, _ in results)
    print(f"retinaface map peak inside a detected face in {hits} of {len(results)} carphone frames")
    assert hits >= 0.9 * len(results)


@pytest.mark.parametrize("layout", ["v8", "v5"])
def test_yolo_map_when_one_cell_scores_then_peak_there_in_source_pixels(tmp_path, layout):
    """A 320x240 frame letterboxed into 640x640 (scale 2, 80 rows of padding above): one stride-16 cell
    scores for class 1; the peak maps back to that cell's centre, and a map of class 0 alone stays cold."""
    cells = 80 * 80 + 40 * 40 + 20 * 20
    row, col = 15, 22  # stride 16: centre (22.5 * 16, 15.5 * 16) = (360, 248) input = (180, 84) source
    index = 80 * 80 + row * 40 + col
    if layout == "v8":
        pred = np.zeros((4 + 2, cells), np.float32)
        pred[4 + 1, index] = 0.9
    else:  # three anchors per cell, anchor-major: the second anchor of the cell
        pred = np.zeros((3 * cells, 5 + 2), np.float32)
        pred[3 * 80 * 80 + 40 * 40 + row * 40 + col, 4:] = (0.9, 0.1, 1.0)
    const_model(tmp_path / "m.onnx", (640, 640), pred)
    image = np.zeros((240, 320, 3), np.uint8)
    for labels, hot in (((), True), (("0",), False)):
        adapter = YoloAdapter((640, 640), ["0", "1"], AdapterParams())
        (_, sal, _), = run(adapter, tmp_path / "m.onnx", [image], labels=labels)
        if hot:
            assert abs(sal.peak[0] - 180) <= 4 and abs(sal.peak[1] - 84) <= 4, sal.peak
            assert sal.grid.max() > 0.8 and sal.grid[2, 4] == sal.grid.max()  # (180, 84) is in cell (2, 4)
        else:
            assert sal.grid.max() < 0.2


def test_yolo_map_when_end_to_end_export_then_says_why_there_is_none():
    adapter = YoloAdapter((640, 640), ["a"], AdapterParams(), metadata={"end2end": "True"})
    assert "end-to-end" in adapter.enable_saliency((), ["output0"], "m.onnx")


def test_heat_map_when_blended_then_hot_red_cold_blue_and_outside_the_box_untouched(mobilenet):
    path, adapter = mobilenet
    image = photo_bgr("chelsea")
    (_, sal, _), = run(adapter, path, [image])
    out = image.copy()
    blend(out, sal, 0.5)
    x, y = (int(v) for v in sal.peak)
    assert out[y, x, 2] > image[y, x, 2] - 10 and int(out[y, x, 2]) - int(out[y, x, 0]) > 60  # red at the peak
    assert np.array_equal(out[:, :80], image[:, :80])  # left of the centre crop: nothing drawn
    assert np.abs(out.astype(int) - image).mean() > 10


def test_saliency_labels_when_the_model_has_no_such_label_then_error_names_the_key():
    adapter = RetinaFaceAdapter((160, 192), ["face"], AdapterParams())
    with pytest.raises(ValueError, match="sinks.overlay.saliency_labels: no label 'person'"):
        adapter.enable_saliency(("person",), ["loc", "conf", "landmarks"], "m.onnx")


def test_classifier_when_exported_without_saliency_then_says_how_to_get_it(tmp_path):
    export_model(GapCNN(), (1, 3, 64, 64), tmp_path / "plain.onnx")
    adapter = ClassifierAdapter((64, 64), [], AdapterParams())
    assert "perceptd export --saliency" in adapter.enable_saliency((), ["output"], str(tmp_path / "plain.onnx"))


def test_saliency_benchmark_when_quick_then_every_model_and_size_timed(capsys, cache_dir):
    from benchmarks.saliency import main

    assert main(["--frames", "1", "--repeats", "2", "--warmup", "0", "--cache-dir", str(cache_dir)]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("640x360", "1280x720"))]
    assert len(rows) == 6 and all(float(v) > 0 for ln in rows for v in ln.split()[-6:])
