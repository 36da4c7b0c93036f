"""A user's own small CNN, as people write them in PyTorch for driving or inspection images: conv, conv, pool,
fc, fc, two classes, trained on pixel/255 at 64x64. `perceptd export --model tests.user_cnn:make` imports it.

Also the images it learns (horizontal vs vertical stripes) and a deliberately non-exportable variant.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SIZE = 64
LABELS = ("horizontal", "vertical")


class UserCNN(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc1 = nn.Linear(16 * (SIZE // 4) ** 2, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


def make() -> UserCNN:
    return UserCNN()


class NoisyCNN(UserCNN):
    """Noise injection left on at inference: exports fine, but ONNX Runtime draws other random numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + torch.rand_like(x))


def make_noisy() -> NoisyCNN:
    return NoisyCNN()


def not_a_model() -> str:
    return "a string"


def stripes(label: int, rng: np.random.Generator) -> np.ndarray:
    """A SIZE x SIZE BGR uint8 image of stripes (0: horizontal, 1: vertical), random period, phase, colours."""
    period = int(rng.integers(6, 16))
    phase = int(rng.integers(0, period))
    on = (np.arange(SIZE) + phase) % period < period // 2
    mask = np.repeat(on[:, None], SIZE, axis=1) if label == 0 else np.repeat(on[None, :], SIZE, axis=0)
    fg, bg = rng.integers(150, 256, 3), rng.integers(0, 100, 3)
    image = np.where(mask[..., None], fg, bg).astype(np.float32) + rng.normal(0, 8, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def to_tensor(images_bgr: list[np.ndarray]) -> torch.Tensor:
    """The preprocessing the model is trained with: BGR -> RGB, pixel / 255, NCHW."""
    rgb = np.stack([im[..., ::-1] for im in images_bgr]).astype(np.float32) / 255.0
    return torch.from_numpy(rgb.transpose(0, 3, 1, 2).copy())


def train(steps: int = 30, batch: int = 32, seed: int = 0) -> UserCNN:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        labels = rng.integers(0, 2, batch)
        x = to_tensor([stripes(int(k), rng) for k in labels])
        loss = F.cross_entropy(model(x), torch.from_numpy(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
