"""ONNX fp32 -> mixed fp16 with fp32 inputs and outputs, for TensorRT 11's strongly typed builds.

TensorRT 11 removed the builder's FP16 flag: a network runs in the types its graph says. So fp16 means
converting the graph before the build. The inputs and outputs stay fp32 (Cast nodes at the edges), so the
worker's batches, the adapters and the ONNX Runtime comparison are unchanged by precision.

NVIDIA's own converter is ModelOpt's AutoCast; it is used when installed. Otherwise ONNX Runtime's
float16 converter (onnxruntime.transformers.float16, shipped with onnxruntime) does the job.
"""

from __future__ import annotations

import logging
from pathlib import Path

from engines.errors import UserError

log = logging.getLogger(__name__)

# Ops kept in fp32, on top of ONNX Runtime's default block list (ML ops, NMS, TopK, Range, RoiAlign,
# Upsample...). None needed so far: RetinaFace converted with the default list stays within 0.03 of fp32
# (max |diff| / max(1, max |fp32|); the astronaut's face box moves 0.03 px; tests/test_fp16.py). Keeping
# Softmax or Resize in fp32 was measured not to help; keeping the first convolutions in fp32 lowers the
# error ~3x but gives up fp16 where the activations are largest, for no visible change in detections. An
# op goes here when a model we ship is measured to drift, not on suspicion.
EXTRA_FP32_OPS: tuple[str, ...] = ()


def convert_to_mixed_fp16(model_path: Path) -> tuple[bytes, str]:
    """Serialized mixed-fp16 ONNX (fp32 I/O) and the name of the converter that made it."""
    try:
        import onnx
    except ImportError as exc:
        raise UserError(f"fp16 with TensorRT 11 converts the ONNX graph first and needs the onnx package "
                        f"({exc}); pip install onnx") from None
    converted = _with_modelopt(Path(model_path))
    if converted is not None:
        return converted.SerializeToString(), "modelopt-autocast"
    return _with_onnxruntime(onnx.load(str(model_path))).SerializeToString(), "onnxruntime-float16"


def _with_onnxruntime(proto):
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(proto, keep_io_types=True,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(EXTRA_FP32_OPS))


def _with_modelopt(model_path: Path):
    """ModelOpt's AutoCast when it is installed (the vendor's way); None to fall back."""
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        return None
    try:
        return convert_to_mixed_precision(onnx_path=str(model_path), low_precision_type="fp16",
                                          keep_io_types=True)
    except Exception as exc:  # its API moves between releases; the fallback is always there
        log.warning("ModelOpt AutoCast failed (%s: %s); using ONNX Runtime's float16 converter instead",
                    exc.__class__.__name__, exc)
        return None

