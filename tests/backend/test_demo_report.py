"""The demo report's arithmetic: majority labels, spend, corrections, from label counts."""

from __future__ import annotations

import numpy as np

from backend.demo.report import ProjectLabels, summarise


def test_majority_decides_and_ties_keep_the_initial_label():
    initial = np.array([0, 1, 2, 0])
    counts = np.array([
        [1, 2, 0],  # initial 0 wrong, two re-annotations say 1: corrected
        [0, 1, 1],  # initial 1, one re-annotation says 2: tie, stays 1
        [0, 0, 2],  # initial 2 confirmed: settled, unchanged
        [1, 0, 0],  # never re-annotated
    ])
    labels = ProjectLabels(initial, counts, {"7": 4}, 12.5)
    assert labels.spent == 4
    assert labels.labels().tolist() == [1, 1, 2, 0]
    assert labels.settled().tolist() == [True, False, True, False]
    report = summarise(labels, np.array([1, 2, 2, 1]), order="priority")
    assert report["initial_accuracy"] == 0.25 and report["final_accuracy"] == 0.5
    assert report["labels_changed"] == 1 and report["labels_corrected"] == 1 and report["labels_broken"] == 0
    assert report["tasks_settled"] == 2 and report["annotations_spent"] == 4
    assert report["net_corrections_per_annotation"] == 0.25
    assert report["order"] == "priority"


def test_a_majority_on_a_wrong_class_counts_as_broken():
    labels = ProjectLabels(np.array([0]), np.array([[1, 2]]), {}, 0.0)
    report = summarise(labels, np.array([0]))
    assert report["labels_broken"] == 1 and report["net_corrections_per_annotation"] == -0.5


def test_nothing_spent_reports_zero_per_annotation():
    labels = ProjectLabels(np.array([0, 1]), np.eye(2, dtype=int), {}, 0.0)
    assert summarise(labels, np.array([0, 0]))["net_corrections_per_annotation"] == 0.0
