"""The window's decisions without Label Studio: task records and a budget in, a Plan or a Decision out."""

from __future__ import annotations

from connectors.counts import AnnotationRecord, TaskRecord
from connectors.ledger import Budget
from connectors.plan import after_annotation, entries_of, plan_window, task_patch

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


def plan(tasks, budget, window=2, spares=0):
    ids = [t.id for t in tasks]
    entries = entries_of(ids, [0.1 * i for i in range(len(ids))], priorities=[-0.1 * i for i in range(len(ids))])
    return plan_window(tasks, entries, budget=budget, window=window, max_annotations=3, model_version="v",
                       spares=spares)


def test_fills_the_window_in_score_order_within_the_budget_and_names_spares():
    tasks = [task(i, ["cat"]) for i in range(1, 7)]
    p = plan(tasks, Budget(10, 0, 0), window=2, spares=2)
    assert (p.open, p.keep, p.close) == ([1, 2], [], []) and p.predict == [1, 2, 3, 4]
    assert p.budget.as_dict()["committed"] == 2
    assert plan(tasks, Budget(1, 0, 0), window=2).open == [1], "one slot of budget: one task"


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
