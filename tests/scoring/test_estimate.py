"""The accuracy estimate: its interval holds the truth in repeated sampling, at every noise level, with a
miscalibrated model; None without audits; the forecast agrees with the estimate; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.audit import AuditDraw, audit_due, draw_audit
from scoring.estimate import AccuracyEstimate, estimate_accuracy, reannotations_to_reach
from scoring.majority import has_strict_majority
from scoring.simulation import label_is_correct

C = 4


def synthetic_project(n: int, noise: float, rng: np.random.Generator):
    """Annotator distributions (90% clear tasks, 10% ambiguous ones; the true class is the one most
    annotators give), initial labels with ``noise`` wrong (on the classes annotators confuse), and a model
    that ranks well but is badly calibrated: overconfident (a wrong label it believes gets a tiny
    wrong_prob) for half of the projects, underconfident (every label looks half wrong) for the other."""
    concentration = np.where(rng.random(n) < 0.1, 1.0, 0.1)
    probs = rng.dirichlet(np.ones(C), n) ** (1 / concentration[:, None])  # sharper for clear tasks
    probs = probs / probs.sum(axis=1, keepdims=True)
    truth = probs.argmax(axis=1)
    confusion = probs.copy()
    confusion[np.arange(n), truth] = 0.0
    confusion = confusion + 1e-3
    cdf = np.cumsum(confusion / confusion.sum(axis=1, keepdims=True), axis=1)
    other = np.minimum((cdf < rng.random(n)[:, None]).sum(axis=1), C - 1)
    initial = np.where(rng.random(n) < noise, other, truth)
    signal = np.where(initial != truth, rng.beta(2, 2, n), rng.beta(1, 15, n))
    believed = (initial != truth) & (rng.random(n) < 0.25)  # errors the model believes
    signal[believed] = rng.beta(1, 15, believed.sum())
    wrong_prob = signal**3 if rng.random() < 0.5 else 0.4 + 0.6 * signal
    return probs, truth, initial, wrong_prob


def clean(probs, initial, wrong_prob, *, budget, share, rng, checkpoints):
    """Ranked picks by wrong_prob plus audit draws, each re-annotated until a strict majority (cap 10).
    Yields (counts, touched_seq, audits) at each spend in ``checkpoints``."""
    n = len(initial)
    counts = np.eye(C, dtype=int)[initial]
    seq = np.full(n, -1)
    order = iter(np.argsort(-wrong_prob, kind="stable"))
    cdf = np.cumsum(probs, axis=1)
    audits: list[AuditDraw] = []
    spent = audit_spent = touched = 0
    marks = list(checkpoints)
    while spent < budget and marks:
        if audit_due(audit_spent=audit_spent, spent=spent, budget=budget, share=share):
            pool = np.flatnonzero(seq < 0)
            draw = draw_audit(pool, wrong_prob[pool], seq=touched, rng=rng)
            audits.append(draw)
            task, is_audit = draw.task, True
        else:
            task = next(t for t in order if seq[t] < 0)
            is_audit = False
        seq[task] = touched
        touched += 1
        for _ in range(10):
            if spent >= budget or has_strict_majority(counts[task]):
                break
            counts[task, np.searchsorted(cdf[task], rng.random() * cdf[task, -1], side="right")] += 1
            spent += 1
            audit_spent += is_audit
        while marks and spent >= marks[0]:
            marks.pop(0)
            yield counts.copy(), seq.copy(), list(audits)


LOW_NOISE_SHORTFALL = pytest.mark.xfail(
    strict=True,
    reason="known shortfall: at 2-5% noise a 5% audit of this budget is 6-15 draws; measured coverage 77% "
           "(ambiguous tasks whose majority overturns a right label bias the few draws pessimistically)",
)


@pytest.mark.slow
@pytest.mark.parametrize("noise", [pytest.param(0.02, marks=LOW_NOISE_SHORTFALL),
                                   pytest.param(0.05, marks=LOW_NOISE_SHORTFALL), 0.15, 0.30])
def test_the_interval_holds_the_truth_in_repeated_sampling(noise):
    """30 synthetic projects per noise level (N=1,500, budget 3 x N x noise, at least 300), a 5% audit,
    the estimate at a third of the budget and at its end: the 90% interval holds the true accuracy in at
    least 85% of checks and is not uninformative."""
    n, reps = 1500, 30
    budget = max(int(3 * n * noise), 300)
    held, widths, errors = [], [], []
    for rep in range(reps):
        rng = np.random.default_rng(1000 * rep + int(noise * 100))
        probs, truth, initial, wrong_prob = synthetic_project(n, noise, rng)
        for counts, seq, audits in clean(probs, initial, wrong_prob, budget=budget, share=0.05, rng=rng,
                                         checkpoints=[budget // 3, budget]):
            est = estimate_accuracy(counts=counts, initial_labels=initial, touched_seq=seq, audits=audits,
                                    wrong_prob=np.where(seq < 0, wrong_prob, 0.0), initial_wrong_prob=wrong_prob)
            true = label_is_correct(counts, truth).mean()
            assert est is not None
            held.append(est.low <= true <= est.high)
            widths.append(est.high - est.low)
            errors.append(est.accuracy - true)
    coverage = np.mean(held)
    assert coverage >= 0.85, f"90% interval held the truth in {coverage:.0%} of {len(held)} checks"
    assert np.mean(widths) < 0.3, f"mean interval width {np.mean(widths):.3f}"  # informative, not [0, 1]
    assert abs(np.mean(errors)) < 0.05, f"mean error {np.mean(errors):+.3f}"


def test_none_until_an_audit_draw_has_settled():
    counts = np.eye(3, dtype=int)[[0, 1, 2, 0]]
    seq = np.array([-1, 0, -1, -1])
    assert estimate_accuracy(counts=counts, initial_labels=np.array([0, 1, 2, 0]), touched_seq=seq, audits=[]) is None
    draw = AuditDraw(task=1, seq=0, pool_size=4, pool_wrong_prob=0.0, wrong_prob=0.0)
    # drawn but not re-annotated yet: still no basis
    assert estimate_accuracy(counts=counts, initial_labels=np.array([0, 1, 2, 0]), touched_seq=seq, audits=[draw]) is None
    counts[1, 1] += 1  # the draw settles on its initial label
    est = estimate_accuracy(counts=counts, initial_labels=np.array([0, 1, 2, 0]), touched_seq=seq, audits=[draw])
    assert isinstance(est, AccuracyEstimate) and est.n_audited == 1 and est.low <= est.accuracy <= est.high


def test_no_errors_in_a_few_draws_still_leaves_a_wide_interval():
    """0 of 9 audits wrong: the interval's upper count of wrong labels is far from zero."""
    n = 500
    initial = np.zeros(n, dtype=int)
    counts = np.eye(2, dtype=int)[initial]
    seq = np.full(n, -1)
    audits = []
    for k, task in enumerate(range(0, 90, 10)):
        audits.append(AuditDraw(task=task, seq=k, pool_size=n - k, pool_wrong_prob=0.01 * (n - k), wrong_prob=0.01))
        seq[task] = k
        counts[task, 0] += 1
    est = estimate_accuracy(counts=counts, initial_labels=initial, touched_seq=seq, audits=audits,
                            wrong_prob=np.full(n, 0.01))
    assert est.wrong_low == 0
    assert est.wrong_high >= 0.1 * n  # Wilson's 90% upper bound for 0 of 9 is about 23%
    assert est.accuracy > est.low


