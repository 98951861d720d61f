"""Heads: the BYOL projector/predictor MLP and a classifier (encoder + optional dropout + linear)."""

from __future__ import annotations

import torch
from torch import nn

from scoring.augment import Normalise


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear: BYOL's projector and predictor."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class Classifier(nn.Module):
    """Normalise -> encoder -> dropout -> linear. ``dropout`` > 0 makes MC-dropout sampling possible."""

    def __init__(self, encoder: nn.Module, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.normalise = Normalise()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.out_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.encoder(self.normalise(x))))
