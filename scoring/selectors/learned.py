"""Shared machinery of the learned selectors: out-of-fold cross-fitting, versions, saved state.

A subclass trains *members* (one per fold, or one on everything) through four hooks:
``_inputs`` (images -> what members eat: images, or cached embeddings), ``_train_member``,
``_refit_member`` (the cheap update) and ``_member_probs``; plus ``_member_state`` /
``_load_member_state`` for :meth:`Selector.save` / :meth:`Selector.load`. With ``folds >= 2`` every task's posterior comes from a
member that never saw its label (a model must not grade labels it memorised); without, one
member is trained on all tasks and grades them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from scoring.checkpoints import make_version, state_hash
from scoring.checks import check_counts
from scoring.device import resolve_device, seed_everything
from scoring.hashing import images_hash
from scoring.selectors.base import Selector
from scoring.training import count_targets


class LearnedSelector(Selector):
    """Base of vanilla, co-teaching, ssl-linear and bald. See the module docstring for the hooks."""

    def __init__(self, n_classes: int | None = None, seed: int = 0, device: str | None = None,
                 cache_dir: str | Path | None = None, folds: int = 0, targets: str = "soft") -> None:
        if folds == 1 or folds < 0:
            raise ValueError(f"folds must be 0 (no cross-fitting) or >= 2, got {folds}")
        self.n_classes = n_classes
        self.seed = int(seed)
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.folds = int(folds)
        self.targets = targets

    # ----- hooks for subclasses -------------------------------------------------------------
    def _inputs(self, images: np.ndarray) -> Any:
        return images

    def _train_member(self, inputs: Any, targets: np.ndarray, seed: int) -> Any:
        raise NotImplementedError

    def _refit_member(self, member: Any, inputs: Any, targets: np.ndarray, seed: int) -> Any:
        return self._train_member(inputs, targets, seed)

    def _member_probs(self, member: Any, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    def _member_state(self, member: Any) -> dict[str, Any]:
        raise NotImplementedError

    def _load_member_state(self, state: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _extra_state(self) -> dict[str, Any]:
        """State shared by all members (e.g. a pre-trained encoder), saved with the checkpoint."""
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        return None

    # ----- the Selector interface -----------------------------------------------------------
    @property
    def device_(self) -> torch.device:
        return resolve_device(self.device)

    def fit(self, images: np.ndarray, label_counts: np.ndarray) -> "LearnedSelector":
        counts = self._check(images, label_counts)
        self.fit_seconds_ = 0.0
        start = time.perf_counter()
        inputs = self._inputs(images)
        targets = count_targets(counts, self.targets)
        self.splits_ = self._splits(counts)
        self.members_ = []
        for f, (train, _) in enumerate(self.splits_):
            seed_everything(self.seed + 1009 * f)
            self.members_.append(self._train_member(_take(inputs, train), targets[train], self.seed + 1009 * f))
        self._after_training(images, inputs, start)
        return self

    def update(self, images: np.ndarray, label_counts: np.ndarray) -> "LearnedSelector":
        """Cheap refit on new counts for the same images; a full fit if the images changed."""
        if not hasattr(self, "members_") or images_hash(images) != self.images_hash_:  # a cache key: no data changed
            return self.fit(images, label_counts)
        counts = self._check(images, label_counts)
        start = time.perf_counter()
        inputs = self._inputs(images)
        targets = count_targets(counts, self.targets)
        self.updates_ = getattr(self, "updates_", 0) + 1
        for f, (train, _) in enumerate(self.splits_):
            seed = self.seed + 1009 * f + 7919 * self.updates_
            seed_everything(seed)
            self.members_[f] = self._refit_member(self.members_[f], _take(inputs, train), targets[train], seed)
        self._after_training(images, inputs, start)
        return self

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """The members' average for ``images`` as new tasks, whatever they are (see :meth:`oof_proba`)."""
        self._check_fitted()
        inputs = self._inputs(images)
        return np.mean([self._member_probs(m, inputs) for m in self.members_], axis=0)

    def oof_proba(self, images: np.ndarray) -> np.ndarray:
        """(N, C) out-of-fold posteriors of the fitted tasks (with folds >= 2; else the one member's, in-sample)."""
        self._check_fitted()
        self._check_is_fitted_data(images)
        return self.oof_probs_.copy()

    def _check_is_fitted_data(self, data: Any) -> None:
        if len(data) != len(self.oof_probs_):
            raise ValueError(f"oof_proba is for the {len(self.oof_probs_)} fitted tasks, got {len(data)}: "
                             "use predict_proba for other data")

    @property
    def version(self) -> str:
        return getattr(self, "version_", f"{type(self).__name__}-unfitted")

    # ----- persistence (Selector.save / Selector.load) ------------------------------------
    def get_state(self) -> dict[str, Any]:
        self._check_fitted()
        return {
            "members": [self._member_state(m) for m in self.members_],
            "extra": self._extra_state(),
            "splits": [[tr, te] for tr, te in self.splits_],
            "oof_probs": self.oof_probs_,
            "images_hash": self.images_hash_,
            "version": self.version_,
            "updates": getattr(self, "updates_", 0),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._load_extra_state(state["extra"])
        self.members_ = [self._load_member_state(s) for s in state["members"]]
        self.splits_ = [(np.asarray(tr), np.asarray(te)) for tr, te in state["splits"]]
        self.oof_probs_ = np.asarray(state["oof_probs"])
        self.images_hash_ = state["images_hash"]
        self.version_ = state["version"]
        self.updates_ = int(state.get("updates", 0))

    # ----- internals ------------------------------------------------------------------------
    def _check(self, images: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return self._check_counts(len(images), "images", label_counts)

    def _check_counts(self, n_inputs: int, what: str, label_counts: np.ndarray) -> np.ndarray:
        """Counts valid, one row per input, the classes expected, enough tasks for the folds."""
        counts = check_counts(label_counts)
        if n_inputs != len(counts):
            raise ValueError(f"{n_inputs} {what} but {len(counts)} rows of label counts")
        if self.n_classes is not None and counts.shape[1] != self.n_classes:
            raise ValueError(f"label counts have {counts.shape[1]} classes, selector expects {self.n_classes}")
        if self.folds and len(counts) < 2 * self.folds:
            raise ValueError(f"{len(counts)} tasks are too few for {self.folds}-fold cross-fitting")
        self.n_classes_ = counts.shape[1]
        return counts

    def _splits(self, counts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        n = len(counts)
        if not self.folds:
            everything = np.arange(n)
            return [(everything, everything)]
        labels = counts.argmax(axis=1)
        smallest = np.bincount(labels).astype(float)
        smallest = smallest[smallest > 0].min()
        splitter = (StratifiedKFold if smallest >= self.folds else KFold)(self.folds, shuffle=True, random_state=self.seed)
        return list(splitter.split(np.zeros(n), labels))

    def _after_training(self, images: np.ndarray, inputs: Any, start: float) -> None:
        n = len(images)
        oof = np.zeros((n, self.n_classes_), dtype=np.float64)
        for member, (_, held_out) in zip(self.members_, self.splits_):
            oof[held_out] = self._member_probs(member, _take(inputs, held_out))
        self.oof_probs_ = oof / oof.sum(axis=1, keepdims=True)
        self.images_hash_ = images_hash(images)
        states = {f"member{i}": state_hash(self._member_state(m)) for i, m in enumerate(self.members_)}
        states["shared"] = state_hash(self._extra_state())
        self.version_ = make_version(states)
        self.fit_seconds_ = getattr(self, "fit_seconds_", 0.0) + time.perf_counter() - start

    def _check_fitted(self) -> None:
        if not hasattr(self, "members_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(images, label_counts) first")


def _take(inputs: Any, index: np.ndarray) -> Any:
    return inputs[index]


def softmax_probs(logits: torch.Tensor) -> np.ndarray:
    """float64 softmax rows, renormalised so that they sum to 1 within float precision."""
    probs = torch.softmax(logits.double(), dim=1).numpy()
    return probs / probs.sum(axis=1, keepdims=True)


class LinearHeadMembers:
    """Members that are one ``nn.Linear`` head on frozen features (ssl-linear, pretrained-linear): their state
    is the head's weight and bias, and the layer is rebuilt from their shapes."""

    def _member_state(self, head: torch.nn.Linear) -> dict[str, Any]:
        return {k: v.detach().clone() for k, v in head.state_dict().items()}

    def _load_member_state(self, state: dict[str, Any]) -> torch.nn.Linear:
        head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
        return head
