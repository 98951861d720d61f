"""When is a task settled? A strict majority: more than one label and a top count above every other.

Pure numpy, no torch: connectors/ uses it too, so the simulation and the live queue settle alike.
"""

from __future__ import annotations

import numpy as np


def has_strict_majority(counts: np.ndarray) -> bool | np.ndarray:
    """For one row (C,) or many (N, C): sum > 1 and the top count exceeds every other count."""
    counts = np.asarray(counts)
    top2 = np.sort(counts, axis=-1)[..., -2:]
    return (counts.sum(axis=-1) > 1) & (top2[..., 1] > top2[..., 0])


def majority_label(counts: np.ndarray) -> int | None:
    """The unique most frequent class of one row, or None on a tie."""
    counts = np.asarray(counts)
    top = counts.max()
    winners = np.flatnonzero(counts == top)
    return int(winners[0]) if winners.size == 1 else None
