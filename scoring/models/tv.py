"""torchvision backbones as encoders, for GPU images where torchvision imports (CI's CPU torch has none)."""

from __future__ import annotations

from typing import Any

from torch import nn


def torchvision_encoder(model_name: str, **options: Any) -> nn.Module:
    """A torchvision classification model with its final layer replaced by identity; ``out_dim`` set."""
    try:
        import torchvision
    except Exception as exc:  # torchvision wheels fail to import against a mismatched torch
        raise ValueError(f"encoder 'torchvision:{model_name}' needs a working torchvision: {exc}") from exc
    model = torchvision.models.get_model(model_name, weights=None, **options)
    for attr in ("fc", "classifier", "head", "heads"):
        layer = getattr(model, attr, None)
        if layer is None:
            continue
        last = layer[-1] if isinstance(layer, nn.Sequential) else layer
        out_dim = last.in_features
        setattr(model, attr, nn.Identity())
        model.out_dim = out_dim
        return model
    raise ValueError(f"torchvision model {model_name!r} has no fc/classifier/head layer to replace")
