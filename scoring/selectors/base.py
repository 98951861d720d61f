"""The selector interface: a posterior model behind fit / predict_proba / update.

A selector only estimates p(class | task); a priority rule (scoring.rules) turns those posteriors
and the label counts into the order of work. The two are chosen separately, by name.
"""

from __future__ import annotations

import inspect
from pathlib import Path
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
        """(N, C) posteriors of ``data`` as new tasks (rows summing to 1): a learned selector's members'
        average, in-sample for tasks it was fitted on. The posteriors that grade the fitted labels are
        :meth:`oof_proba`'s."""
        raise NotImplementedError

    def update(self, data: Any, label_counts: np.ndarray) -> "Selector":
        """Refit after new labels; learned selectors override this with something cheaper than fit."""
        return self.fit(data, label_counts)

    # ----- out of fold, said explicitly ------------------------------------------------------
    def oof_proba(self, data: Any) -> np.ndarray:
        """(N, C) posteriors of the N tasks of the last ``fit``/``update``, in that order, each from a model
        that never saw its label (selectors with folds). ``data`` must be the array that was fitted: it is
        passed, not looked up, so that selectors without folds (random, oracle, given posteriors) can
        predict it. Posteriors for other data (a subset, another order, new tasks) come from
        :meth:`predict_proba`, which never returns out-of-fold values."""
        return self.predict_proba(data)

    def oof_proba_samples(self, data: Any, n_samples: int) -> np.ndarray:
        """(S, N, C) Monte-Carlo posteriors of the fitted tasks, out of fold; see :meth:`oof_proba`."""
        return self.predict_proba_samples(data, n_samples)

    def fit_predict_oof(self, data: Any, label_counts: np.ndarray) -> np.ndarray:
        """Fit on ``data`` and its counts; return the out-of-fold posteriors (N, C) of those tasks."""
        return self.fit(data, label_counts).oof_proba(data)

    def update_predict_oof(self, data: Any, label_counts: np.ndarray) -> np.ndarray:
        """Update on new counts for the same tasks; return their out-of-fold posteriors (N, C)."""
        return self.update(data, label_counts).oof_proba(data)

    def predict_proba_samples(self, data: Any, n_samples: int) -> np.ndarray:
        """(S, N, C) Monte-Carlo posteriors; only for selectors with ``provides_samples``."""
        raise NotImplementedError(f"{type(self).__name__} does not provide Monte-Carlo samples")

    @property
    def version(self) -> str:
        """Identifies the fitted model (shown next to every priority). Learned selectors hash their weights."""
        return type(self).__name__

    # ----- persistence: JSON + safetensors, never pickle --------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments, read back from the attributes of the same name (as scikit-learn does)."""
        if type(self).__init__ is object.__init__:
            return {}
        names = [p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "args", "kwargs")]
        return {n: getattr(self, n) for n in names if hasattr(self, n)}

    def get_state(self) -> dict[str, Any]:
        """The fitted state (arrays, tensors, numbers, strings, nested dicts/lists); subclasses extend it."""
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_state` returned."""

    def save(self, directory: str | Path) -> Path:
        """Write the class, its parameters and fitted state into ``directory`` (created): JSON + safetensors only."""
        from scoring.persistence import save_document

        cls = type(self)
        return save_document(directory, {"class": f"{cls.__module__}:{cls.__qualname__}",
                                         "params": self.get_params(), "state": self.get_state()})

    @classmethod
    def load(cls, directory: str | Path, **overrides: Any) -> "Selector":
        """Rebuild a selector written by :meth:`save` (``overrides`` replace parameters, e.g. device='cpu').

        Only classes the registry knows (built-ins and ``alc.selectors`` entry points) are imported.
        """
        from scoring.persistence import load_document
        from scoring.selectors import available_selectors

        document = load_document(directory)
        name = document["class"]
        if name not in set(available_selectors().values()) | {f"{cls.__module__}:{cls.__qualname__}"}:
            raise ValueError(f"{directory} holds a {name}, which is not a registered selector")
        module_name, _, attr = name.partition(":")
        target = getattr(__import__(module_name, fromlist=[attr]), attr)
        if not (isinstance(target, type) and issubclass(target, cls)):
            raise ValueError(f"{directory} holds a {name}, not a {cls.__name__}")
        if target.load.__func__ is not Selector.load.__func__:  # e.g. the ensemble, made of saved members
            return target.load(directory, **overrides)
        selector = target(**{**document["params"], **overrides})
        selector.set_state(document["state"])
        return selector
