"""PyTorch backend: a TorchScript file (.pt/.ts, torch.jit.save) or an exported program (.pt2,
torch.export.save), on CPU in fp32 or on CUDA in fp16 with channels-last memory.

Given an .onnx, it runs the TorchScript / exported program of the same name beside it, if any.
TorchScript carries no input shape, so it comes from the sidecar `perceptd export` writes next to the
model (`<file>.json`), else from EngineOptions.input_hw (the config's model.input_size); an exported
program records its own. Output shapes are measured with one dry run at load time.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from engines.base import Engine, EngineError, EngineOptions, TensorInfo, cpu_threads
from engines.zoo import TORCH_KIND_PROBLEMS, read_sidecar, torch_file_kind

log = logging.getLogger(__name__)

PROBE_HW = (224, 224)  # dry-run size when nothing says what the model takes


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, model_path: Path, options: EngineOptions):
        super().__init__(model_path, options)
        if options.precision == "int8":
            raise EngineError("precision int8 is TensorRT's; the torch backend runs fp16 on CUDA, fp32 on CPU")
        try:
            wanted = options.device
            if wanted == "auto":
                wanted = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = torch.device(wanted)
        except RuntimeError as exc:
            raise EngineError(f"device {options.device!r}: {exc}") from None
        if self._device.type == "cuda" and not torch.cuda.is_available():
            raise EngineError(f"device {options.device!r} asked, but this torch {torch.__version__} sees no CUDA GPU; "
                              "use device cpu")
        if self._device.type not in ("cpu", "cuda"):
            raise EngineError(f"device {options.device!r}: the torch backend runs on cpu or cuda")
        self._half = self._device.type == "cuda"
        if options.precision == "fp16" and not self._half:
            log.warning("torch backend on CPU runs fp32 (CPU fp16 convolutions are slower, not faster)")
        self.threads = cpu_threads(options.threads)
        torch.set_num_threads(self.threads)  # the worker is its own process: process-wide is fine
        if self._half:
            torch.backends.cudnn.benchmark = True  # the pipeline's input size is fixed: tune kernels once
        self.model_path = _runnable_path(self.model_path)
        meta = read_sidecar(self.model_path)
        module, program_shape = self._load()
        self._module = self._prepare(module)
        shape, self._outputs = self._probe(_input_shape(program_shape, meta, options.input_hw),
                                           list(meta.get("output_names") or []))
        self._inputs = [TensorInfo(str(meta.get("input_name") or "input"), shape, "float32")]
        log.info("torch %s: %s on %s %s%s", torch.__version__, self.model_path.name, self._device,
                 self.precision, " channels_last" if self._half else "")

    # loading -------------------------------------------------------------------------------------------
    def _load(self) -> tuple[torch.nn.Module, tuple | None]:
        path = self.model_path
        kind = torch_file_kind(path)
        if kind not in ("torchscript", "exported_program"):
            raise EngineError(f"{path}: {TORCH_KIND_PROBLEMS[kind]}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; still supported
                if kind == "exported_program":
                    with open(path, "rb") as f:  # a file object: torch.export.load refuses names not ending .pt2
                        program = torch.export.load(f)
                    shape = _program_input_shape(program)
                    if self._device.type != "cpu":
                        from torch.export.passes import move_to_device_pass

                        # Moves constants captured in the graph too, which module().to() would miss.
                        program = move_to_device_pass(program, self._device)
                    return program.module(), shape
                return torch.jit.load(str(path), map_location=self._device).eval(), None
        except Exception as exc:  # torch raises RuntimeError/ValueError/pickle errors for foreign files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise EngineError(f"torch cannot load {path} ({first})") from None

    def _prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self._half:
            return module.to(self._device)
        # fp16 halves memory traffic; channels-last lets cuDNN pick its tensor-core NHWC kernels.
        return module.to(device=self._device, dtype=torch.float16, memory_format=torch.channels_last)

    def _probe(self, shape: tuple, names: list[str]) -> tuple[tuple, list[TensorInfo]]:
        """One dry run: the output shapes (TorchScript declares none), and whether the batch axis is really
        free (a model traced with a hard-coded batch of 1 fails at 2). Returns the input shape, its batch
        fixed to 1 in that case, and the outputs."""
        hw = tuple(d if isinstance(d, int) else p for d, p in zip(shape[2:], PROBE_HW))
        outs = None
        if shape[0] is None and self.options.max_batch > 1:
            try:
                outs = self._run(np.zeros((2, 3, *hw), dtype=np.float32))
            except Exception:  # tried again at batch 1 below, where a real failure is reported
                pass
        if outs is None:
            try:
                outs = self._run(np.zeros((shape[0] or 1, 3, *hw), dtype=np.float32))
            except Exception as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
                raise EngineError(f"{self.model_path.name} does not run on a {[1, 3, *hw]} input ({first}); "
                                  "set model.input_size to the size it was trained for") from None
            if shape[0] is None and self.options.max_batch > 1:
                log.warning("%s runs at batch 1 but not 2; one frame per call", self.model_path.name)
                shape = (1, *shape[1:])
        if len(names) != len(outs):
            names = ["output" if i == 0 else f"output{i}" for i in range(len(outs))]
        return shape, [TensorInfo(n, (None, *o.shape[1:]), "float32") for n, o in zip(names, outs)]

    # running -------------------------------------------------------------------------------------------
    @property
    def precision(self) -> str:
        return "fp16" if self._half else "fp32"

    @property
    def device(self) -> str:
        return self._device.type

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            if self._half:
                x = x.to(self._device, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
            result = self._module(x)
            items = result.values() if isinstance(result, dict) else (
                result if isinstance(result, (tuple, list)) else (result,))
            # .cpu() waits for the GPU, so the worker's inference timing covers the whole computation.
            return [t.float().cpu().numpy() for t in items]

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._run(batch)

    def _close_impl(self) -> None:
        self._module = None
        if self._half:
            torch.cuda.empty_cache()


def _runnable_path(path: Path) -> Path:
    """An ONNX model runs here through the TorchScript or exported program written beside it under the same
    name (`backend: auto` may pick torch for a model resolved as ONNX; the zoo writes both for it)."""
    if torch_file_kind(path) != "onnx":
        return path
    for suffix in (".pt2", ".pt"):
        sibling = path.with_suffix(suffix)
        if torch_file_kind(sibling) in ("torchscript", "exported_program"):
            log.info("%s is ONNX; running %s, exported beside it", path.name, sibling.name)
            return sibling
    return path


def _input_shape(program_shape: tuple | None, meta: dict, input_hw) -> tuple:
    """(N, 3, H, W) with None for what is free: the program's own shape, else the sidecar's, else the
    configured size; the batch axis is free unless the program fixes it."""
    if program_shape is not None:
        return program_shape
    side = meta.get("input_shape")
    if isinstance(side, list) and len(side) == 4 and all(isinstance(d, int) for d in side[2:]):
        return (None, 3, int(side[2]), int(side[3]))
    if input_hw:
        return (None, 3, int(input_hw[0]), int(input_hw[1]))
    return (None, 3, None, None)


def _program_input_shape(program) -> tuple | None:
    """The user input's shape as recorded at export; symbolic (dynamic) dimensions become None."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            if val is None or len(val.shape) != 4:
                return None
            return tuple(int(d) if isinstance(d, int) else None for d in val.shape)
    return None
