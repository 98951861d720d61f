"""The selector interface: a posterior model behind fit / predict_proba / update.

A selector only estimates p(class | task); a priority rule (scoring.rules) turns those posteriors
and the label counts into the order of work. The two are chosen separately, by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Selector:
    """Base class in the spirit of scikit-learn estimators.

    Parameters go to ``__init__``; learned state gets a trailing underscore. Subclasses implement
    ``fit`` and ``predict_proba``; ``update`` (a cheap refit on new label counts) defaults to ``fit``.

    ``data`` is whatever the selector understands (for images: a uint8 array (N, H, W, 3));
    ``label_counts`` is an (N, C) array of counts per class for the same N tasks.

    Class attributes:
      default_rule: the priority rule used when none is named.
      allow_reselect: whether a task may be chosen again after its re-annotation (the oracle may).
      provides_samples: whether ``predict_proba_samples`` exists (needed by the 'bald' rule).
      needs_data: whether ``fit`` learns from the images/features (so callers load them only when needed).
    """

    default_rule: str = "alc"
    allow_reselect: bool = False
    provides_samples: bool = False
    needs_data: bool = True

    def fit(self, data: Any, label_counts: np.ndarray) -> "Selector":
        raise NotImplementedError

    def predict_proba(self, data: Any) -> np.ndarray:
        """(N, C) posteriors, rows summing to 1."""
        raise NotImplementedError

    def update(self, data: Any, label_counts: np.ndarray) -> "Selector":
        """Refit after new labels; learned selectors override this with something cheaper than fit."""
        return self.fit(data, label_counts)

    def predict_proba_samples(self, data: Any, n_samples: int) -> np.ndarray:
        """(S, N, C) Monte-Carlo posteriors; only for selectors with ``provides_samples``."""
        raise NotImplementedError(f"{type(self).__name__} does not provide Monte-Carlo samples")

    @property
    def version(self) -> str:
        """Identifies the fitted model (shown next to every priority). Learned selectors hash their weights."""
        return type(self).__name__
