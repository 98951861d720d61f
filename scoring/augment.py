"""Batch augmentations with kornia, applied on the training device to whole batches.

``byol_views`` is the BYOL recipe scaled to 32x32 images (random resized crop, flip, colour
jitter, grayscale, blur, solarise; the two views differ in blur and solarise probabilities);
``classifier_augment`` is the light crop-and-flip used when training classifiers on labels.
Images enter as uint8 (N, H, W, 3) numpy arrays and leave as float (N, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from kornia import augmentation as K
from torch import nn

# CIFAR-10 channel statistics; close enough for any natural-image set, and only a fixed rescaling.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def to_tensor(images: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], channels_last, on ``device``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    batch = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)


class Normalise(nn.Module):
    """Per-channel standardisation as the first layer, so augmentations work on [0, 1] images."""

    def __init__(self, mean: tuple[float, ...] = MEAN, std: tuple[float, ...] = STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def byol_view(size: int, blur_p: float, solarize_p: float, min_scale: float = 0.2) -> nn.Module:
    """One BYOL view (Grill et al. 2020, Table 6), with the crop scale and blur kernel sized for small images."""
    kernel = max(3, (size // 10) | 1)  # about 10% of the side, odd
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=(min_scale, 1.0)),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
        K.RandomGaussianBlur((kernel, kernel), (0.1, 2.0), p=blur_p),
        K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p),
    )


def byol_views(size: int = 32) -> tuple[nn.Module, nn.Module]:
    """The asymmetric pair of BYOL views: (blur 1.0, solarise 0.0) and (blur 0.1, solarise 0.2)."""
    return byol_view(size, blur_p=1.0, solarize_p=0.0), byol_view(size, blur_p=0.1, solarize_p=0.2)


def classifier_augment(size: int = 32) -> nn.Module:
    """Light augmentation for supervised training on noisy labels: padded random crop and flip."""
    return K.AugmentationSequential(
        K.RandomCrop((size, size), padding=size // 8, padding_mode="reflect"),
        K.RandomHorizontalFlip(),
    )
