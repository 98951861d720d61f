"""How many labels are still wrong: a design-based estimate from the random audit, with its interval.

A task's label is *right* when its label counts have a unique top class equal to the true class (the
simulation's ``label_is_correct``): a settled task's majority, an untouched task's initial label; a
touched task whose counts are tied counts as wrong.

Wrong labels left W = (settled tasks whose majority is wrong) + (tied touched tasks) + (wrong initial
labels in the untouched pool). The three parts:

* settled tasks: P(true class != majority | the re-annotations and the initial label), from a
  Dirichlet-multinomial model of the annotators fitted to the re-annotations themselves (empirical
  Bayes) and a symmetric-noise likelihood for the initial label (:func:`truth_posterior`);
* tied touched tasks: wrong by definition;
* the untouched pool: the difference estimator of the audit draws with the model as control variate.
  Draw k (pool P_k of size M_k, the model's wrong_prob q frozen at the draw) gives
  ``T_k = sum_{P_k} q + M_k (e_k - q_k)``, unbiased for the wrong initial labels in P_k whatever the
  model's calibration; subtracting the (observed) wrong initial labels of the tasks touched since the draw
  leaves ``D_k``, an estimate of the wrong labels in today's untouched pool whose error
  ``M_k (r_k - mean_{P_k} r)`` (r = e - q) is a martingale difference. The D_k are averaged with weights
  fixed by what was known at each draw (inverse of its predicted variance, so draws from the late, cleaner
  pool count more) and their spread gives the variance.

The interval is normal with that variance, floored for rare errors: with K draws the residual variance is
taken to be at least p0 (1 - p0), p0 = (z^2/2) / (K + z^2) (the Agresti-Coull/Wilson pseudo-count), so
0 errors in 9 draws still gives a wide interval. The posterior variance of the settled part is added.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from scoring.audit import AuditDraw
from scoring.majority import has_strict_majority

VARIANCE_FLOOR_RATE = 0.01  # weights only: a draw's predicted residual variance is at least this
POSTERIOR_SAMPLES = 400  # Monte Carlo draws of each touched task's annotator distribution


@dataclass(frozen=True)
class AccuracyEstimate:
    n_tasks: int
    accuracy: float  # point estimate of the share of tasks whose current label is right
    low: float  # the interval (confidence level below)
    high: float
    wrong_left: int  # rounded point estimate of wrong labels left (an integer for people)
    wrong_low: int
    wrong_high: int
    confidence: float  # 0.9
    n_audited: int  # audit draws settled so far
    n_cleaned: int  # tasks settled by ranked picks
    basis: str  # one line for people

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def estimate_accuracy(
    *,
    counts: np.ndarray,
    initial_labels: np.ndarray,
    touched_seq: np.ndarray,
    audits: Sequence[AuditDraw],
    wrong_prob: np.ndarray | None = None,
    confidence: float = 0.9,
) -> AccuracyEstimate | None:
    """The share of tasks whose current label is right, with a ``confidence`` interval.

    ``counts`` (N, C) label counts now (initial label + re-annotations); ``initial_labels`` (N,) class index
    of the initial label (counted in ``counts``); ``touched_seq`` (N,) int, the order in which tasks were
    opened for re-annotation, -1 = never; ``audits``: the audit draws (``task`` = row index);
    ``wrong_prob`` (N,) the model's probability that each current label is wrong (None = no model).

    None while no audit draw has settled (no design-based basis yet).
    """
    counts, initial, seq, q = _validated(counts, initial_labels, touched_seq, audits, wrong_prob, confidence)
    n, _ = counts.shape
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    settled = has_strict_majority(counts)
    usable = [a for a in audits if settled[a.task]]
    if not usable:
        return None

    touched = seq >= 0
    reannotations = counts - np.eye(counts.shape[1], dtype=counts.dtype)[initial]
    annotated = touched & (reannotations.sum(axis=1) > 0)
    rows = np.flatnonzero(annotated)
    post = truth_posterior(reannotations[rows], initial[rows], majority_initial_share=_agreement(counts, initial, rows))
    top = counts[rows].argmax(axis=1)
    p_major = post[np.arange(rows.size), top]
    p_initial = post[np.arange(rows.size), initial[rows]]
    wrong_now = np.where(settled[rows], 1.0 - p_major, 1.0)  # a tie is wrong by definition
    wrong_initial = 1.0 - p_initial  # P(the initial label was wrong)
    e = np.zeros(n)
    e[rows] = wrong_initial
    # Touched but not annotated yet (opened, waiting): its label is its initial label, not observed.
    waiting = touched & ~annotated

    # The untouched pool: one D_k per usable draw.
    seq_sorted = np.sort(seq[touched])
    e_by_seq = np.zeros(seq_sorted.size + 1)
    order = np.argsort(seq[touched], kind="stable")
    e_touched = np.where(waiting, q, e)[touched][order]
    e_by_seq[:-1] = np.cumsum(e_touched[::-1])[::-1]  # sum of e over tasks with seq >= seq_sorted[i]
    d, m, var_pred, audit_var = [], [], [], []
    for a in usable:
        start = int(np.searchsorted(seq_sorted, a.seq, side="left"))
        touched_since = e_by_seq[start]
        e_k = e[a.task]
        d.append(a.pool_wrong_prob + a.pool_size * (e_k - a.wrong_prob) - touched_since)
        m.append(a.pool_size)
        var_pred.append(a.pool_size**2 * max(a.pool_wrong_prob / a.pool_size, VARIANCE_FLOOR_RATE))
        audit_var.append(a.pool_size**2 * e_k * (1 - e_k))
    d, m = np.asarray(d), np.asarray(m, dtype=float)
    w = 1.0 / np.asarray(var_pred)
    w /= w.sum()
    k = d.size
    pool_now = int(np.sum(~touched))
    pool_point = float(w @ d)
    spread = (k / (k - 1)) * float(np.sum(w**2 * (d - pool_point) ** 2)) if k > 1 else 0.0
    p0 = (z * z / 2) / (k + z * z)
    floor = float(np.sum(w**2 * m**2)) * p0 * (1 - p0)
    pool_var = max(spread, floor) + float(np.sum(w**2 * np.asarray(audit_var)))
    if pool_now == 0:
        pool_point, pool_var = 0.0, 0.0

    # Posterior variance of the settled part, with the coefficient each task's initial label got in D.
    seq_draws = np.array([a.seq for a in usable])
    weight_before = np.array([w[seq_draws <= s].sum() for s in seq[rows]]) if rows.size else np.zeros(0)
    both_wrong = np.where(top == initial[rows], 1.0 - p_major, np.clip(1.0 - p_major - p_initial, 0.0, 1.0))
    both_wrong = np.where(settled[rows], both_wrong, wrong_initial)
    second = wrong_now + weight_before**2 * wrong_initial - 2 * weight_before * both_wrong
    mean = wrong_now - weight_before * wrong_initial
    settled_var = float(np.sum(np.clip(second - mean**2, 0.0, None)))

    waiting_weight = np.array([1.0 - w[seq_draws <= s].sum() for s in seq[waiting]])
    known = float(wrong_now.sum())
    # A waiting task stands in D with its model wrong_prob; its unknown label moves W by at most its weight.
    point = known + pool_point + float(np.sum(q[waiting]))
    half = z * math.sqrt(pool_var + settled_var)
    low = max(point - half - float(waiting_weight @ q[waiting]), float(np.sum(~settled[rows])))
    high = min(point + half + float(waiting_weight @ (1 - q[waiting])), float(n))
    point = min(max(point, low), high)
    n_audited = len(usable)
    n_cleaned = int(np.sum(touched & settled)) - len({a.task for a in usable})
    basis = (
        f"from {n_audited} audited and {n_cleaned} cleaned tasks; "
        + ("model as control variate" if wrong_prob is not None else "no model yet")
    )
    return AccuracyEstimate(
        n_tasks=n,
        accuracy=1.0 - point / n,
        low=1.0 - high / n,
        high=1.0 - low / n,
        wrong_left=int(round(point)),
        wrong_low=int(math.floor(low)),
        wrong_high=int(math.ceil(high)),
        confidence=confidence,
        n_audited=n_audited,
        n_cleaned=n_cleaned,
        basis=basis,
    )


def truth_posterior(
    reannotations: np.ndarray, initial: np.ndarray, *, majority_initial_share: float, seed: int = 0
) -> np.ndarray:
    """P(true class = c | a task's re-annotations and initial label), shape (n, C).

    The true class is the most likely class of the task's annotator distribution p. Prior: p ~ Dirichlet(
    alpha * beta), alpha and beta fitted to the re-annotations by marginal likelihood (empirical Bayes; the
    stop-at-majority rule is ignorable in the likelihood). The initial label is not assumed to come from
    the annotators: it is right with probability ``majority_initial_share`` (the share of annotated tasks
    whose initial label is their re-annotation majority; low because picks are suspicious tasks, which
    makes the initial label count for less) and otherwise any other class.
    """
    n, c = reannotations.shape
    if n == 0:
        return np.zeros((0, c))
    beta = (reannotations.sum(axis=0) + 1.0) / (reannotations.sum() + c)
    alpha = fit_concentration(reannotations, beta)
    rng = np.random.default_rng(seed)
    shape = alpha * beta[None, :] + reannotations
    samples = rng.gamma(np.broadcast_to(shape, (POSTERIOR_SAMPLES, n, c)))
    winners = samples.argmax(axis=2)  # (S, n)
    prior_top = np.stack([(winners == j).mean(axis=0) for j in range(c)], axis=1)  # (n, C)
    gamma = min(max(majority_initial_share, 1.0 / c), 1.0 - 1e-6)
    like = np.full((n, c), (1.0 - gamma) / (c - 1))
    like[np.arange(n), initial] = gamma
    post = prior_top * like + 1e-12
    return post / post.sum(axis=1, keepdims=True)


def fit_concentration(reannotations: np.ndarray, beta: np.ndarray) -> float:
    """Maximum-likelihood alpha of a Dirichlet-multinomial with base ``beta`` over the rows (grid search)."""
    from math import lgamma

    rows = reannotations[reannotations.sum(axis=1) >= 2]
    if rows.shape[0] == 0:
        return 1.0
    grid = np.logspace(-2, 3, 61)
    lg = np.vectorize(lgamma)
    totals = rows.sum(axis=1)
    best, best_ll = 1.0, -np.inf
    for alpha in grid:
        a = alpha * beta
        ll = np.sum(lg(alpha) - lg(alpha + totals)) + np.sum(lg(a[None, :] + rows) - lg(a)[None, :])
        if ll > best_ll:
            best, best_ll = float(alpha), ll
    return best


def _agreement(counts: np.ndarray, initial: np.ndarray, rows: np.ndarray) -> float:
    """Share of annotated tasks whose re-annotations' top class is the initial label."""
    if rows.size == 0:
        return 0.5
    reann = counts[rows] - np.eye(counts.shape[1], dtype=counts.dtype)[initial[rows]]
    return float(np.mean(reann.argmax(axis=1) == initial[rows]))


