"""``bald``: the vanilla CNN with dropout before its last layer, sampled S times (MC dropout).

Its default rule is 'bald' (mutual information between the samples); ``predict_proba`` is the
deterministic network (dropout off), so other rules can use it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scoring.device import seed_everything
from scoring.selectors.learned import softmax_probs
from scoring.selectors.vanilla import VanillaSelector
from scoring.training import predict_logits


class BaldSelector(VanillaSelector):
    """MC-dropout CNN. Samples for the fitted images are out-of-fold when ``folds >= 2``."""

    default_rule = "bald"
    provides_samples = True

    def __init__(self, n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, folds: int = 0, targets: str = "soft",
                 encoder: str = "small-cnn", encoder_options: dict[str, Any] | None = None,
                 epochs: int = 15, update_epochs: int = 3, lr: float = 0.05, batch_size: int = 128,
                 augment: bool = True, dropout: float = 0.5) -> None:
        if not 0.0 < dropout < 1.0:
            raise ValueError(f"bald needs a dropout probability in (0, 1), got {dropout}")
        super().__init__(n_classes, seed, device, cache_dir, folds, targets, encoder, encoder_options,
                         epochs, update_epochs, lr, batch_size, augment, dropout)

    def predict_proba_samples(self, images: np.ndarray, n_samples: int) -> np.ndarray:
        """(S, N, C) for ``images`` as new tasks: S forward passes with dropout on, averaged over the members;
        seeded, so repeated calls agree."""
        return self._samples(images, n_samples, out_of_fold=False)

    def oof_proba_samples(self, images: np.ndarray, n_samples: int) -> np.ndarray:
        """(S, N, C) for the fitted images: each task sampled only by the member that did not see its label."""
        self._check_fitted()
        self._check_is_fitted_data(images)
        return self._samples(images, n_samples, out_of_fold=bool(self.folds))

    def _samples(self, images: np.ndarray, n_samples: int, *, out_of_fold: bool) -> np.ndarray:
        self._check_fitted()
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        seed_everything(self.seed)
        out = np.zeros((n_samples, len(images), self.n_classes_))
        if out_of_fold:  # each task sampled only by the member that did not see its label
            parts = [(m, held_out) for m, (_, held_out) in zip(self.members_, self.splits_)]
        else:  # new images: every member samples them, and the samples are averaged over members
            parts = [(m, np.arange(len(images))) for m in self.members_]
        weight = 1.0 if out_of_fold else 1.0 / len(parts)
        for member, index in parts:
            for s in range(n_samples):
                out[s, index] += weight * softmax_probs(predict_logits(member, images[index], self.device_, mc_dropout=True))
        return out
