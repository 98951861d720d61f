"""The cleaning queue against the fake: the window, the budget, settling, and a push that dies half-way."""

from __future__ import annotations

import pytest

from connectors.errors import LabelStudioUnavailable
from connectors.ledger import reconcile
from connectors.queue import on_annotation, push_window
from connectors.state import ProjectState, with_state

LABELS = ["cat", "dog", "bird"]


def make_project(fake, n: int = 10, budget: int | None = 6) -> tuple[int, list[int]]:
    pid = fake.add_project()
    ids = [fake.add_task(pid, {"image": f"{i}.png"}, [LABELS[i % 3]]) for i in range(n)]
    baseline = max(a["id"] for t in fake.tasks.values() for a in t["annotations"])
    fake.projects[pid]["expert_instruction"] = with_state("", ProjectState(budget=budget, baseline_annotation_id=baseline))
    return pid, ids


def push(client, pid, ids, version="m1", window=3, **kw):
    scores = [1.0 - i / len(ids) for i in range(len(ids))]  # the last task first
    return push_window(client, pid, task_ids=ids, scores=scores, priorities=[-s for s in scores],
                       noisiness=[0.5] * len(ids), ambiguity=[0.1] * len(ids), model_version=version,
                       window=window, **kw)


def open_ids(fake, pid) -> list[int]:
    return sorted(t["id"] for t in fake.tasks.values()
                  if t["project"] == pid and t["overlap"] > fake.n_annotators(t["id"]))


def test_push_opens_the_top_k_with_predictions_and_switches_the_version(fake, client_of):
    pid, ids = make_project(fake)
    result = push(client_of(fake), pid, ids, window=3)
    top3 = sorted(ids[-3:])
    assert result.opened == top3 and open_ids(fake, pid) == top3
    for tid in top3:
        task = fake.tasks[tid]
        assert (task["overlap"], task["is_labeled"]) == (2, False)
        [prediction] = task["predictions"]
        assert prediction["model_version"] == "m1"
        why = prediction["result"][0]["meta"]["alc"]
        assert why["priority"] == pytest.approx(-prediction["score"]) and why["noisiness"] == 0.5
    assert fake.tasks[ids[-1]]["predictions"][0]["score"] < fake.tasks[ids[-3]]["predictions"][0]["score"]
    assert all(not fake.tasks[t]["predictions"] for t in ids[:-3]), "only the window is pushed"
    # the ground-truth star is taken off opened tasks only (Label Studio's task lock ignores starred annotations)
    assert all(fake.starred(t) == [] for t in top3) and all(fake.starred(t) for t in ids[:-3])
    assert fake.projects[pid]["model_version"] == "m1"
    assert result.budget == {"total": 6, "spent": 0, "committed": 3, "held": 6, "remaining": 0, "exhausted": False}


def test_openings_never_hold_more_than_the_budget(fake, client_of):
    pid, ids = make_project(fake, budget=5)
    result = push(client_of(fake), pid, ids, window=5)  # each holds two opinions: two tasks, not five
    assert len(result.opened) == 2 and result.budget["held"] == 4 and result.budget["remaining"] == 1


def test_settle_on_majority_reopen_on_a_tie_close_at_the_cap(fake, client_of):
    pid, ids = make_project(fake, n=6, budget=20)
    client = client_of(fake)
    push(client, pid, ids, window=2)
    agree, tie = ids[-1], ids[-2]  # initial labels: ids[-1] -> LABELS[5 % 3] = bird, ids[-2] -> dog
    fake.annotate(agree, "bird", by=2)
    out = on_annotation(client, pid, agree, max_annotations=3)
    assert out["action"] == "settled" and fake.tasks[agree]["overlap"] == 2 and fake.tasks[agree]["is_labeled"]

    fake.annotate(tie, "cat", by=2)  # dog vs cat: no majority -> one more opinion
    out = on_annotation(client, pid, tie, max_annotations=3)
    assert out["action"].startswith("no majority") and fake.tasks[tie]["overlap"] == 3
    assert on_annotation(client, pid, tie, max_annotations=3)["action"] == "waiting for an open slot"
    fake.annotate(tie, "bird", by=3)  # dog, cat, bird: still none, and the cap (3) is reached
    out = on_annotation(client, pid, tie, max_annotations=3)
    assert out["action"].startswith("closed at the cap") and fake.tasks[tie]["overlap"] == 3
    assert fake.tasks[tie]["is_labeled"]

    # the next push skips both (settled / capped) and fills the window from the rest
    result = push(client, pid, ids, version="m2", window=2, max_annotations=3)
    assert result.opened == sorted(ids[-4:-2])


