"""A strategy = a selector (posteriors) + a rule (priorities). This is where the two meet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scoring.rules import Priorities, Rule, get_rule
from scoring.selectors.base import Selector

DEFAULT_MC_SAMPLES = 20


@dataclass
class Strategy:
    selector: Selector
    rule: Rule

    @classmethod
    def build(cls, selector: Selector, rule_name: str | None = None) -> "Strategy":
        rule = get_rule(rule_name or selector.default_rule)
        if rule.input == "samples" and not selector.provides_samples:
            raise ValueError(f"rule {rule.name!r} needs Monte-Carlo samples, which {type(selector).__name__} does not provide")
        return cls(selector, rule)

    @property
    def name(self) -> str:
        return self.rule.name

    def model_output(self, data: Any) -> np.ndarray:
        """What the rule consumes for ``data`` as new tasks: posteriors (N, C), or MC samples (S, N, C)."""
        if self.rule.input == "samples":
            return self.selector.predict_proba_samples(data, DEFAULT_MC_SAMPLES)
        return self.selector.predict_proba(data)

    def fit_output(self, data: Any, label_counts: np.ndarray, *, update: bool = False) -> np.ndarray:
        """Fit (or ``update``) the selector on these tasks and return what the rule consumes for them, out of
        fold: the labels are graded by models that never saw them."""
        (self.selector.update if update else self.selector.fit)(data, label_counts)
        if self.rule.input == "samples":
            return self.selector.oof_proba_samples(data, DEFAULT_MC_SAMPLES)
        return self.selector.oof_proba(data)

    @staticmethod
    def posteriors(model_output: np.ndarray) -> np.ndarray:
        """(N, C) posteriors from what the rule consumed: the posteriors themselves, or the mean of MC samples."""
        return model_output.mean(axis=0) if model_output.ndim == 3 else model_output

    def priorities(self, label_counts: np.ndarray, model_output: np.ndarray, seed: int | None = None) -> Priorities:
        return self.rule(label_counts, model_output, seed=seed)
