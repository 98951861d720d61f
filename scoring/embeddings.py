"""Frozen-encoder embeddings, cached on disk by image content and encoder version.

A refit after new labels then costs only the linear head: the images and the encoder did not change,
so neither do their embeddings.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scoring.augment import to_tensor
from scoring.device import autocast
from scoring.training import progress_bar


def images_hash(images: np.ndarray) -> str:
    """SHA-256 of the shape and bytes of a uint8 image array (order matters)."""
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(str(images.shape).encode() + str(images.dtype).encode())
    digest.update(memoryview(images).cast("B"))
    return digest.hexdigest()


@torch.no_grad()
def embed(encoder: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512,
          description: str = "embedding") -> np.ndarray:
    """Run ``encoder`` (in eval mode) over ``images`` in batches; float32 (N, D)."""
    encoder.eval()
    out = []
    with progress_bar(description, total=len(images)) as advance:
        for start in range(0, len(images), batch_size):
            batch = to_tensor(images[start:start + batch_size], device)
            with autocast(device):
                out.append(encoder(batch).float().cpu())
            advance(len(batch))
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


class EmbeddingCache:
    """``<cache_dir>/embeddings/<encoder_version>-<images_hash[:16]>.npy``; None cache_dir = memory only."""

    def __init__(self, cache_dir: str | Path | None) -> None:
        self.root = Path(cache_dir) / "embeddings" if cache_dir is not None else None
        self._memory: dict[str, np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def key(self, images: np.ndarray, encoder_version: str) -> str:
        return f"{encoder_version}-{images_hash(images)[:16]}"

    def get_or_compute(self, images: np.ndarray, encoder: nn.Module, encoder_version: str,
                       device: torch.device, batch_size: int = 512) -> np.ndarray:
        key = self.key(images, encoder_version)
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.root / f"{key}.npy" if self.root is not None else None
        if path is not None and path.is_file():
            self.hits += 1
            emb = np.load(path)
        else:
            self.misses += 1
            emb = embed(encoder, images, device, batch_size)
            if path is not None:
                _save_npy_atomic(path, emb)
        self._memory[key] = emb
        return emb


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
