"""What the demo achieved, measured against the truth it kept aside, from Label Studio's own annotations.

Label Studio is the source of truth: the report reads every task's annotations back from it, so it
checks the queue and the export rather than trusting them. A task's label is its strict-majority
label (``scoring.majority``) when it has one, otherwise its initial label: a re-annotation changes the
dataset only once a majority forms. The initial label is the task's earliest annotation (the import).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from label_studio_sdk import LabelStudio

from scoring.majority import has_strict_majority, majority_label


@dataclass(frozen=True)
class Reannotation:
    annotator: str  # the annotator's email (as the dashboard names them)
    row: int  # demo_id
    label: int  # class index
    lead_time: float  # seconds, as Label Studio measured them


@dataclass
class ProjectLabels:
    """Label counts read back from Label Studio, indexed by demo_id."""

    initial: np.ndarray  # (N,) the imported label's class index
    counts: np.ndarray  # (N, C) every non-cancelled annotation, the initial one included
    reannotations: list[Reannotation] = field(default_factory=list)
    open_slots: int = 0  # annotations Label Studio would still serve (overlap above the annotation count)

    @property
    def lead_time(self) -> float:
        return float(sum(r.lead_time for r in self.reannotations))

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
    emails = {int(u.id): u.email for u in client.users.list()}
    initial = np.full(n, -1)
    counts = np.zeros((n, len(class_names)), dtype=np.int64)
    reannotations: list[Reannotation] = []
    open_slots = 0
    for task in client.tasks.list(project=project_id, fields="all"):
        open_slots += max(0, int(_get(task, "overlap") or 0) - int(_get(task, "total_annotations") or 0))
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
                user = _get(annotation, "completed_by")
                who = emails.get(int(user), f"user {user}") if isinstance(user, int) else str(user)
                reannotations.append(Reannotation(who, k, index[label], float(_get(annotation, "lead_time") or 0.0)))
    if (initial < 0).any():
        raise ValueError(f"project {project_id}: {int((initial < 0).sum())} demo task(s) have no initial label")
    return ProjectLabels(initial, counts, reannotations, open_slots)


def per_annotator(labels: ProjectLabels) -> dict[str, dict]:
    """Per annotator (by email): re-annotations, seconds, and agreement with the final majority label of
    the settled tasks they re-annotated (None when none of theirs settled)."""
    final, settled = labels.labels(), labels.settled()
    out: dict[str, dict] = {}
    for r in labels.reannotations:
        entry = out.setdefault(r.annotator, {"annotations": 0, "seconds": 0.0, "_agree": 0, "_settled": 0})
        entry["annotations"] += 1
        entry["seconds"] += r.lead_time
        if settled[r.row]:
            entry["_settled"] += 1
            entry["_agree"] += int(final[r.row] == r.label)
    for entry in out.values():
        agree, on_settled = entry.pop("_agree"), entry.pop("_settled")
        entry["seconds"] = round(entry["seconds"], 1)
        entry["agreement_with_final"] = round(agree / on_settled, 3) if on_settled else None
        entry["on_settled_tasks"] = on_settled
    return dict(sorted(out.items()))


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
        "annotators": per_annotator(labels),
        "annotator_seconds": round(labels.lead_time, 1),
        "open_slots": labels.open_slots,
        **extra,
    }


def trace_point(status: dict, seconds: float) -> dict:
    """One poll of GET /api/status as the trace keeps it: spend, the estimate and its interval (None before
    an audit draw settled, with the reason), and the true accuracy (the demo wrote the truth)."""
    estimate, truth = status.get("estimate") or {}, status.get("truth") or {}
    available = bool(estimate.get("available"))
    low, high = estimate.get("accuracy_interval") or (None, None)
    return {"seconds": seconds, "spent": status.get("budget", {}).get("spent"),
            "estimate": estimate.get("accuracy") if available else None,
            "low": low if available else None, "high": high if available else None,
            "true": truth.get("accuracy"), **({} if available else {"reason": estimate.get("reason")})}


def trace_summary(trace: list[dict]) -> dict:
    """How often the interval held the truth: polls with an estimate, of them those whose interval holds the
    true accuracy, and polls without an estimate (before the first audit draw settled)."""
    shown = [p for p in trace if p["estimate"] is not None and p["true"] is not None]
    held = [p for p in shown if p["low"] - 1e-9 <= p["true"] <= p["high"] + 1e-9]
    return {"polls": len(trace), "with_estimate": len(shown), "interval_holds_truth": len(held),
            "without_estimate": sum(p["estimate"] is None for p in trace),
            "first_estimate_at_spent": shown[0]["spent"] if shown else None}


def _get(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def _choice(annotation) -> str | None:
    for region in _get(annotation, "result") or []:
        value = _get(region, "value") or {}
        choices = value.get("choices") if isinstance(value, dict) else getattr(value, "choices", None)
        if choices:
            return choices[0]
    return None
