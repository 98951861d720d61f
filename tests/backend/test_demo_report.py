"""The demo report's arithmetic: majority labels, spend, corrections, from label counts."""

from __future__ import annotations

import numpy as np

from backend.demo.report import ProjectLabels, Reannotation, summarise


def test_majority_decides_and_ties_keep_the_initial_label():
    initial = np.array([0, 1, 2, 0])
    counts = np.array([
        [1, 2, 0],  # initial 0 wrong, two re-annotations say 1: corrected
        [0, 1, 1],  # initial 1, one re-annotation says 2: tie, stays 1
        [0, 0, 2],  # initial 2 confirmed: settled, unchanged
        [1, 0, 0],  # never re-annotated
    ])
    reannotations = [Reannotation("ann@x", 0, 1, 2.0), Reannotation("bob@x", 0, 1, 3.0), Reannotation("ann@x", 1, 2, 4.0),
                     Reannotation("bob@x", 2, 2, 3.5)]
    labels = ProjectLabels(initial, counts, reannotations)
    assert labels.spent == 4
    assert labels.labels().tolist() == [1, 1, 2, 0]
    assert labels.settled().tolist() == [True, False, True, False]
    report = summarise(labels, np.array([1, 2, 2, 1]), order="priority")
    assert report["initial_accuracy"] == 0.25 and report["final_accuracy"] == 0.5
    assert report["labels_changed"] == 1 and report["labels_corrected"] == 1 and report["labels_broken"] == 0
    assert report["tasks_settled"] == 2 and report["annotations_spent"] == 4
    assert report["net_corrections_per_annotation"] == 0.25
    assert report["order"] == "priority"
    assert report["annotator_seconds"] == 12.5
    # ann: task 0 (settled, agrees) and task 1 (a tie: not settled, not counted); bob: tasks 0 and 2, both agree
    assert report["annotators"] == {
        "ann@x": {"annotations": 2, "seconds": 6.0, "agreement_with_final": 1.0, "on_settled_tasks": 1},
        "bob@x": {"annotations": 2, "seconds": 6.5, "agreement_with_final": 1.0, "on_settled_tasks": 2},
    }


def test_agreement_counts_a_dissent_against_the_final_majority():
    labels = ProjectLabels(np.array([0]), np.array([[1, 2, 1]]),
                           [Reannotation("a@x", 0, 1, 1.0), Reannotation("b@x", 0, 1, 1.0), Reannotation("c@x", 0, 2, 1.0)])
    people = summarise(labels, np.array([1]))["annotators"]
    assert people["c@x"]["agreement_with_final"] == 0.0 and people["a@x"]["agreement_with_final"] == 1.0


def test_a_majority_on_a_wrong_class_counts_as_broken():
    labels = ProjectLabels(np.array([0]), np.array([[1, 2]]))
    report = summarise(labels, np.array([0]))
    assert report["labels_broken"] == 1 and report["net_corrections_per_annotation"] == -0.5


def test_nothing_spent_reports_zero_per_annotation():
    labels = ProjectLabels(np.array([0, 1]), np.eye(2, dtype=int))
    assert summarise(labels, np.array([0, 0]))["net_corrections_per_annotation"] == 0.0


def test_the_estimate_trace_keeps_each_poll_and_counts_the_intervals_that_hold_the_truth():
    from backend.demo.report import trace_point, trace_summary

    before = trace_point({"budget": {"spent": 2}, "estimate": {"available": False, "reason": "no audit draw yet"},
                          "truth": {"accuracy": 0.805}}, 12.0)
    assert before == {"seconds": 12.0, "spent": 2, "estimate": None, "low": None, "high": None, "true": 0.805,
                      "reason": "no audit draw yet"}
    polls = [before] + [trace_point({"budget": {"spent": s}, "truth": {"accuracy": t},
                                     "estimate": {"available": True, "accuracy": a, "accuracy_interval": [lo, hi]}}, 20.0)
                        for s, t, a, lo, hi in ((10, 0.81, 0.80, 0.75, 0.85), (20, 0.83, 0.90, 0.86, 0.94))]
    assert trace_summary(polls) == {"polls": 3, "with_estimate": 2, "interval_holds_truth": 1, "without_estimate": 1,
                                    "first_estimate_at_spent": 10}