def test_the_forecast_follows_the_estimate_and_its_interval():
    est = AccuracyEstimate(n_tasks=1000, accuracy=0.9, low=0.86, high=0.93, wrong_left=100, wrong_low=70,
                           wrong_high=140, confidence=0.9, n_audited=20, n_cleaned=50, basis="b")
    f = reannotations_to_reach(est, 0.95, reannotations_per_fix=2.5, fix_rate_low=0.3, fix_rate_high=0.5,
                               remaining_budget=None)
    assert f.reannotations == 125  # (100 - 50) * 2.5
    assert f.low == 40 and f.high == 300  # (70 - 50) / 0.5, (140 - 50) / 0.3
    reached = reannotations_to_reach(est, 0.85, reannotations_per_fix=2.5, fix_rate_low=0.3, fix_rate_high=0.5,
                                     remaining_budget=10)
    assert reached.reannotations == 0 and reached.low == 0
    short = reannotations_to_reach(est, 0.99, reannotations_per_fix=2.5, fix_rate_low=0.3, fix_rate_high=0.5,
                                   remaining_budget=10)
    assert "beyond" in short.basis


def _ok():
    return dict(counts=np.eye(2, dtype=int)[[0, 1, 0, 1]], initial_labels=np.array([0, 1, 0, 1]),
                touched_seq=np.array([-1, -1, -1, -1]), audits=[])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"counts": np.zeros((4,), dtype=int)}, "counts must be"),
        ({"counts": -np.eye(2, dtype=int)[[0, 1, 0, 1]]}, ">= 0"),
        ({"initial_labels": np.array([0, 1, 0])}, "initial_labels"),
        ({"initial_labels": np.array([0, 1, 0, 5])}, "class indices"),
        ({"initial_labels": np.array([1, 0, 0, 1])}, "initial label"),
        ({"touched_seq": np.array([0, 0, -1, -1])}, "distinct"),
        ({"wrong_prob": np.array([0.1, 2.0, 0.1, 0.1])}, "wrong_prob"),
        ({"confidence": 1.5}, "confidence"),
        ({"audits": [AuditDraw(task=9, seq=0, pool_size=4, pool_wrong_prob=0.0, wrong_prob=0.0)]}, "outside"),
        ({"audits": [AuditDraw(task=1, seq=0, pool_size=4, pool_wrong_prob=0.0, wrong_prob=0.0)]}, "touched_seq"),
    ],
)
def test_bad_input_raises_a_clear_value_error(change, message):
    with pytest.raises(ValueError, match=message):
        estimate_accuracy(**(_ok() | change))


def test_bad_forecast_input_raises():
    est = AccuracyEstimate(n_tasks=10, accuracy=0.9, low=0.8, high=1.0, wrong_left=1, wrong_low=0, wrong_high=2,
                           confidence=0.9, n_audited=1, n_cleaned=0, basis="b")
    with pytest.raises(ValueError, match="target"):
        reannotations_to_reach(est, 1.5, reannotations_per_fix=2, fix_rate_low=0.1, fix_rate_high=0.5, remaining_budget=None)
    with pytest.raises(ValueError, match="fix_rate"):
        reannotations_to_reach(est, 0.9, reannotations_per_fix=2, fix_rate_low=0.6, fix_rate_high=0.5, remaining_budget=None)


def test_the_cost_of_a_fix_comes_from_the_changes_so_far_and_is_unknown_above_before_any():
    from scoring.estimate import fix_cost

    before = fix_cost(changed=0, spent=0)
    assert before.per_fix == 2 and before.rate_low == 0.0 and before.rate_high == 0.5
    cost = fix_cost(changed=10, spent=30)
    assert cost.per_fix == 3 and cost.rate_low < 1 / 3 < cost.rate_high and "10 changed" in cost.basis
    with pytest.raises(ValueError, match="changed <= spent"):
        fix_cost(changed=5, spent=3)
