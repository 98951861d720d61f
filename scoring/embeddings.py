"""Frozen-encoder embeddings, cached on disk per item (an image, a text), by its content and the encoder version.

A refit after new labels then costs only the linear head: the images and the encoder did not change,
so neither do their embeddings; a new task costs its own image's embedding and nothing more.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from scoring.augment import to_tensor
from scoring.device import autocast
from scoring.hashing import image_hashes
from scoring.training import progress_bar


@torch.no_grad()
def embed(encoder: Callable[[torch.Tensor], torch.Tensor], images: np.ndarray, device: torch.device,
          batch_size: int = 256, description: str = "embedding",
          on_batch: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Run ``encoder`` (a module is put in eval mode) over uint8 ``images`` in batches; float32 (N, D).

    ``on_batch(start, vectors)`` sees each batch's embeddings as soon as they exist.
    """
    if isinstance(encoder, nn.Module):
        encoder.eval()
    out = []
    with progress_bar(description, total=len(images)) as advance:
        for start in range(0, len(images), batch_size):
            batch = to_tensor(images[start:start + batch_size], device)
            with autocast(device):
                out.append(encoder(batch).float().cpu())
            if on_batch is not None:
                on_batch(start, out[-1].numpy())
            advance(len(batch))
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


class EmbeddingCache:
    """One embedding per image: ``<cache_dir>/embeddings/<encoder key>/<hash[:2]>/<hash>.npy``.

    The key of an image is the content hash of its pixels plus the encoder's key (its weights' id
    and input size), so a new task or a new label costs one image's embedding at most, never the
    project's. Files are written atomically (temporary file + rename): two processes embedding the
    same image write the same bytes, and a reader never sees half a file. None cache_dir = memory only.
    ``hits`` and ``misses`` count images.
    """

    def __init__(self, cache_dir: str | Path | None) -> None:
        self.root = Path(cache_dir) / "embeddings" if cache_dir is not None else None
        self._memory: dict[tuple[str, str], np.ndarray] = {}
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, images: np.ndarray, encoder: Callable[[torch.Tensor], torch.Tensor], encoder_key: str,
                       device: torch.device, batch_size: int = 256) -> np.ndarray:
        """(N, D) float32 embeddings of ``images`` (uint8 (N, H, W, 3)); only the images never seen are encoded."""

        def compute(rows: list[int], keep: Callable[[int, np.ndarray], None]) -> None:
            embed(encoder, images[rows], device, batch_size, description=f"embedding {len(rows)} images ({encoder_key})",
                  on_batch=keep)

        return self.get_or_compute_keyed(image_hashes(images), compute, encoder_key)

    def get_or_compute_keyed(self, hashes: list[str], compute: Callable[[list[int], Callable[[int, np.ndarray], None]], None],
                             encoder_key: str) -> np.ndarray:
        """(N, D) float32 vectors of N items known by their content ``hashes`` (images, texts, ...).

        ``compute(rows, keep)`` embeds the items at ``rows`` (one per content never seen) and calls
        ``keep(start, vectors)`` for each batch, so a stop loses one batch at most.
        """
        found: dict[int, np.ndarray] = {}
        for i, h in enumerate(hashes):
            vector = self._memory.get((encoder_key, h))
            if vector is None and self.root is not None:
                path = self._path(encoder_key, h)
                if path.is_file():
                    vector = np.load(path, allow_pickle=False)
                    self._memory[(encoder_key, h)] = vector
            if vector is not None:
                found[i] = vector
        missing = [i for i in range(len(hashes)) if i not in found]
        unique = list(dict.fromkeys(hashes[i] for i in missing))  # the same content twice is embedded once
        if unique:
            first = {h: i for i, h in reversed(list(enumerate(hashes)))}

            def keep(start: int, vectors: np.ndarray) -> None:
                for h, vector in zip(unique[start:start + len(vectors)], vectors):
                    self._memory[(encoder_key, h)] = vector
                    if self.root is not None:
                        _save_npy_atomic(self._path(encoder_key, h), vector)

            compute([first[h] for h in unique], keep)
        self.hits += len(hashes) - len(missing)
        self.misses += len(unique)
        if not hashes:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self._memory[(encoder_key, h)] for h in hashes]).astype(np.float32, copy=False)

    def _path(self, encoder_key: str, image_hash: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder_key)
        return self.root / safe / image_hash[:2] / f"{image_hash}.npy"


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