def _validated(counts, initial_labels, touched_seq, audits, wrong_prob, confidence):
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] == 0 or counts.shape[1] < 2:
        raise ValueError(f"counts must be (N, C) with N >= 1 and C >= 2 (got shape {counts.shape})")
    if not np.issubdtype(counts.dtype, np.integer) and not np.all(counts == np.round(counts)):
        raise ValueError("counts must be whole numbers of labels")
    counts = counts.astype(np.int64)
    n, c = counts.shape
    if np.any(counts < 0):
        raise ValueError("counts must be >= 0")
    initial = np.asarray(initial_labels)
    if initial.shape != (n,) or not np.issubdtype(initial.dtype, np.integer):
        raise ValueError(f"initial_labels must be (N,) = ({n},) class indices (got shape {initial.shape}, dtype {initial.dtype})")
    if np.any(initial < 0) or np.any(initial >= c):
        raise ValueError(f"initial_labels must be class indices in [0, {c})")
    if np.any(counts[np.arange(n), initial] < 1):
        raise ValueError("counts must include each task's initial label")
    seq = np.asarray(touched_seq)
    if seq.shape != (n,) or not np.issubdtype(seq.dtype, np.integer):
        raise ValueError(f"touched_seq must be (N,) = ({n},) integers, -1 = never touched (got shape {seq.shape})")
    if np.any(seq < -1) or len(np.unique(seq[seq >= 0])) != int(np.sum(seq >= 0)):
        raise ValueError("touched_seq must be -1 (never touched) or distinct numbers >= 0")
    if wrong_prob is None:
        q = np.zeros(n)
    else:
        q = np.asarray(wrong_prob, dtype=float)
        if q.shape != (n,) or not np.all(np.isfinite(q)) or np.any(q < 0) or np.any(q > 1):
            raise ValueError(f"wrong_prob must be (N,) = ({n},) probabilities in [0, 1]")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1) (got {confidence})")
    for a in audits:
        if not isinstance(a, AuditDraw):
            raise ValueError(f"audits must be AuditDraw records (got {type(a).__name__})")
        if not 0 <= a.task < n:
            raise ValueError(f"audit draw of task {a.task} is outside the {n} tasks")
        if seq[a.task] != a.seq:
            raise ValueError(f"audit draw of task {a.task} has seq {a.seq} but the task's touched_seq is {seq[a.task]}")
    return counts, initial, seq, q


