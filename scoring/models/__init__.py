"""Encoders (image -> feature vector) by name, and the small heads put on top of them.

Names: ``small-cnn`` (fast on CPU), ``resnet`` (CIFAR-style, ``depth`` and ``width`` parameters),
``resnet18`` (= resnet depth 18, width 64), and ``torchvision:<model>`` where torchvision imports
(never on the CPU torch that CI uses). Every encoder exposes ``out_dim``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from scoring.models.heads import Classifier, MLP
from scoring.models.resnet import CifarResNet
from scoring.models.small_cnn import SmallCNN


def build_encoder(name: str = "small-cnn", **options: Any) -> nn.Module:
    """Encoder by name; ``options`` are its constructor's keyword arguments (e.g. depth, width)."""
    if name == "small-cnn":
        return SmallCNN(**options)
    if name == "resnet":
        return CifarResNet(**options)
    if name == "resnet18":
        return CifarResNet(**{"depth": 18, "width": 64, **options})
    if name.startswith("torchvision:"):
        from scoring.models.tv import torchvision_encoder

        return torchvision_encoder(name.partition(":")[2], **options)
    raise ValueError(f"unknown encoder {name!r}; known: small-cnn, resnet, resnet18, torchvision:<model>")


__all__ = ["build_encoder", "Classifier", "MLP", "CifarResNet", "SmallCNN"]
