"""The budget and what it bought, rebuilt from Label Studio at any time (``reconcile``); nothing here is the only copy.

The budget B counts re-annotations: annotations beyond each task's initial one(s) (see
:mod:`connectors.counts` for what is initial). At any moment

- ``spent``: re-annotations that exist in Label Studio (skipped ones excluded, deleted ones gone);
- ``committed``: open slots, i.e. annotations Label Studio will still serve (a task's overlap above its
  annotation count); the queue opens a slot only when the budget can pay for it;
- ``held``: what the tasks in cleaning still need to settle (:func:`connectors.plan.held`: 2 for a task
  opened on one initial label, 1 for a tie, ...), at least their open slots: the queue opens a new task only
  when the budget neither spent nor held can pay what it reserves, so it finishes what it starts;
- ``remaining = B - spent - held``; the project is ``exhausted`` once ``spent >= B``.

B itself is the project's (``alc connect --budget``, kept in Label Studio, :mod:`connectors.state`);
a project without one uses the ``budget`` handed in (the ALC_BUDGET setting); neither means no limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from label_studio_sdk import LabelStudio

from connectors.client import task_url
from connectors.counts import ProjectSnapshot, read_project

from scoring.majority import has_strict_majority  # pure numpy, shared with the simulation so both settle alike

NO_CAP = 10**9  # a ledger read without the cap on annotations per task: only the counts bound what a task holds


@dataclass(frozen=True)
class Budget:
    total: int | None  # None: no limit
    spent: int
    committed: int  # open slots: what Label Studio will still serve
    held: int = 0  # set aside to finish the tasks in cleaning (at least their open slots)

    @property
    def reserved(self) -> int:
        """Open slots, or what the tasks in cleaning hold where that is more, up to what is left of B."""
        held = self.held if self.total is None else min(self.held, max(0, self.total - self.spent))
        return max(self.committed, held)

    @property
    def remaining(self) -> int | None:
        """Neither spent nor held: what new openings may reserve."""
        return None if self.total is None else self.total - self.spent - self.reserved

    @property
    def exhausted(self) -> bool:
        return self.total is not None and self.spent >= self.total

    def affordable(self) -> float:
        """How many more slots may be opened now."""
        return float("inf") if self.total is None else max(0, self.remaining)

    def as_dict(self) -> dict:
        return {"total": self.total, "spent": self.spent, "committed": self.committed, "held": self.reserved,
                "remaining": self.remaining, "exhausted": self.exhausted}


def budget_total(snapshot: ProjectSnapshot, budget: int | None = None) -> int | None:
    """The project's own budget (kept in Label Studio) wins over the one handed in (the global setting)."""
    return snapshot.state.budget if snapshot.state.budget is not None else budget


def budget_of(snapshot: ProjectSnapshot, budget: int | None = None, max_annotations: int | None = None) -> Budget:
    """The budget as the tasks stand; ``max_annotations`` (the cap) bounds what a task still holds."""
    from connectors.plan import held_total

    spent = sum(t.reannotations for t in snapshot.tasks)
    committed = sum(t.open_slots for t in snapshot.tasks)
    cap = max_annotations if max_annotations is not None else NO_CAP
    return Budget(budget_total(snapshot, budget), int(spent), int(committed), int(held_total(snapshot.tasks, cap)))


def settled_mask(snapshot: ProjectSnapshot) -> np.ndarray:
    """Tasks with a strict majority (more than one label, a unique top count)."""
    if not snapshot.tasks:
        return np.zeros(0, dtype=bool)
    return np.asarray(has_strict_majority(snapshot.counts), dtype=bool)


def final_label(snapshot: ProjectSnapshot, row: int, settled: bool) -> str | None:
    """The strict-majority label once there is one, else the initial label (a tie changes nothing)."""
    if settled:
        return snapshot.class_names[int(np.argmax(snapshot.counts[row]))]
    return snapshot.tasks[row].initial_label


