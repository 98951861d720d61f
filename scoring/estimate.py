"""How many labels are still wrong: a design-based estimate from the random audit, with its interval.

A task's label is *right* when its label counts have a unique top class equal to the true class (the
simulation's ``label_is_correct``): a settled task's majority, an untouched task's initial label; a
touched task whose counts are tied counts as wrong.

Wrong labels left W = (settled tasks whose majority is wrong) + (tied touched tasks) + (wrong initial
labels in the untouched pool). The three parts:

* settled tasks: P(true class != majority | the labels), from the latent-class model of
  :mod:`scoring.truth` fitted to the re-annotations themselves;
* tied touched tasks: wrong by definition;
* the untouched pool: the difference estimator of the audit draws with the model as control variate.
  Draw k (pool P_k of size M_k) gives ``T_k = sum_{P_k} g + M_k (e_k - g_k)``, unbiased for the wrong
  initial labels in P_k whatever the control variate g; subtracting the known e - g of the tasks touched
  since the draw leaves ``D_k``, an estimate of today's untouched pool whose error
  ``M_k (r_k - mean_{P_k} r)`` (r = e - g) is a martingale difference. g is the model's figure for the
  initial label recalibrated on the tasks whose outcome is known (:func:`recalibrate`); the pool is cut
  into bands of g (:class:`UntouchedPool`), and the D_k are averaged per band with weights fixed by what
  was known at each draw; their spread gives the variance.

The pool's interval is Wilson's score interval at the effective number of draws, with a pseudo-count
floor (an error rate of (z^2/2) / (K + z^2) can go unseen in K draws), so 0 errors in 9 draws still
gives a wide interval; the settled part's posterior variance is added in quadrature.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Sequence

import numpy as np

from scoring.audit import AuditDraw
from scoring.majority import has_strict_majority
from scoring.truth import truth_posterior

VARIANCE_FLOOR_RATE = 0.01  # weights only: a draw's predicted residual variance is at least this


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
    initial_wrong_prob: np.ndarray | None = None,
) -> AccuracyEstimate | None:
    """The share of tasks whose current label is right, with a ``confidence`` interval.

    ``counts`` (N, C) label counts now (initial label + re-annotations); ``initial_labels`` (N,) class index
    of the initial label (counted in ``counts``); ``touched_seq`` (N,) int, the order in which tasks were
    opened for re-annotation, -1 = never; ``audits``: the audit draws (``task`` = row index);
    ``wrong_prob`` (N,) the model's probability that each current label is wrong (None = no model);
    ``initial_wrong_prob`` (N,) the model's probability that each *initial* label is wrong (optional: by
    default ``wrong_prob`` where the label is unchanged, the draw-time figure for audited tasks).

    None while no audit draw has settled (no design-based basis yet).
    """
    counts, initial, seq, q = _validated(counts, initial_labels, touched_seq, audits, wrong_prob, confidence)
    n = counts.shape[0]
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    settled = has_strict_majority(counts)
    usable = [a for a in audits if settled[a.task]]
    if not usable:
        return None
    q0 = _initial_wrong_prob(initial_wrong_prob, q, counts, initial, settled, audits)

    touched = seq >= 0
    audited = np.zeros(n, dtype=bool)
    audited[[a.task for a in audits]] = True
    outcome = TouchedOutcomes.of(counts, initial, touched, settled, audited)
    waiting = touched & ~outcome.annotated  # opened, no re-annotation yet: its initial label is not observed
    # The control variate: the model's figure recalibrated on the tasks whose initial label is now known.
    q0 = recalibrate(q0, outcome.initial_wrong, outcome.annotated & settled)
    e = np.where(waiting, q0, outcome.initial_wrong)  # a waiting task stands in with the model's figure
    pool = UntouchedPool.estimate(e - q0, q0, seq, usable, z)

    rows = outcome.rows
    settled_var = outcome.variance(pool.coefficient[rows])
    known = float(outcome.wrong_now[rows].sum())
    size = int(np.sum(~touched))
    pool_wrong, pool_low, pool_high = pool.interval(float(q0[~touched].sum()), size, z)
    point = known + pool_wrong + float(q0[waiting].sum())
    settled_half = z * math.sqrt(settled_var)
    unknown_low = float((1 - pool.coefficient[waiting]) @ q0[waiting])
    unknown_high = float((1 - pool.coefficient[waiting]) @ (1 - q0[waiting]))
    low = point - math.hypot(pool_wrong - pool_low, settled_half) - unknown_low
    high = point + math.hypot(pool_high - pool_wrong, settled_half) + unknown_high
    low = max(low, float(np.sum(touched & outcome.annotated & ~settled)))  # ties are wrong for sure
    high = min(high, float(n))
    point = min(max(point, low), high)
    n_cleaned = int(np.sum(touched & settled)) - len({a.task for a in usable})
    basis = f"from {len(usable)} audited and {n_cleaned} cleaned tasks; " + (
        "model as control variate" if wrong_prob is not None else "no model yet"
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
        n_audited=len(usable),
        n_cleaned=n_cleaned,
        basis=basis,
    )


@dataclass(frozen=True)
class TouchedOutcomes:
    """What the labels say about each annotated touched task (arrays (N,), zero elsewhere)."""

    annotated: np.ndarray  # touched and re-annotated at least once
    rows: np.ndarray  # np.flatnonzero(annotated)
    wrong_now: np.ndarray  # P(current label wrong): 1 - P(true = majority) if settled, 1 for a tie
    initial_wrong: np.ndarray  # P(initial label wrong); 0 if a settled majority confirmed it
    settled: np.ndarray

    @classmethod
    def of(cls, counts: np.ndarray, initial: np.ndarray, touched: np.ndarray, settled: np.ndarray,
           audited: np.ndarray) -> "TouchedOutcomes":
        """``audited`` (N,) marks audit draws: their initial labels are a uniform sample of the pool, so
        they get their own initial-label reliability (ranked picks are suspicious tasks).

        A settled task's initial label counts as right when the majority confirmed it, and as wrong with
        the model's probability when the majority overturned it (on an ambiguous task the majority can
        overturn a right label). The pool estimate multiplies the audit draws' outcomes by the pool size,
        so the model's small doubts about confirmed labels are left out there (wrong_now keeps them: it is
        summed once)."""
        n = counts.shape[0]
        reannotations = counts - np.eye(counts.shape[1], dtype=counts.dtype)[initial]
        annotated = touched & (reannotations.sum(axis=1) > 0)
        rows = np.flatnonzero(annotated)
        post = truth_posterior(reannotations[rows], initial[rows], audited[rows].astype(int))
        top = counts[rows].argmax(axis=1)
        wrong_now, initial_wrong = np.zeros(n), np.zeros(n)
        wrong_now[rows] = np.where(settled[rows], 1.0 - post[np.arange(rows.size), top], 1.0)
        p_initial_wrong = 1.0 - post[np.arange(rows.size), initial[rows]]
        initial_wrong[rows] = np.where(settled[rows], np.where(top != initial[rows], p_initial_wrong, 0.0),
                                       p_initial_wrong)
        return cls(annotated, rows, wrong_now, initial_wrong, settled)

    def variance(self, coefficient: np.ndarray) -> float:
        """Posterior variance of sum_i (wrong_now_i - coefficient_i * initial_wrong_i) over the annotated
        tasks (each task's initial label entered the pool estimate with ``coefficient``), the two parts
        taken as independent (conservative where they move together); tasks independent."""
        r = self.rows
        c, w = self.wrong_now[r], self.initial_wrong[r]
        return float(np.sum(c * (1 - c) + coefficient**2 * w * (1 - w)))


@dataclass(frozen=True)
class UntouchedPool:
    """The wrong labels in today's untouched pool beyond the model's sum: sum_U (e - q0), from the draws.

    Bands of q0 (quantiles over the untouched pool; tasks above its largest q0 are in none) each get the
    difference estimator of the draws: draw k gives D_kb = M_k r_k [k in band b] - sum of r over the band's
    tasks touched since the draw (known), whose error is a martingale difference. A band with no untouched
    task is exactly 0, so draws from the part the ranked picks have cleaned add no noise there. Draws are
    weighted per band by the inverse of their predicted variance (M_k times the band's sum of
    q0 (1 - q0) at draw time, floored).
    """

    residual: float
    variance: float
    coefficient: np.ndarray  # (N,) the weight with which each touched task's r entered (for its variance)
    floor_rate: float = 0.0  # p0: the error rate a few draws cannot rule out (Wilson pseudo-count)

    def interval(self, model_sum: float, size: int, z: float) -> tuple[float, float, float]:
        """Wrong labels in the untouched pool of ``size`` tasks: point, low, high.

        The interval is Wilson's score interval for the pool's error rate with the effective number of
        draws that the estimate's variance implies (n_eff = p (1 - p) / var, p at least the floor rate):
        skewed upwards when few errors were seen, close to the normal one when the draws say much.
        """
        if size == 0:
            return 0.0, 0.0, 0.0
        rate = min(max((model_sum + self.residual) / size, 0.0), 1.0)
        var = max(self.variance / size**2, 1e-12)
        spread_rate = min(max(rate, self.floor_rate), 0.5)
        n_eff = max(spread_rate * (1 - spread_rate) / var, 1.0)
        shrink = 1 + z * z / n_eff
        center = (rate + z * z / (2 * n_eff)) / shrink
        half = z / shrink * math.sqrt(rate * (1 - rate) / n_eff + z * z / (4 * n_eff**2))
        return rate * size, max(center - half, 0.0) * size, min(center + half, 1.0) * size

    @classmethod
    def estimate(cls, r: np.ndarray, q0: np.ndarray, seq: np.ndarray, draws: Sequence[AuditDraw], z: float,
                 n_bands: int = 4) -> "UntouchedPool":
        n = r.size
        untouched = seq < 0
        coefficient = np.zeros(n)
        if not untouched.any():
            return cls(0.0, 0.0, coefficient, 0.0)
        edges = np.unique(np.quantile(q0[untouched], np.linspace(0, 1, n_bands + 1)[1:-1]))
        band = np.searchsorted(edges, q0, side="left")
        band[q0 > q0[untouched].max()] = -1
        m = np.array([a.pool_size for a in draws], dtype=float)
        k_draws = m.size
        q_var = q0 * (1 - q0)
        total, xi = 0.0, np.zeros(k_draws)
        floor_var, n_landed = 0.0, 0
        for b in np.unique(band[untouched]):
            in_band = band == b
            d, v, f, lands = np.zeros(k_draws), np.zeros(k_draws), np.zeros(k_draws), np.zeros(k_draws, dtype=bool)
            for k, a in enumerate(draws):
                alive = in_band & (untouched | (seq >= a.seq))  # the band's part of the pool at draw k
                lands[k] = in_band[a.task]
                d[k] = m[k] * r[a.task] * lands[k] - float(r[in_band & (seq >= a.seq)].sum())
                v[k] = m[k] * max(float(q_var[alive].sum()), VARIANCE_FLOOR_RATE * alive.sum(), 1e-9)
                f[k] = alive.sum() / m[k]
            w = (1 / v) / np.sum(1 / v)
            s_b = float(w @ d)
            total += s_b
            xi += w * (d - s_b)
            n_landed += int(lands.sum())
            floor_var += float(np.sum(w**2 * m**2 * f))
            for k, a in enumerate(draws):
                coefficient[in_band & (seq >= a.seq)] += w[k]
                if lands[k]:
                    coefficient[a.task] -= w[k] * m[k]
        spread = (k_draws / (k_draws - 1)) * float(np.sum(xi**2)) if k_draws > 1 else 0.0
        p0 = (z * z / 2) / (n_landed + z * z)  # Wilson/Agresti-Coull pseudo-count: rare errors stay possible
        variance = max(spread, floor_var * p0 * (1 - p0))
        return cls(total, variance, coefficient, p0)


def recalibrate(q0: np.ndarray, wrong: np.ndarray, known: np.ndarray, *, prior_weight: float = 0.1) -> np.ndarray:
    """The model's P(initial label wrong) (N,) recalibrated as sigmoid(a + b logit q0), (a, b) fitted by
    logistic regression on the tasks ``known`` (N,) bool with their (fractional) ``wrong`` (N,).

    Why: the difference estimator's variance is that of e - q0; an over- or under-confident model (the
    common case) makes it larger than that of e alone. The fit is shrunk towards (0, 1) (a calibrated
    model) with ``prior_weight`` (keeps the fit finite when the known tasks separate). Any control variate keeps
    the estimator unbiased; a better one only narrows it.
    """
    x = np.log(np.clip(q0, 1e-4, 1 - 1e-4)) - np.log1p(-np.clip(q0, 1e-4, 1 - 1e-4))
    xs, ys = x[known], wrong[known]
    theta0 = np.array([0.0, 1.0])
    theta = theta0.copy()
    design = np.stack([np.ones_like(xs), xs], axis=1)
    for _ in range(50):
        mu = 1 / (1 + np.exp(-np.clip(design @ theta, -30, 30)))
        grad = design.T @ (mu - ys) + prior_weight * (theta - theta0)
        hess = (design * (mu * (1 - mu))[:, None]).T @ design + prior_weight * np.eye(2)
        step = np.linalg.solve(hess, grad)
        step *= min(1.0, 1.0 / max(np.max(np.abs(step)), 1e-12))  # damped: no overshoot on near-separable data
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return 1 / (1 + np.exp(-np.clip(theta[0] + theta[1] * x, -30, 30)))


def _initial_wrong_prob(given, q, counts, initial, settled, audits) -> np.ndarray:
    """The model's P(initial label wrong) for every task: given, or ``wrong_prob`` where the current label
    is the initial one, the draw-time figure for audited tasks, 1 for other changed tasks (outside the bands)."""
    n = counts.shape[0]
    if given is not None:
        q0 = np.asarray(given, dtype=float)
        if q0.shape != (n,) or not np.all(np.isfinite(q0)) or np.any(q0 < 0) or np.any(q0 > 1):
            raise ValueError(f"initial_wrong_prob must be (N,) = ({n},) probabilities in [0, 1]")
        return q0
    current = np.where(settled, counts.argmax(axis=1), initial)
    q0 = np.where(current == initial, q, 1.0)
    for a in audits:
        q0[a.task] = a.wrong_prob
    return q0


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


LEAST_COST_PER_FIX = 2  # re-annotations: two agreeing opinions outvote one initial label


@dataclass(frozen=True)
class FixCost:
    """What one corrected label costs, as the forecast consumes it."""

    per_fix: float  # re-annotations per corrected label (point)
    rate_low: float  # corrected labels per re-annotation, interval
    rate_high: float
    basis: str


def fix_cost(*, changed: int, spent: int, confidence: float = 0.9) -> FixCost:
    """The cost of a fix from what the cleaning did so far: ``spent`` re-annotations changed ``changed``
    labels (Wilson interval on the changes per re-annotation). Before any change, the least a fix can cost
    (two agreeing opinions), whose upper range is then unknown (rate_low 0)."""
    if changed < 0 or spent < 0 or changed > spent:
        raise ValueError(f"need 0 <= changed <= spent (got changed={changed}, spent={spent})")
    if changed and spent:
        low, high = wilson_interval(changed, spent, confidence)
        return FixCost(spent / changed, low, high, f"{spent / changed:.2f} re-annotations per label changed so far "
                                                   f"({changed} changed)")
    return FixCost(float(LEAST_COST_PER_FIX), 0.0, 1.0 / LEAST_COST_PER_FIX,
                   f"{LEAST_COST_PER_FIX} re-annotations per fix, the least one can cost (no label changed yet)")


def wilson_interval(successes: int, trials: int, confidence: float = 0.9) -> tuple[float, float]:
    """Wilson's score interval of a binomial share."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


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