def test_a_tie_is_reopened_from_what_its_opening_held(fake, client_of):
    pid, ids = make_project(fake, n=4, budget=2)
    client = client_of(fake)
    assert push(client, pid, ids, window=2).opened == [ids[-1]], "two opinions held: one task"
    tid = ids[-1]  # initial label: cat
    fake.annotate(tid, "dog", by=2)  # cat vs dog; spent 1, the second opinion held for it
    out = on_annotation(client, pid, tid, max_annotations=5)
    assert out["action"].startswith("no majority") and fake.tasks[tid]["overlap"] == 3
    fake.annotate(tid, "dog", by=3)
    assert on_annotation(client, pid, tid, max_annotations=5)["action"] == "settled"
    assert reconcile(client, pid).final_labels[-1] == "dog", "a budget of 2 corrects one clear error"


def test_a_tie_is_not_reopened_beyond_the_budget(fake, client_of):
    pid, ids = make_project(fake, n=4, budget=2)
    client = client_of(fake)
    push(client, pid, ids, window=2)
    tid = ids[-1]
    fake.tasks[ids[0]]["overlap"] = 2  # someone opened another task by hand: its slot takes the last of B
    fake.annotate(tid, "dog", by=2)
    out = on_annotation(client, pid, tid, max_annotations=5)
    assert "not reopened" in out["action"] and fake.tasks[tid]["overlap"] == 2


def test_budget_spent_closes_the_window(fake, client_of):
    pid, ids = make_project(fake, n=5, budget=2)
    client = client_of(fake)
    push(client, pid, ids, window=3)
    [tid] = open_ids(fake, pid)  # initial label: dog
    fake.tasks[ids[0]]["overlap"] = 2  # someone opened another task by hand and annotated it
    fake.annotate(ids[0], "dog", by=2)
    fake.annotate(tid, "cat", by=2)  # a tie, and B spent
    out = on_annotation(client, pid, tid, max_annotations=5)
    assert out["action"] == "budget spent: window closed" and open_ids(fake, pid) == []
    assert push(client, pid, ids, version="m2", window=3).opened == []
    ledger = reconcile(client, pid)
    assert ledger.budget.as_dict() == {"total": 2, "spent": 2, "committed": 0, "held": 0, "remaining": 0,
                                       "exhausted": True}


def test_push_failing_half_way_is_retried_without_double_counting(fake, client_of):
    pid, ids = make_project(fake, n=10, budget=8)
    client = client_of(fake)
    fake.fail_after[("PATCH", "/api/tasks")] = 2  # two tasks opened, then Label Studio fails
    with pytest.raises(LabelStudioUnavailable):
        push(client, pid, ids, window=4)
    assert len(open_ids(fake, pid)) == 2
    fake.fail_after.clear()
    result = push(client, pid, ids, window=4)  # the same push again
    assert sorted(result.kept + result.opened) == sorted(ids[-4:]) == open_ids(fake, pid)
    assert all(fake.tasks[t]["overlap"] == 2 for t in ids[-4:]), "overlaps set, not incremented"
    for tid in ids[-4:]:
        assert [p["model_version"] for p in fake.tasks[tid]["predictions"]] == ["m1"], "no duplicate predictions"
    assert result.budget == {"total": 8, "spent": 0, "committed": 4, "held": 8, "remaining": 0, "exhausted": False}
    again = push(client, pid, ids, window=4)
    assert again.opened == [] and again.predictions == 0


def test_open_tasks_stay_open_across_a_re_rank(fake, client_of):
    pid, ids = make_project(fake, n=8, budget=10)
    client = client_of(fake)
    push(client, pid, ids, window=2)
    reversed_scores = [i / len(ids) for i in range(len(ids))]  # now the first task first
    result = push_window(client, pid, task_ids=ids, scores=reversed_scores, model_version="m2", window=3)
    assert result.kept == sorted(ids[-2:]) and result.opened == [ids[0]]
    assert all(any(p["model_version"] == "m2" for p in fake.tasks[t]["predictions"]) for t in ids[-2:] + [ids[0]])