@dataclass(frozen=True)
class Forecast:
    target: float
    reannotations: int | None  # None = not reachable / unknown
    low: int | None
    high: int | None
    basis: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def reannotations_to_reach(
    estimate: AccuracyEstimate,
    target: float,
    *,
    reannotations_per_fix: float,
    fix_rate_low: float,
    fix_rate_high: float,
    remaining_budget: int | None,
) -> Forecast:
    """Re-annotations still needed to reach ``target`` accuracy: the fixes still needed (from the estimate
    and its interval) times the cost of a fix. What "re-annotations to reach X%" and the suggested budget
    both come from (one function, so they agree): the suggested budget is spent + ``high``.

    ``reannotations_per_fix``: re-annotations per corrected label (point); ``fix_rate_low`` and
    ``fix_rate_high``: the range of corrected labels per re-annotation (the interval of 1 / cost).
    ``remaining_budget``: re-annotations left (None = no budget set); a forecast above it says so.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target accuracy must be in (0, 1] (got {target})")
    if reannotations_per_fix <= 0 or fix_rate_low < 0 or fix_rate_high < fix_rate_low or fix_rate_high <= 0:
        raise ValueError("reannotations_per_fix > 0 and 0 <= fix_rate_low <= fix_rate_high (> 0) are required")
    if remaining_budget is not None and remaining_budget < 0:
        raise ValueError(f"remaining_budget must be >= 0 (got {remaining_budget})")
    allowed = math.floor((1.0 - target) * estimate.n_tasks + 1e-9)
    need = max(0, estimate.wrong_left - allowed)
    need_low = max(0, estimate.wrong_low - allowed)
    need_high = max(0, estimate.wrong_high - allowed)
    point = int(math.ceil(need * reannotations_per_fix))
    low = int(math.ceil(need_low / fix_rate_high))
    high = int(math.ceil(need_high / fix_rate_low)) if fix_rate_low > 0 else None
    basis = (
        f"{need} more corrections ({need_low}-{need_high}) to reach {100 * target:.1f}% at "
        f"{reannotations_per_fix:.1f} re-annotations each; {estimate.basis}"
    )
    if remaining_budget is not None and low > remaining_budget:
        basis += f"; beyond the {remaining_budget} re-annotations left"
    return Forecast(target=target, reannotations=point, low=low, high=high, basis=basis)
