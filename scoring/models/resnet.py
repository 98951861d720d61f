"""CIFAR-style ResNet (He et al. 2016): a 3x3 stem and no max-pool, so 32x32 inputs keep detail.

``depth`` is one of 8, 10, 14, 18, 34 (basic blocks per stage in STAGE_BLOCKS).
"""

from __future__ import annotations

import torch
from torch import nn

STAGE_BLOCKS = {8: [1, 1, 1], 10: [1, 1, 1, 1], 14: [2, 2, 2], 18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet for small images. ``depth`` in STAGE_BLOCKS; ``width`` = channels of the first stage (doubling per stage)."""

    def __init__(self, depth: int = 18, width: int = 64) -> None:
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"resnet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        c_in = width
        for stage, n_blocks in enumerate(STAGE_BLOCKS[depth]):
            c_out = width * 2**stage
            for b in range(n_blocks):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and b == 0 else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)