def test_unlabelled_tasks_are_labelling_work_not_budget(fake, client_of):
    pid, ids = make_project(fake, n=4, budget=4)
    blank = fake.add_task(pid, {"image": "new.png"})  # no label yet: Label Studio serves it (overlap 1)
    client = client_of(fake)
    result = push(client, pid, ids + [blank], window=3)
    assert len(result.opened) == 2 and blank not in result.opened + result.closed
    assert result.budget["committed"] == 2
    assert fake.tasks[blank]["overlap"] == 1, "the queue leaves plain labelling alone"


def test_connect_records_the_baseline_and_closes_tasks_open_outside_the_queue(fake, client_of):
    from connectors.setup import configure_project
    from connectors.state import read_state

    pid = fake.add_project(description="Cats and dogs.")
    a = fake.add_task(pid, {"image": "a"}, ["cat"])
    b = fake.add_task(pid, {"image": "b"}, ["dog"])
    fake.tasks[b]["overlap"] = 3  # left over from a 'maximum annotations = 3' setting
    client = client_of(fake)
    report = configure_project(client, pid, budget=9, window=4)
    assert fake.tasks[b]["overlap"] == 1 and fake.tasks[b]["is_labeled"]
    assert report["closed"].startswith("1 labelled task")
    state = read_state(client, pid)
    baseline = max(x["id"] for x in fake.tasks[a]["annotations"] + fake.tasks[b]["annotations"])
    assert (state.budget, state.window, state.baseline_annotation_id) == (9, 4, baseline)
    assert fake.projects[pid]["description"].startswith("Cats and dogs.")
    assert fake.projects[pid]["sampling"] == "Uncertainty sampling" and fake.projects[pid]["show_overlap_first"]
    assert [v["data"]["title"] for v in fake.views] == ["Cleaning queue"]

    fake.annotate(a, "dog", by=2)
    again = configure_project(client, pid)  # again: the baseline stays, the tab is not duplicated
    assert read_state(client, pid).baseline_annotation_id == baseline and "kept" in again["baseline"]
    assert len(fake.views) == 1 and read_state(client, pid).budget == 9


def test_overlap_counts_distinct_annotators_like_label_studio(fake, client_of):
    """Two initial labels by the importing user are one annotator to Label Studio: one slot = overlap 2."""
    pid = fake.add_project()
    tid = fake.add_task(pid, {"image": "a"}, ["cat", "dog"])
    baseline = max(fake.tasks[tid]["annotations"][-1]["id"], 0)
    fake.projects[pid]["expert_instruction"] = with_state("", ProjectState(budget=3, baseline_annotation_id=baseline))
    client = client_of(fake)
    assert push_window(client, pid, task_ids=[tid], scores=[0.1], model_version="m", window=1).opened == [tid]
    assert (fake.tasks[tid]["overlap"], fake.tasks[tid]["is_labeled"]) == (2, False)
    fake.annotate(tid, "bird", by=2)  # cat, dog, bird: no majority, and Label Studio closed it (2 annotators)
    assert fake.tasks[tid]["is_labeled"]
    assert on_annotation(client, pid, tid, max_annotations=5)["action"] == "no majority: one more opinion asked"
    assert fake.tasks[tid]["overlap"] == 3 and reconcile(client, pid).budget.committed == 1


def test_apply_plan_asks_for_its_openings_once_and_opens_only_those_granted(fake, client_of):
    from connectors.counts import read_project
    from connectors.ledger import budget_of
    from connectors.plan import apply_plan, entries_of, plan_window

    pid, ids = make_project(fake, n=10, budget=None)
    client = client_of(fake)
    snap = read_project(client, pid)
    entries = entries_of(ids, [i / 10 for i in range(10)])
    plan = plan_window(snap.tasks, entries, budget=budget_of(snap, None), window=4, max_annotations=5,
                       model_version="m1")
    asked: list[list[tuple[int, int]]] = []

    def reserve(openings: list[tuple[int, int]]) -> list[int]:
        asked.append(openings)
        return [t for t, _ in openings[:2]]  # the budget grants two of the four

    result = apply_plan(client, snap.config, plan, entries, {t.id: t for t in snap.tasks}, max_annotations=5,
                        reserve=reserve)
    assert asked == [[(t, 2) for t in plan.open]], "each opening asks for what it reserves: two opinions"
    assert result.opened == sorted(plan.open[:2]) == open_ids(fake, pid)
    seqs = [fake.tasks[t]["data"]["alc_seq"] for t in plan.open[:2]]
    assert seqs == [0, 1] and all(fake.tasks[t]["data"]["alc_hold"] == 2 for t in plan.open[:2])
