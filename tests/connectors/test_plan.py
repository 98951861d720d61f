"""The window's decisions without Label Studio: task records and a budget in, a Plan or a Decision out."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from connectors.counts import AnnotationRecord, TaskRecord
from connectors.ledger import Budget
from connectors.plan import (AuditPolicy, Opening, after_annotation, entries_of, held, held_total, opening_cost,
                             plan_window, task_patch)

CLASSES = ["cat", "dog", "bird"]


def task(tid: int, labels: list[str], overlap: int | None = None) -> TaskRecord:
    """A task whose first label is its initial one; each label by another user."""
    annotations = [AnnotationRecord(id=tid * 10 + k, annotator=f"u{k}", annotator_id=k, created_at=None,
                                    updated_at=None, lead_time=None, label=label, cancelled=False, initial=k == 0,
                                    valid=True) for k, label in enumerate(labels)]
    counts = [labels.count(c) for c in CLASSES]
    initial = [int(labels[0] == c) for c in CLASSES]
    return TaskRecord(tid, {"image": f"{tid}.png"}, overlap if overlap is not None else len(labels), annotations, [],
                      labels[0], True, counts, initial)


def plan(tasks, budget, window=2, spares=0, ambiguity=None, audit=None, max_annotations=3):
    ids = [t.id for t in tasks]
    entries = entries_of(ids, [0.1 * i for i in range(len(ids))], priorities=[-0.1 * i for i in range(len(ids))],
                         ambiguity=ambiguity)
    return plan_window(tasks, entries, budget=budget, window=window, max_annotations=max_annotations,
                       model_version="v", spares=spares, audit=audit)


def test_fills_the_window_in_score_order_within_the_budget_and_names_spares():
    tasks = [task(i, ["cat"]) for i in range(1, 7)]
    p = plan(tasks, Budget(10, 0, 0), window=2, spares=2)
    assert (p.open, p.keep, p.close) == ([1, 2], [], []) and p.predict == [1, 2, 3, 4]
    assert p.budget.as_dict()["committed"] == 2 and p.budget.held == 4, "each opening holds two opinions"
    assert plan(tasks, Budget(1, 0, 0), window=2).open == [], "one opinion cannot overturn a label: nothing opens"
    assert plan(tasks, Budget(3, 0, 0), window=2).open == [1], "three opinions finish one task, not two"


def test_keeps_what_waits_for_its_annotation_and_closes_what_is_done():
    waiting = task(1, ["cat"], overlap=2)  # open, its annotation not there yet
    settled = task(2, ["cat", "cat"], overlap=3)  # open but settled meanwhile
    capped = task(3, ["cat", "dog", "bird"], overlap=4)  # at the cap of 3
    rest = [task(i, ["dog"]) for i in (4, 5)]
    p = plan([waiting, settled, capped, *rest], Budget(10, 3, 3), window=2)
    assert p.keep == [1] and p.close == [2, 3] and p.open == [4]


def test_a_spent_budget_closes_everything_and_opens_nothing():
    tasks = [task(1, ["cat", "dog"], overlap=3), task(2, ["dog"])]
    p = plan(tasks, Budget(1, 1, 1), window=5)
    assert p.close == [1] and p.open == [] and p.predict == []


def test_a_shrunk_budget_closes_the_lowest_priority_open_tasks():
    tasks = [task(i, ["cat"], overlap=2) for i in (1, 2, 3)]  # three open, B now only pays for one
    p = plan(tasks, Budget(1, 0, 3), window=5)
    assert p.keep == [1] and sorted(p.close) == [2, 3]


def test_opening_only_the_granted():
    p = plan([task(i, ["cat"]) for i in (1, 2, 3)], Budget(None, 0, 0), window=3)
    assert p.opening_only([2]).open == [2] and p.opening_only([2]).budget.committed == 1
    assert p.opening_only([2]).budget.held == 2 and list(p.opening_only([2]).openings) == [2]


def test_an_ambiguous_image_reserves_a_third_opinion_and_a_clear_one_fits_where_it_does_not():
    ambiguous, clear = task(1, ["cat"]), task(2, ["cat"])
    entries = entries_of([1, 2], [0.1, 0.2], ambiguity=[0.9 * np.log(3), 0.1])
    assert opening_cost(ambiguous, entries[1], 5) == 3 and opening_cost(clear, entries[2], 5) == 2
    assert opening_cost(ambiguous, entries[1], 2) == 1, "never more than the cap allows"
    p = plan([ambiguous, clear], Budget(2, 0, 0), window=5, ambiguity=[0.9 * np.log(3), 0.1], max_annotations=5)
    assert p.open == [2] and p.openings[2].cost == 2


def test_what_a_task_holds_follows_its_counts_and_what_its_opening_reserved():
    assert held(task(1, ["cat"]), 5) == 0, "never opened: holds nothing"
    assert held(task(1, ["cat"], overlap=2), 5) == 2, "open on one label: two agreeing opinions overturn it"
    assert held(task(1, ["cat", "dog"]), 5) == 1, "a tie: one opinion breaks it"
    assert held(task(1, ["cat", "dog"], overlap=3), 5) == 1
    assert held(task(1, ["cat", "cat"]), 5) == 0, "settled"
    assert held(task(1, ["cat", "dog", "bird"]), 3) == 0, "at the cap"
    reserved = task(1, ["cat", "dog"])
    reserved.data["alc_hold"] = 3  # an ambiguous image: three reserved, one spent
    assert held(reserved, 5) == 2


def test_a_tie_is_finished_before_any_new_task_opens():
    tie = task(1, ["cat", "dog"])  # in cleaning, its extra slot not open yet
    fresh = [task(i, ["cat"]) for i in (2, 3, 4)]
    p = plan([*fresh, tie], Budget(4, 1, 0), window=2)  # 3 left: the tie holds 1, one new task 2
    assert p.open[0] == 1 and p.open == [1, 2] and 1 not in p.openings
    p = plan([*fresh, tie], Budget(4, 1, 0), window=1)
    assert p.open == [1], "one free place: the tie's"
    p = plan([*fresh, tie], Budget(2, 1, 0), window=5)
    assert p.open == [1], "the budget runs low: finish, open nothing new"


def test_an_audit_draw_takes_its_share_from_the_untouched_pool_and_is_served_first():
    from scoring.audit import AuditDraw

    tasks = [task(i, ["cat"]) for i in range(1, 41)]
    tasks[0] = task(1, ["cat"], overlap=2)  # already in cleaning: not in the pool
    audit = AuditPolicy(0.05, np.random.default_rng(0))
    p = plan(tasks, Budget(100, 0, 1), window=10, audit=audit)
    draws = [o.audit for o in p.openings.values() if o.audit is not None]
    assert draws and all(isinstance(d, AuditDraw) for d in draws)
    # the untouched pool at the draw: never opened, nor opened earlier in this plan
    assert all(d.pool_size == 39 - p.open.index(d.task) and d.task != 1 for d in draws), draws
    assert p.predict[1:1 + len(draws)] == [d.task for d in draws], "after the kept task, audits served first"
    assert plan(tasks, Budget(100, 0, 1), window=10, audit=AuditPolicy(0.0, np.random.default_rng(0))).openings
    assert not [o for o in plan(tasks, Budget(100, 0, 1), window=10).openings.values() if o.audit is not None]


def test_an_opening_records_what_it_reserved_its_order_and_its_draw():
    from scoring.audit import AuditDraw

    draw = AuditDraw(task=7, seq=4, pool_size=30, pool_wrong_prob=3.0, wrong_prob=0.1)
    body = task_patch(task(7, ["cat"]), 2, CLASSES, 5, opening=Opening(2, draw, 4))
    assert body["data"]["alc_hold"] == 2 and body["data"]["alc_seq"] == 4
    assert AuditDraw.from_json(body["data"]["alc_audit"]) == draw


def settle_in_worst_case(tasks, opened, budget, max_annotations):
    """Annotate every opened task until it settles or reaches the cap, each opinion the most troublesome
    one (always the runner-up class, so ties and overturns need the most); the re-annotations spent."""
    spent = 0
    for t in tasks:
        if t.id not in opened:
            continue
        labels = [a.label for a in t.annotations]
        while True:
            counts = [labels.count(c) for c in CLASSES]
            if len(labels) >= max_annotations or (sum(counts) > 1 and sorted(counts)[-1] > sorted(counts)[-2]):
                break
            order = sorted(range(len(CLASSES)), key=lambda c: -counts[c])
            labels.append(CLASSES[order[1]])
            spent += 1
    return spent


@hypothesis_settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 40), spent=st.integers(0, 10), window=st.integers(1, 12), n=st.integers(0, 25),
       cap=st.integers(2, 6), ambiguous=st.lists(st.booleans(), min_size=25, max_size=25),
       audit_share=st.sampled_from([0.0, 0.05, 0.3]), seed=st.integers(0, 3))
def test_the_plan_never_opens_more_than_the_budget_can_settle(total, spent, window, n, cap, ambiguous, audit_share,
                                                              seed):
    tasks = [task(i, ["cat"]) for i in range(1, n + 1)]
    spent = min(spent, total)
    ambiguity = [1.0 if a else 0.1 for a in ambiguous[:n]]
    p = plan(tasks, Budget(total, spent, 0), window=window, ambiguity=ambiguity, max_annotations=cap,
             audit=AuditPolicy(audit_share, np.random.default_rng(seed)) if audit_share else None)
    assert len(p.open) <= window and len(set(p.open)) == len(p.open)
    assert sum(o.cost for o in p.openings.values()) <= total - spent, "reserved within what is left"
    # however the opinions fall (each the least helpful one), every opened task reaches a majority or the cap
    # within the budget left, and each one's reservation covers its own worst case
    worst = settle_in_worst_case(tasks, set(p.open), total - spent, cap)
    assert worst <= sum(min(o.cost, cap - 1) for o in p.openings.values()) <= total - spent
    assert p.budget.held == held_total([], cap) + sum(o.cost for o in p.openings.values())


def test_after_annotation():
    budget = Budget(5, 1, 0)
    assert after_annotation(task(1, ["cat", "cat"]), budget, 3).action == "close"
    assert after_annotation(task(1, ["cat", "dog", "bird"]), budget, 3).reason.startswith("closed at the cap")
    assert after_annotation(task(1, ["cat", "dog"]), budget, 3).action == "open"
    assert after_annotation(task(1, ["cat", "dog"], overlap=3), budget, 3).action == "none"  # its slot is open
    assert after_annotation(task(1, ["cat", "dog"]), Budget(1, 1, 0), 3).action == "close-all"
    assert after_annotation(task(1, ["cat"]), budget, 3).action == "none"  # no re-annotation yet


def test_one_patch_body_closes_a_task_and_records_the_result_in_its_data():
    changed = task(1, ["cat", "dog", "dog"], overlap=4)
    body = task_patch(changed, changed.n_annotators, CLASSES, max_annotations=5)
    assert body["overlap"] == 3 and body["is_labeled"] is True
    assert body["data"] == {"image": "1.png", "alc_status": "settled", "alc_final_label": "dog", "alc_changed": True}
    tie = task(2, ["cat", "dog"])
    body = task_patch(tie, tie.n_annotators + 1, CLASSES, max_annotations=5)
    assert body["is_labeled"] is False and body["data"]["alc_status"] == "open"
    assert body["data"]["alc_final_label"] == "cat" and body["data"]["alc_changed"] is False


@hypothesis_settings(max_examples=200, deadline=None)
@given(total=st.integers(0, 30), window=st.integers(1, 8), n_fresh=st.integers(0, 12), n_ties=st.integers(0, 5),
       n_open=st.integers(0, 3))
def test_ties_are_finished_before_new_tasks_and_new_ones_fit_beside_what_is_held(total, window, n_fresh, n_ties,
                                                                                  n_open):
    ties = [task(100 + i, ["cat", "dog"]) for i in range(n_ties)]  # in cleaning, extra opinion not asked yet
    waiting = [task(200 + i, ["cat"], overlap=2) for i in range(n_open)]  # open, holding two each
    fresh = [task(i, ["cat"]) for i in range(1, n_fresh + 1)]
    tasks = fresh + ties + waiting
    spent = n_ties
    total = max(total, spent)
    before = held_total(tasks, 5)
    p = plan(tasks, Budget(total, spent, n_open, before), window=window, max_annotations=5)
    opened_ties = [t for t in p.open if t >= 100 and t < 200]
    new = [t for t in p.open if t < 100]
    if new:
        assert len(opened_ties) == n_ties, "a new task opened while a tie waited"
    assert p.open[:len(opened_ties)] == opened_ties, "ties first"
    assert sum(p.openings[t].cost for t in new) <= max(0, total - spent - before)
    assert len(p.open) + n_open <= max(window, n_open) and spent + n_open + len(p.open) <= max(total, spent + n_open)
