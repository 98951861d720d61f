"""The random audit: a small share of the budget spent on tasks drawn uniformly from the untouched pool.

Why: ranked picks go where the model suspects errors, so they say nothing unbiased about the tasks the
model trusts. A uniform draw from the untouched pool, settled like any other task, is a design-based
sample of that pool; :mod:`scoring.estimate` turns the draws into the label-accuracy estimate.

A task is *touched* once it is opened for re-annotation (a ranked pick or an audit draw); the
*untouched pool* is every labelled task never touched. ``touched_seq`` numbers the touches 0, 1, 2, ...
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_AUDIT_SHARE = 0.05


@dataclass(frozen=True)
class AuditDraw:
    """One audit draw, recorded at draw time (the model's ``wrong_prob`` is frozen here on purpose: the
    difference estimator needs the control variate as it was when the draw was made)."""

    task: int  # the task (task id in the service, row index in the simulation)
    seq: int  # touched_seq the drawn task gets = number of tasks touched before the draw
    pool_size: int  # M: size of the untouched pool the draw was uniform over (the task included)
    pool_wrong_prob: float  # sum of wrong_prob over that pool at draw time (0.0 when there is no model yet)
    wrong_prob: float  # the drawn task's wrong_prob at draw time

    def __post_init__(self) -> None:
        if self.seq < 0 or self.pool_size < 1:
            raise ValueError(f"an audit draw needs seq >= 0 and pool_size >= 1 (got seq={self.seq}, pool_size={self.pool_size})")
        if not (0.0 <= self.wrong_prob <= 1.0) or not (0.0 <= self.pool_wrong_prob <= self.pool_size + 1e-6):
            raise ValueError(
                f"an audit draw needs 0 <= wrong_prob <= 1 and 0 <= pool_wrong_prob <= pool_size "
                f"(got wrong_prob={self.wrong_prob}, pool_wrong_prob={self.pool_wrong_prob}, pool_size={self.pool_size})"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "AuditDraw":
        try:
            return cls(
                task=int(d["task"]),
                seq=int(d["seq"]),
                pool_size=int(d["pool_size"]),
                pool_wrong_prob=float(d["pool_wrong_prob"]),
                wrong_prob=float(d["wrong_prob"]),
            )
        except (KeyError, TypeError) as err:
            raise ValueError(f"not an audit draw record: {d!r} ({err})") from err


def audit_target(*, spent: int, budget: int | None, share: float) -> float:
    """Re-annotations the audit should have spent once ``spent`` re-annotations are spent in all.

    Front-loaded: ``share * budget * sqrt(spent / budget)``, so the very first opening is an audit and a
    tenth of the way in about a third of the audit is done (early accuracy figures need draws); it ends
    at ``share * budget``. Without a budget: ``share * spent``, but at least one draw first.
    """
    if not 0.0 <= share < 1.0 or not math.isfinite(share):
        raise ValueError(f"the audit share must be in [0, 1) (got {share})")
    if spent < 0 or (budget is not None and budget < 0):
        raise ValueError(f"spent and budget must be >= 0 (got spent={spent}, budget={budget})")
    if share == 0.0:
        return 0.0
    if budget is None:
        return max(1.0, share * spent)
    if budget == 0:
        return 0.0
    return share * budget * math.sqrt(min(spent + 1, budget) / budget)


def audit_due(*, audit_spent: int, spent: int, budget: int | None, share: float) -> bool:
    """Whether the next opening should be an audit draw (share of the budget, front-loaded so that early
    checkpoints already have audits). share 0 -> always False.

    ``audit_spent``: re-annotations spent on audit draws so far (part of ``spent``).
    """
    if audit_spent < 0 or audit_spent > max(spent, 0):
        raise ValueError(f"audit_spent must be in [0, spent] (got audit_spent={audit_spent}, spent={spent})")
    return audit_spent < audit_target(spent=spent, budget=budget, share=share)


def draw_audit(pool: np.ndarray, wrong_prob: np.ndarray, *, seq: int, rng: np.random.Generator) -> AuditDraw:
    """One task drawn uniformly from ``pool`` (task ids/rows of the untouched pool, shape (M,)),
    ``wrong_prob`` aligned with pool (M,)."""
    pool = np.asarray(pool)
    wrong_prob = np.asarray(wrong_prob, dtype=float)
    if pool.ndim != 1 or pool.size == 0:
        raise ValueError(f"the untouched pool must be a non-empty 1-D array of tasks (got shape {pool.shape})")
    if wrong_prob.shape != pool.shape:
        raise ValueError(f"wrong_prob must align with the pool: shape {wrong_prob.shape} vs pool {pool.shape}")
    if not np.all(np.isfinite(wrong_prob)) or np.any(wrong_prob < 0) or np.any(wrong_prob > 1):
        raise ValueError("wrong_prob must be probabilities in [0, 1]")
    pick = int(rng.integers(pool.size))
    return AuditDraw(
        task=int(pool[pick]),
        seq=int(seq),
        pool_size=int(pool.size),
        pool_wrong_prob=float(wrong_prob.sum()),
        wrong_prob=float(wrong_prob[pick]),
    )
