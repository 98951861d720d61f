"""A model-based count of wrong labels, for where nothing but a model has looked at the data yet.

`alc rank` has no re-annotation to ground an estimate in (the live loop does: `scoring.estimate`), so its
report says how many labels *the model* finds suspect, by confident learning on out-of-fold posteriors, and
says that it is only as good as the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def model_noise_estimate(labels: np.ndarray, probs: np.ndarray, *, rounds: int = 200, seed: int = 0) -> dict[str, Any]:
    """How many of ``labels`` (N,) look wrong to out-of-fold ``probs`` (N, C): cleanlab's confident learning,
    with a 90% bootstrap interval over the items (which covers the resampling, not the model's own errors)."""
    from cleanlab.count import num_label_issues

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    n = len(labels)
    count = int(num_label_issues(labels, probs))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        rows = rng.integers(0, n, n)
        if len(np.unique(labels[rows])) == probs.shape[1]:  # cleanlab needs every class present
            draws.append(num_label_issues(labels[rows], probs[rows]))
    low, high = (np.percentile(draws, [5, 95]) if draws else (count, count))
    return {"tasks": n, "wrong": count, "wrong_low": int(np.floor(low)), "wrong_high": int(np.ceil(high)),
            "method": "confident learning (cleanlab num_label_issues) on out-of-fold probabilities; "
                      "90% interval from resampling the items"}
