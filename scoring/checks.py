"""Input validation shared by the priority rules: clear ValueErrors instead of silent NaNs."""

from __future__ import annotations

from typing import Any

import numpy as np

PROB_TOLERANCE = 1e-3


def as_numpy(x: Any, name: str) -> np.ndarray:
    """Accept numpy arrays, lists and (cheaply) torch tensors."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be numeric, got an object array")
    return arr


def check_counts(counts: Any) -> np.ndarray:
    """Label counts (N, C): finite, non-negative, at least one label per row, C >= 2."""
    arr = as_numpy(counts, "label_counts").astype(float)
    if arr.ndim != 2:
        raise ValueError(f"label_counts must be 2-D (N, C), got shape {arr.shape}")
    if arr.shape[1] < 2:
        raise ValueError(f"label_counts needs at least 2 classes, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("label_counts contains NaN or infinite values")
    if np.any(arr < 0):
        raise ValueError("label_counts contains negative counts")
    empty = np.flatnonzero(arr.sum(axis=1) == 0)
    if empty.size:
        raise ValueError(f"label_counts has {empty.size} row(s) with no label at all (first: row {empty[0]})")
    return arr


def check_probs(probs: Any, name: str = "posteriors") -> np.ndarray:
    """Posteriors (N, C): finite, in [0, 1], rows summing to 1 within PROB_TOLERANCE, C >= 2."""
    arr = as_numpy(probs, name).astype(float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {arr.shape}")
    _check_prob_values(arr, name)
    return arr


def check_samples(samples: Any) -> np.ndarray:
    """Monte-Carlo posteriors (S, N, C), each sample a valid posterior."""
    arr = as_numpy(samples, "mc_samples").astype(float)
    if arr.ndim != 3:
        raise ValueError(f"mc_samples must be 3-D (S, N, C), got shape {arr.shape}")
    if arr.shape[0] < 1:
        raise ValueError("mc_samples needs at least one sample")
    _check_prob_values(arr, "mc_samples")
    return arr


def _check_prob_values(arr: np.ndarray, name: str) -> None:
    if arr.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got {arr.shape[-1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(arr < 0) or np.any(arr > 1 + PROB_TOLERANCE):
        raise ValueError(f"{name} has values outside [0, 1]")
    sums = arr.sum(axis=-1)
    bad = np.abs(sums - 1.0) > PROB_TOLERANCE
    if np.any(bad):
        worst = float(sums.flat[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(
            f"{name} rows must sum to 1 (tolerance {PROB_TOLERANCE}); {int(bad.sum())} do not (worst sum {worst:.4f})"
        )


def check_same_shape(counts: np.ndarray, probs: np.ndarray, name: str = "posteriors") -> None:
    if counts.shape != probs.shape:
        raise ValueError(f"label_counts has shape {counts.shape} but {name} has shape {probs.shape}")
