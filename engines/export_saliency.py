"""`perceptd export --saliency`: a classifier that ends in global average pooling and a linear layer, exported
with its last feature map as a second output ("features") and the linear layer in the ONNX file's metadata,
so that the worker computes exact class activation maps from each frame's outputs (engines/saliency.py).

The layers are found by running the model once with hooks: the linear layer is the last nn.Linear to run, and
it must produce the model's output; the feature map is the last 4-D output of any module with as many
channels as that layer has inputs. The pair is accepted only if pooling the map and applying the layer
reproduces the logits, which is what makes the map exact.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from engines.errors import UserError
from engines.saliency import CamWeights

log = logging.getLogger(__name__)

FEATURES_OUTPUT = "features"
_REL_TOL = 1e-3  # pooled features through the layer vs the logits, relative to the largest logit


class SaliencyExportError(UserError):
    """The model is not one whose class activation map is exact (the CLI exits 2)."""


class WithFeatures(nn.Module):
    """The model, returning (its output, the feature map `layer` produced on the way)."""

    def __init__(self, model: nn.Module, layer: nn.Module):
        super().__init__()
        self.model = model
        self._seen: list[torch.Tensor] = []
        layer.register_forward_hook(lambda _m, _i, out: self._seen.append(out))

    def forward(self, x: torch.Tensor):
        self._seen.clear()
        out = self.model(x)
        return out, self._seen[-1]


def find_layers(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module, nn.Linear]:
    """(name, module) of the pooled feature map and the final linear layer, by one hooked run."""
    ran: list[tuple[str, nn.Module, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, _i, out, name=name: ran.append((name, m, out)))
             for name, m in model.named_modules() if name]
    try:
        with torch.inference_mode():
            logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise SaliencyExportError("--saliency: the model must return one [batch, classes] tensor of logits")
    linears = [(n, m, o) for n, m, o in ran if isinstance(m, nn.Linear)]
    if not linears or not torch.equal(linears[-1][2], logits):
        raise SaliencyExportError("--saliency: the model's output does not come straight from an nn.Linear "
                                  "layer; class activation maps need a network ending in global average pooling "
                                  "and a linear layer (MobileNet, ResNet, EfficientNet...)")
    linear = linears[-1][1]
    maps = [(n, m) for n, m, o in ran if isinstance(o, torch.Tensor) and o.ndim == 4
            and o.shape[1] == linear.in_features and o.shape[2] * o.shape[3] > 1]
    if not maps:
        raise SaliencyExportError(f"--saliency: no layer outputs a [batch, {linear.in_features}, H, W] feature "
                                  "map for the final linear layer to pool: class activation maps need a "
                                  "network ending in global average pooling and a linear layer")
    name, layer = maps[-1]
    return name, layer, linear


def prepare(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, dict[str, str], str]:
    """The model to export (with the features output), the metadata to write, and the layer's name.
    SaliencyExportError when the map would not be exact."""
    name, layer, linear = find_layers(model, x)
    wrapped = WithFeatures(model, layer).eval()
    with torch.inference_mode():
        logits, features = wrapped(x)
        weight = linear.weight.detach().float()
        bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(weight.shape[0])
        pooled = features.float().mean(dim=(2, 3)) @ weight.T + bias
    err = float((pooled - logits).abs().max())
    if err > _REL_TOL * max(1.0, float(logits.abs().max())):
        raise SaliencyExportError(f"--saliency: averaging {name}'s output and applying the final linear layer "
                                  f"does not give the logits (max difference {err:.3g}): something other than "
                                  "global average pooling sits between them, so its class activation map "
                                  "would not be exact")
    log.info("saliency: feature map from %s %s, linear layer %d -> %d", name, list(features.shape[1:]),
             linear.in_features, linear.out_features)
    return wrapped, CamWeights.encode(weight.numpy(), bias.numpy(), FEATURES_OUTPUT), name


def check_onnx_cam(outputs: list[np.ndarray], entries: dict[str, str]) -> float:
    """Largest |mean(map) + bias - logit| over the batch and classes, from the ONNX outputs and the stored
    weights: the written model's maps are as exact as the export claims."""
    cam = CamWeights.from_metadata(entries)
    logits, features = outputs[0], outputs[1]
    pooled = features.mean(axis=(2, 3)) @ cam.weight.T + cam.bias
    return float(np.max(np.abs(pooled - logits)))
