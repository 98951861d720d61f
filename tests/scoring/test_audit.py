"""The random audit: its schedule spends its share front-loaded, its draws are uniform, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.audit import DEFAULT_AUDIT_SHARE, AuditDraw, audit_due, audit_target, draw_audit


def spend(budget: int, share: float, cost_per_task: int = 2) -> list[bool]:
    """Walk a budget task by task (each costing ``cost_per_task``); which openings were audits."""
    spent = audit_spent = 0
    kinds = []
    while spent < budget:
        audit = audit_due(audit_spent=audit_spent, spent=spent, budget=budget, share=share)
        cost = min(cost_per_task, budget - spent)
        spent += cost
        audit_spent += cost if audit else 0
        kinds.append(audit)
    return kinds


@pytest.mark.parametrize("budget, share", [(2000, 0.05), (400, 0.05), (1000, 0.1), (10_000, 0.02)])
def test_the_schedule_spends_its_share_of_the_budget(budget, share):
    kinds = spend(budget, share)
    audit_spent = 2 * sum(kinds)
    assert share * budget <= audit_spent <= share * budget + 2 + 1e-9  # one task's cost of overshoot at most


def test_the_schedule_is_front_loaded_and_starts_with_a_draw():
    kinds = spend(2000, 0.05)
    assert kinds[0]  # the very first opening is an audit: the estimate needs a draw early
    first_tenth = sum(kinds[: len(kinds) // 10])
    assert first_tenth >= 0.25 * sum(kinds)  # a tenth of the way in, a quarter or more of the audit is done


def test_share_zero_never_audits_and_the_default_is_five_percent():
    assert not any(spend(1000, 0.0))
    assert DEFAULT_AUDIT_SHARE == 0.05


def test_without_a_budget_the_audit_follows_the_spend():
    assert audit_due(audit_spent=0, spent=0, budget=None, share=0.05)
    assert not audit_due(audit_spent=5, spent=100, budget=None, share=0.05)
    assert audit_due(audit_spent=4, spent=100, budget=None, share=0.05)
    assert audit_target(spent=1000, budget=None, share=0.05) == pytest.approx(50)


def test_draws_are_uniform_over_the_untouched_pool():
    rng = np.random.default_rng(0)
    pool = np.array([3, 8, 11, 40, 41, 99, 120, 500])
    wrong = np.linspace(0.0, 0.9, pool.size)  # the draw must not lean towards suspicious tasks
    n = 8000
    hits = np.array([draw_audit(pool, wrong, seq=0, rng=rng).task for _ in range(n)])
    observed = np.array([np.sum(hits == t) for t in pool])
    expected = n / pool.size
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert chi2 < 24.3  # 99.9% point of chi-square with 7 degrees of freedom
    assert set(hits) == set(pool)


def test_a_draw_records_the_pool_and_the_model_at_draw_time():
    pool = np.array([5, 6, 7])
    draw = draw_audit(pool, np.array([0.1, 0.2, 0.3]), seq=12, rng=np.random.default_rng(1))
    assert draw.pool_size == 3 and draw.seq == 12
    assert draw.pool_wrong_prob == pytest.approx(0.6)
    assert draw.wrong_prob == pytest.approx({5: 0.1, 6: 0.2, 7: 0.3}[draw.task])
    assert AuditDraw.from_json(draw.to_json()) == draw


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: draw_audit(np.array([], dtype=int), np.array([]), seq=0, rng=np.random.default_rng()), "non-empty"),
        (lambda: draw_audit(np.array([1, 2]), np.array([0.1]), seq=0, rng=np.random.default_rng()), "align"),
        (lambda: draw_audit(np.array([1, 2]), np.array([0.1, 1.5]), seq=0, rng=np.random.default_rng()), "[0, 1]"),
        (lambda: audit_due(audit_spent=0, spent=10, budget=100, share=1.5), "share"),
        (lambda: audit_due(audit_spent=0, spent=-1, budget=100, share=0.05), ">= 0"),
        (lambda: audit_due(audit_spent=20, spent=10, budget=100, share=0.05), "audit_spent"),
        (lambda: AuditDraw(task=1, seq=0, pool_size=0, pool_wrong_prob=0.0, wrong_prob=0.0), "pool_size"),
        (lambda: AuditDraw.from_json({"task": 1}), "not an audit draw"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()
