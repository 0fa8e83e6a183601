"""Per-modality encoders: MLP for vectors, small CNNs for images and time series.

No batch norm: it keeps running statistics that FedAvg cannot average meaningfully and that
break functional (vmap) training over clients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmfl.data.dataset import ModalitySpec


class MLPEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ImageEncoder(nn.Module):
    """Two conv blocks with pooling, then a linear map of the flattened feature map.

    Flattening (rather than global pooling) keeps where strokes are, which is most of what
    distinguishes small images such as the 16x15 mfeat digits.
    """

    def __init__(self, shape: tuple[int, ...], out_dim: int, width: int = 16):
        super().__init__()
        channels, height, width_px = shape
        pooled = (height // 2 // 2) * (width_px // 2 // 2)
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * max(pooled, 1), out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SeriesEncoder(nn.Module):
    """1-D convolutions over time for (channels, steps) sensor windows."""

    def __init__(self, channels: int, out_dim: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, width, 5, padding=2), nn.ReLU(),
            nn.Conv1d(width, width, 5, padding=2), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(width, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_encoder(spec: ModalitySpec, hidden: int, out_dim: int, dropout: float = 0.0) -> nn.Module:
    if spec.kind == "image" and len(spec.shape) == 3:
        return ImageEncoder(spec.shape, out_dim)
    if spec.kind == "series" and len(spec.shape) == 2:
        return SeriesEncoder(spec.shape[0], out_dim)
    return MLPEncoder(math.prod(spec.shape), hidden, out_dim, dropout)
