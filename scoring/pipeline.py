"""The one ranking pipeline: data + label counts -> a fitted selector and a :class:`~scoring.ranked.Ranking`.

The backend's retrain, ``alc rank`` and the Python API all call :func:`rank`, so a task is ranked the same
way wherever it comes from. The posteriors that grade the labels are out of fold, asked for explicitly
(``Strategy.fit_output`` -> ``Selector.oof_proba``): a model never grades a label it was trained on.

Ranking.scores are Label Studio's: ``score = 1 / (1 + exp(priority))``, in (0, 1), falling as the priority
rises, because Label Studio's uncertainty sampling serves the LOWEST score first; tasks that need nothing
(priority -inf, the oracle's settled ones) get 1.0, the end of the queue.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from scoring.checks import check_counts
from scoring.ranked import Ranking
from scoring.ranking import Strategy
from scoring.selectors.base import Selector


def score_from_priority(priority: float) -> float:
    """Lower score = re-annotate sooner (Label Studio's uncertainty sampling serves the lowest first)."""
    if priority is None or math.isnan(priority):
        return 1.0
    if priority > 700:
        return 0.0
    return 1.0 / (1.0 + math.exp(priority))


def scores_from_priorities(priorities: Any) -> np.ndarray:
    return np.array([score_from_priority(float(p)) for p in np.asarray(priorities, dtype=float)])


def rank(data: Any, counts: Any, *, selector: Selector, rule: str | None = None,
         task_ids: Sequence[int] | None = None, class_names: Sequence[str] | None = None,
         previous: Ranking | None = None, initial_counts: Any = None) -> tuple[Selector, Ranking]:
    """Fit ``selector`` on N tasks and rank them, highest priority = re-annotate first.

    data: what the selector reads for the N tasks (uint8 images (N, H, W, 3), float features (N, D),
        N strings for ``text``; None for selectors that need no data).
    counts: (N, C) label counts (the initial label plus every re-annotation), at least one per row.
    rule: a priority rule's name (None: the selector's default).
    task_ids: N ids (default 0..N-1); class_names: C names (default "0".."C-1").
    previous: the ranking this selector was last fitted for; when it holds the same task ids in the same
        order the selector is updated (cheap: new counts, same data), else fitted afresh.
    initial_counts: (N, C) the initial label(s) alone (optional); gives ``p_initial``, which the accuracy
        estimate's control variate reads (scoring.estimate: ``initial_wrong_prob``).

    Returns the fitted selector (for ``predict_proba`` on new tasks and for saving) and the Ranking, whose
    ``p_label`` (N,) is the out-of-fold probability of each task's current majority label (ties: the first
    class among the tied ones), ``p_initial`` (N,) that of its initial label (NaN where a row of
    ``initial_counts`` is empty; None without them) and ``predicted`` (N,) the most likely class.
    """
    counts = check_counts(counts)
    n, c = counts.shape
    ids = list(range(n)) if task_ids is None else [int(t) for t in task_ids]
    names = [str(i) for i in range(c)] if class_names is None else [str(x) for x in class_names]
    if len(ids) != n or len(names) != c:
        raise ValueError(f"{len(ids)} task ids and {len(names)} class names for counts of shape {counts.shape}")
    if data is not None and hasattr(data, "__len__") and len(data) != n:
        raise ValueError(f"{len(data)} data rows but {n} rows of label counts")
    if initial_counts is not None:
        initial_counts = np.asarray(initial_counts, dtype=float)
        if initial_counts.shape != counts.shape:
            raise ValueError(f"initial_counts must have the shape of counts {counts.shape}, got {initial_counts.shape}")
    strategy = Strategy.build(selector, rule)
    update = previous is not None and list(previous.task_ids) == ids
    output = strategy.fit_output(data, counts, update=update)
    priorities = strategy.priorities(counts, output)
    probs = Strategy.posteriors(output)
    ranking = Ranking(
        task_ids=ids,
        class_names=names,
        counts=counts,
        priority=priorities.priority,
        noisiness=priorities.noisiness,
        ambiguity=priorities.ambiguity,
        scores=scores_from_priorities(priorities.priority),
        predicted=probs.argmax(axis=1),
        p_label=probs[np.arange(n), counts.argmax(axis=1)],
        p_initial=None if initial_counts is None else np.where(
            initial_counts.sum(axis=1) > 0, probs[np.arange(n), initial_counts.argmax(axis=1)], np.nan),
    )
    return selector, ranking