@dataclass
class Ledger:
    """Everything the dashboard, ``alc status`` and the export show, computed from one snapshot."""

    snapshot: ProjectSnapshot
    budget: Budget
    settled: np.ndarray  # (N,) bool
    final_labels: list[str | None]

    @property
    def changed(self) -> np.ndarray:
        return np.array([
            f is not None and t.initial_label is not None and f != t.initial_label
            for f, t in zip(self.final_labels, self.snapshot.tasks)
        ], dtype=bool)

    def annotators(self, names: dict[int, str] | None = None) -> list[dict]:
        """Re-annotations per annotator with Label Studio's lead_time (seconds); each annotator named by
        ``names`` (user id -> email, read now: an annotator who joined after the record was made is named too),
        else as the record names them."""
        per: dict[str, dict] = {}
        for task in self.snapshot.tasks:
            for a in task.annotations:
                if a.cancelled or a.initial:
                    continue
                who = name_of(a, names)
                entry = per.setdefault(who, {"annotator": who, "annotations": 0, "lead_time": 0.0, "timed": 0})
                entry["annotations"] += 1
                if a.lead_time is not None:
                    entry["lead_time"] += a.lead_time
                    entry["timed"] += 1
        out = []
        for entry in sorted(per.values(), key=lambda e: (-e["annotations"], e["annotator"])):
            timed = entry.pop("timed")
            entry["lead_time"] = round(entry["lead_time"], 3)
            entry["mean_lead_time"] = round(entry["lead_time"] / timed, 3) if timed else None
            out.append(entry)
        return out

    def timeline(self) -> list[dict]:
        """Spend and labels changed after each re-annotation, in time order (for the burn-down)."""
        snap = self.snapshot
        index = {name: c for c, name in enumerate(snap.class_names)}
        running = snap.initial_counts.copy()
        changed: set[int] = set()
        events = sorted(
            ((a.created_at or "", a.id, row, a) for row, t in enumerate(snap.tasks) for a in t.annotations
             if not a.cancelled and not a.initial),
            key=lambda e: (e[0], e[1]),
        )
        out, spent = [], 0
        for time, _, row, a in events:
            spent += 1
            if a.valid:
                running[row, index[a.label]] += 1
                settled = bool(has_strict_majority(running[row]))
                final = snap.class_names[int(np.argmax(running[row]))] if settled else snap.tasks[row].initial_label
                initial = snap.tasks[row].initial_label
                if final is not None and initial is not None and final != initial:
                    changed.add(row)
                else:
                    changed.discard(row)
            out.append({"time": time, "spent": spent, "labels_changed": len(changed)})
        return out

    def recent_changes(self, client: LabelStudio | None = None, limit: int = 20) -> list[dict]:
        """Tasks whose label changed, newest first, timed by their last re-annotation."""
        out = []
        for row in np.flatnonzero(self.changed):
            task = self.snapshot.tasks[row]
            times = [a.created_at for a in task.annotations if not a.cancelled and not a.initial and a.created_at]
            out.append({
                "task_id": task.id,
                "url": task_url(client, self.snapshot.project_id, task.id) if client is not None else None,
                "from": task.initial_label,
                "to": self.final_labels[row],
                "time": max(times) if times else None,
            })
        out.sort(key=lambda c: c["time"] or "", reverse=True)
        return out[:limit]

    def queue(self, client: LabelStudio | None = None) -> list[dict]:
        """The open tasks (Label Studio still serves them), lowest score (re-annotated first) first."""
        snap = self.snapshot
        rows = []
        for row, task in enumerate(snap.tasks):
            if task.open_slots <= 0:
                continue
            prediction = task.prediction(snap.model_version)
            why = (prediction.explanation or {}) if prediction else {}
            rows.append({
                "task_id": task.id,
                "url": task_url(client, snap.project_id, task.id) if client is not None else None,
                "priority": why.get("priority"),
                "noisiness": why.get("noisiness"),
                "ambiguity": why.get("ambiguity"),
                "score": prediction.score if prediction else None,
                "counts": _counts_dict(snap, row),
                "annotations": task.n_annotations,
                "overlap": task.overlap,
            })
        rows.sort(key=lambda r: (r["score"] is None, r["score"] if r["score"] is not None else 0.0, r["task_id"]))
        return rows


def name_of(annotation: Any, names: dict[int, str] | None) -> str:
    """One name per annotator: their email from ``names`` (user id -> email), else the record's."""
    if names and annotation.annotator_id is not None and annotation.annotator_id in names:
        return names[annotation.annotator_id]
    return annotation.annotator


def ledger_of(snapshot: ProjectSnapshot, budget: int | None = None, max_annotations: int | None = None) -> Ledger:
    settled = settled_mask(snapshot)
    finals = [final_label(snapshot, row, bool(settled[row])) for row in range(len(snapshot.tasks))]
    return Ledger(snapshot, budget_of(snapshot, budget, max_annotations), settled, finals)


def reconcile(client: LabelStudio, project_id: int, initial_label_source: str = "annotations",
              budget: int | None = None, max_annotations: int | None = None) -> Ledger:
    """The ledger rebuilt from Label Studio: one paged read of every task, nothing cached."""
    return ledger_of(read_project(client, project_id, initial_label_source), budget, max_annotations)


def project_status(client: LabelStudio, project_id: int, initial_label_source: str = "annotations",
                   budget: int | None = None, ledger: Ledger | None = None, names: dict[int, str] | None = None) -> dict:
    """Plain JSON data for the dashboard, /api/status and `alc status` (keys kept stable); ``names``: user id
    -> email for the annotators."""
    from connectors.client import base_url

    ledger = ledger or reconcile(client, project_id, initial_label_source, budget)
    snap = ledger.snapshot
    open_tasks = sum(1 for t in snap.tasks if t.open_slots > 0)
    return {
        "project": {"id": snap.project_id, "title": snap.title, "url": f"{base_url(client)}/projects/{snap.project_id}"},
        "budget": ledger.budget.as_dict(),
        "tasks": {
            "total": len(snap.tasks),
            "settled": int(ledger.settled.sum()),
            "reannotated": int(sum(1 for t in snap.tasks if t.reannotations > 0)),
            "open": open_tasks,
            "labels_changed": int(ledger.changed.sum()),
        },
        "annotators": ledger.annotators(names),
        "timeline": ledger.timeline(),
        "queue": ledger.queue(client),
        "recent_changes": ledger.recent_changes(client),
        "model_version": snap.model_version,
        "class_names": list(snap.class_names),
        "problems": snap.problems[:50],
    }


def _counts_dict(snap: ProjectSnapshot, row: int) -> dict[str, int]:
    return {name: int(c) for name, c in zip(snap.class_names, snap.counts[row]) if c}
