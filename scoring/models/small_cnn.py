"""A small VGG-style CNN: fast enough to train on two CPU cores in minutes."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Stages of conv-BN-ReLU with 2x2 max-pool between them, then global average pooling.

    ``width`` is the channel count of the first stage; each later stage doubles it.
    """

    def __init__(self, width: int = 32, stages: int = 3, convs_per_stage: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for s in range(stages):
            c_out = width * 2**s
            for _ in range(convs_per_stage):
                layers.append(_block(c_in, c_out))
                c_in = c_out
            if s < stages - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)
