"""What the demo achieved, measured against the truth it kept aside, from Label Studio's own annotations.

Label Studio is the source of truth: the report reads every task's annotations back from it, so it
checks the queue and the export rather than trusting them. A task's label is its strict-majority
label (``scoring.majority``) when it has one, otherwise its initial label: a re-annotation changes the
dataset only once a majority forms. The initial label is the task's earliest annotation (the import).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from label_studio_sdk import LabelStudio

from scoring.majority import has_strict_majority, majority_label


@dataclass
class ProjectLabels:
    """Label counts read back from Label Studio, indexed by demo_id."""

    initial: np.ndarray  # (N,) the imported label's class index
    counts: np.ndarray  # (N, C) every non-cancelled annotation, the initial one included
    annotators: dict[str, int]  # re-annotations per annotator (Label Studio user id -> count)
    lead_time: float  # seconds, summed over re-annotations

    @property
    def spent(self) -> int:
        """Re-annotations: every annotation beyond each task's initial one."""
        return int(self.counts.sum() - len(self.initial))

    def labels(self) -> np.ndarray:
        """Majority label where a strict majority exists, else the initial label."""
        out = self.initial.copy()
        for k, row in enumerate(self.counts):
            if has_strict_majority(row):
                out[k] = majority_label(row)
        return out

    def settled(self) -> np.ndarray:
        """Tasks that were re-annotated and reached a strict majority."""
        return (self.counts.sum(axis=1) > 1) & has_strict_majority(self.counts)


def read_labels(client: LabelStudio, project_id: int, class_names: list[str], n: int) -> ProjectLabels:
    """Read every task's annotations (paged, all fields) into counts per class, indexed by data.demo_id."""
    index = {name: c for c, name in enumerate(class_names)}
    initial = np.full(n, -1)
    counts = np.zeros((n, len(class_names)), dtype=np.int64)
    annotators: dict[str, int] = {}
    lead_time = 0.0
    for task in client.tasks.list(project=project_id, fields="all"):
        k = int(task.data["demo_id"])
        annotations = sorted((a for a in (task.annotations or []) if not _get(a, "was_cancelled")),
                             key=lambda a: (str(_get(a, "created_at")), _get(a, "id")))
        for position, annotation in enumerate(annotations):
            label = _choice(annotation)
            if label not in index:
                raise ValueError(f"task {task.id}: label {label!r} is not one of the project's classes")
            counts[k, index[label]] += 1
            if position == 0:
                initial[k] = index[label]
            else:
                who = str(_get(annotation, "completed_by"))
                annotators[who] = annotators.get(who, 0) + 1
                lead_time += float(_get(annotation, "lead_time") or 0.0)
    if (initial < 0).any():
        raise ValueError(f"project {project_id}: {int((initial < 0).sum())} demo task(s) have no initial label")
    return ProjectLabels(initial, counts, annotators, lead_time)


def summarise(labels: ProjectLabels, true_labels: np.ndarray, **extra) -> dict:
    """The report's figures: accuracy before/after, spend, settled tasks, changes, corrections per annotation."""
    true_labels = np.asarray(true_labels)
    final = labels.labels()
    initial_ok = labels.initial == true_labels
    final_ok = final == true_labels
    changed = final != labels.initial
    corrected = int((changed & ~initial_ok & final_ok).sum())
    broken = int((changed & initial_ok & ~final_ok).sum())
    spent = labels.spent
    return {
        "tasks": int(len(true_labels)),
        "initial_accuracy": round(float(initial_ok.mean()), 4),
        "final_accuracy": round(float(final_ok.mean()), 4),
        "annotations_spent": spent,
        "tasks_settled": int(labels.settled().sum()),
        "labels_changed": int(changed.sum()),
        "labels_corrected": corrected,
        "labels_broken": broken,
        "net_corrections_per_annotation": round((corrected - broken) / spent, 4) if spent else 0.0,
        "annotations_per_annotator": labels.annotators,
        "annotator_seconds": round(labels.lead_time, 1),
        **extra,
    }


def _get(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _choice(annotation) -> str | None:
    for region in _get(annotation, "result") or []:
        value = _get(region, "value") or {}
        choices = value.get("choices") if isinstance(value, dict) else getattr(value, "choices", None)
        if choices:
            return choices[0]
    return None
