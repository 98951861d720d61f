"""Selectors that need no training: random, oracle (simulation only) and user-supplied posteriors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scoring.checks import check_probs
from scoring.selectors.base import Selector


class RandomSelector(Selector):
    """Uniform posteriors and the 'random' rule: the lower bound."""

    default_rule = "random"
    needs_data = False

    def fit(self, data: Any, label_counts: np.ndarray) -> "RandomSelector":
        self.n_tasks_, self.n_classes_ = np.asarray(label_counts).shape
        return self

    def predict_proba(self, data: Any) -> np.ndarray:
        """Uniform posteriors for ``data`` (any sized collection), or for the fitted tasks when None."""
        n = self.n_tasks_ if data is None else len(data)
        return np.full((n, self.n_classes_), 1.0 / self.n_classes_)

    def get_state(self) -> dict[str, Any]:
        return {"n_tasks": self.n_tasks_, "n_classes": self.n_classes_}

    def set_state(self, state: dict[str, Any]) -> None:
        self.n_tasks_, self.n_classes_ = state["n_tasks"], state["n_classes"]


class OracleSelector(Selector):
    """Knows each task's true label distribution; with the 'oracle' rule it is the upper bound.

    It may choose a task again when the majority formed on a wrong class.
    """

    default_rule = "oracle"
    allow_reselect = True
    needs_data = False

    def __init__(self, true_distribution: np.ndarray) -> None:
        self.true_distribution = check_probs(true_distribution, "true_distribution")

    def fit(self, data: Any, label_counts: np.ndarray) -> "OracleSelector":
        if np.asarray(label_counts).shape != self.true_distribution.shape:
            raise ValueError(
                f"label_counts shape {np.asarray(label_counts).shape} does not match "
                f"true_distribution shape {self.true_distribution.shape}"
            )
        self.n_classes_ = self.true_distribution.shape[1]
        return self

    def predict_proba(self, data: Any) -> np.ndarray:
        return self.true_distribution

    def get_state(self) -> dict[str, Any]:
        return {"n_classes": self.n_classes_}

    def set_state(self, state: dict[str, Any]) -> None:
        self.n_classes_ = state["n_classes"]


class PosteriorsSelector(Selector):
    """Reads the user's own (N, C) probabilities, ideally out-of-fold, from a .npy file or an array.

    Users with their own model need nothing else: export its posteriors, rank with any rule.
    """

    needs_data = False

    def __init__(self, posteriors: str | Path | np.ndarray | None = None) -> None:
        if posteriors is None:
            raise ValueError("the 'posteriors' selector needs a posteriors file (.npy of shape (N, C))")
        self.posteriors = posteriors

    def fit(self, data: Any, label_counts: np.ndarray) -> "PosteriorsSelector":
        probs = self.posteriors
        if isinstance(probs, (str, Path)):
            path = Path(probs)
            if not path.is_file():
                raise ValueError(f"posteriors file not found: {path}")
            probs = np.load(path)
        self.probs_ = check_probs(probs)
        counts_shape = np.asarray(label_counts).shape
        if self.probs_.shape != counts_shape:
            raise ValueError(f"posteriors have shape {self.probs_.shape} but label counts have shape {counts_shape}")
        return self

    def update(self, data: Any, label_counts: np.ndarray) -> "PosteriorsSelector":
        """Fixed posteriors: new labels change the counts, not the model."""
        return self

    def predict_proba(self, data: Any) -> np.ndarray:
        return self.probs_

    def get_state(self) -> dict[str, Any]:
        return {"probs": self.probs_}

    def set_state(self, state: dict[str, Any]) -> None:
        self.probs_ = state["probs"]

