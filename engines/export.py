"""PyTorch model -> ONNX (opset 17, dynamic batch), and optionally TorchScript / an exported program, each
checked against eager torch on the same input before it is written.

`perceptd export` drives this for a user's MODULE:FACTORY; the zoo drives it for built-in models that ship
as weights (`cached_export`). Every file is written under a temporary name and moved into place only once
it has been checked, so a failed export never leaves a half-written or wrong model behind. Each written
model gets a JSON sidecar (`<file>.json`): input shape, output names, labels, opset, measured difference;
the torch backend reads the input shape from it (TorchScript carries none) and the zoo reads the labels.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engines.zoo import sidecar_path
from engines.errors import UserError

log = logging.getLogger(__name__)

OPSET = 17
DEFAULT_TOLERANCE = 1e-3  # fp32 ORT vs torch on ImageNet-sized logits differs by ~1e-5; 1e-3 flags real bugs
INPUT_NAME = "input"
VERIFY_BATCH = 2  # check at batch 2: proves the batch axis is really dynamic, not traced as a constant 1


class ExportError(UserError):
    """The model, its weights or the requested shape cannot be exported (the CLI exits 2)."""


@dataclass
class ExportReport:
    onnx_path: Path
    input_shape: tuple[int, int, int, int]
    output_shapes: list[tuple[int, ...]]
    tolerance: float
    diffs: dict[str, float] = field(default_factory=dict)  # "onnxruntime" / "torchscript" / "exported" -> max |a-b|
    written: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(d <= self.tolerance for d in self.diffs.values())


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    try:
        dims = tuple(int(v) for v in str(text).replace("x", ",").split(","))
    except ValueError:
        dims = ()
    if len(dims) != 4 or min(dims) < 1:
        raise ExportError(f"--input-shape: expected N,3,H,W with positive integers (e.g. 1,3,224,224), got {text!r}")
    if dims[1] != 3:
        raise ExportError(f"--input-shape: perceptd feeds 3-channel images, so the shape must be N,3,H,W; got {text!r}")
    return dims  # type: ignore[return-value]


def load_factory(spec: str) -> Callable[[], object]:
    """'pkg.module:make' or 'path/to/file.py:make' -> the callable (a function or a class)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ExportError(f"--model: expected MODULE:FACTORY (e.g. mypkg.nets:make or nets.py:make), got {spec!r}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ExportError(f"--model: file not found: {path}")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            # As `python -m` does: a module in the current directory is importable.
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(module_name)
    except ExportError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why, in one line
        raise ExportError(f"--model: cannot import {module_name!r} ({exc.__class__.__name__}: {exc})") from None
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ExportError(f"--model: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ExportError(f"--model: {spec} is not callable; give a function or class that builds the model")
    return target  # type: ignore[return-value]


def build_model(spec: str, weights: Path | None = None) -> torch.nn.Module:
    """Call the factory, load the weights (a state dict saved with torch.save), switch to eval mode."""
    factory = load_factory(spec)
    if weights is not None and not Path(weights).expanduser().is_file():
        raise ExportError(f"--weights: file not found: {weights}")
    try:
        model = factory()
    except Exception as exc:
        raise ExportError(f"--model: {spec}() raised {exc.__class__.__name__}: {exc}") from None
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"--model: {spec}() returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, Path(weights).expanduser(), spec)
    return model.eval()


def load_weights(model: torch.nn.Module, path: Path, spec: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(f"--weights: cannot read {path} as a state dict ({str(exc).splitlines()[0]}); save it "
                          "with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model_state_dict", "model"):  # common training-checkpoint layouts
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ExportError(f"--weights: {path} holds a {type(state).__name__}, not a state dict; save it with "
                          "torch.save(model.state_dict(), path)")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ExportError(f"--weights: {path} does not fit {spec}: missing keys {missing[:3]}"
                          f"{'...' if len(missing) > 3 else ''}, unexpected keys {unexpected[:3]}"
                          f"{'...' if len(unexpected) > 3 else ''}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches: the first offending tensor is enough to act on
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ExportError(f"--weights: {path} does not fit {spec}: {lines[0] if lines else exc}") from None


def _outputs(result) -> list[np.ndarray]:
    items = result if isinstance(result, (tuple, list)) else [result]
    return [t.detach().float().cpu().numpy() for t in items]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max(float(np.max(np.abs(x - y))) if x.size else 0.0 for x, y in zip(a, b))


def _atomic_tmp(target: Path) -> Path:
    """A fresh temporary name beside `target` (same filesystem, so os.replace is atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a model other users (a service account) cannot read
    return Path(tmp)


def _write_text_atomic(target: Path, text: str) -> None:
    tmp = _atomic_tmp(target)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, out: Path, output_names: list[str]) -> None:
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with warnings.catch_warnings():
        # dynamo=False on purpose: the TorchScript-based exporter needs no onnxscript and handles plain
        # CNNs; torch warns that it is the legacy path.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (example,), str(out), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=output_names, dynamic_axes=dynamic,
                          do_constant_folding=True)


def _run_onnx(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o, dtype=np.float32) for o in session.run(None, {INPUT_NAME: x})]


# Both archives are saved through memory: torch names an archive's root folder after the file, and the
# temporary name should not end up inside the model.
def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, out: Path) -> torch.nn.Module:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still the portable format
        torch.jit.save(torch.jit.trace(model, example), buf)
        out.write_bytes(buf.getvalue())
        return torch.jit.load(str(out), map_location="cpu")


def _write_exported_program(model: torch.nn.Module, example: torch.Tensor, out: Path) -> torch.nn.Module:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    out.write_bytes(buf.getvalue())
    with open(out, "rb") as f:  # torch.export.load wants a .pt2 name or a file object
        return torch.export.load(f).module()


def _exporting(what: str, fn, *args):
    """Run one exporter; what it cannot express is the user's model to change, said in one line."""
    try:
        return fn(*args)
    except OSError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ExportError(f"{what} failed: {first}") from None


def export_model(model: torch.nn.Module, input_shape, onnx_path: Path, *, torchscript: Path | None = None,
                 exported_program: Path | None = None, labels: list[str] | None = None,
                 tolerance: float = DEFAULT_TOLERANCE, source: str = "", seed: int = 0,
                 saliency: bool = False) -> ExportReport:
    """Export, compare every written format with eager torch on one random batch, and move the files into
    place only when every difference is within `tolerance` (see ExportReport.ok).

    `saliency`: a GAP + linear classifier gets its feature map as a second output and the linear layer in
    the ONNX metadata, for class activation maps (engines/export_saliency.py); "cam" in `diffs` is how far
    the written model's pooled map and stored weights are from its logits."""
    if exported_program is not None and Path(exported_program).suffix != ".pt2":
        raise ExportError(f"--exported-program: {exported_program} must end in .pt2 (torch.export.load needs it)")
    model = model.eval()
    n, c, h, w = (int(d) for d in input_shape)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(max(n, VERIFY_BATCH), c, h, w, generator=gen)
    cam_meta: dict[str, str] = {}
    cam_layer = ""
    if saliency:
        from engines.export_saliency import prepare

        model, cam_meta, cam_layer = prepare(model, x)
    with torch.inference_mode():
        try:
            expected = _outputs(model(x))
        except Exception as exc:
            raise ExportError(f"--input-shape: the model does not run on {list(x.shape)} "
                              f"({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    output_names = ["output"] if len(expected) == 1 else [f"output{i}" for i in range(len(expected))]
    if cam_meta:
        from engines.export_saliency import FEATURES_OUTPUT

        output_names = ["output", FEATURES_OUTPUT]
    if labels:
        first = expected[0]
        nc = first.shape[1] if first.ndim >= 2 else 0
        if nc != len(labels):
            raise ExportError(f"--labels: {len(labels)} labels but the model's first output has {nc} classes "
                              f"(shape {list(first.shape)})")
    report = ExportReport(Path(onnx_path), (n, c, h, w), [tuple(e.shape[1:]) for e in expected], tolerance)
    example = x[:n].contiguous()
    staged: list[tuple[Path, Path, str]] = []  # (tmp, final, format)
    try:
        t0 = time.perf_counter()
        tmp = _atomic_tmp(report.onnx_path)
        staged.append((tmp, report.onnx_path, "onnx"))
        _exporting(f"torch.onnx.export (opset {OPSET})", _write_onnx, model, example, tmp, output_names)
        if cam_meta:
            from engines.export_saliency import check_onnx_cam
            from engines.onnxmeta import append_metadata

            append_metadata(tmp, cam_meta)
        onnx_out = _run_onnx(tmp, x.numpy())
        report.diffs["onnxruntime"] = _max_diff(expected, onnx_out)
        if cam_meta:
            report.diffs["cam"] = check_onnx_cam(onnx_out, cam_meta)
        # The exported program is traced at batch >= 2: torch.export specialises a batch of 1 into a constant.
        for fmt, target, step, write, traced_on in (
                ("torchscript", torchscript, "torch.jit.trace", _write_torchscript, example),
                ("exported_program", exported_program, "torch.export", _write_exported_program, x)):
            if target is None:
                continue
            tmp = _atomic_tmp(Path(target))
            staged.append((tmp, Path(target), fmt))
            loaded = _exporting(step, write, model, traced_on, tmp)
            with torch.inference_mode():
                report.diffs[fmt] = _max_diff(expected, _outputs(loaded(x)))
        log.info("exported %s in %.1f s; max abs diff %s", source or type(model).__name__,
                 time.perf_counter() - t0, ", ".join(f"{k} {v:.3g}" for k, v in report.diffs.items()))
        if not report.ok:
            return report
        meta = {"source": source, "input_name": INPUT_NAME, "input_shape": [None, c, h, w],
                "output_names": output_names, "output_shapes": [[None, *s] for s in report.output_shapes],
                "labels": list(labels or []), "opset": OPSET, "torch_version": torch.__version__,
                "max_abs_diff": report.diffs, "tolerance": tolerance}
        if cam_meta:
            meta["saliency"] = {"kind": "cam", "layer": cam_layer, "output": output_names[1]}
        for tmp, final, fmt in staged:
            _write_text_atomic(sidecar_path(final), json.dumps({**meta, "format": fmt}, indent=1) + "\n")
            os.replace(tmp, final)
            report.written.append(final)
        return report
    finally:
        for tmp, _, _ in staged:
            tmp.unlink(missing_ok=True)
