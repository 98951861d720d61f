"""One project's status for the project manager: the connectors' ledger plus the model's view and the job queue.

``connectors.ledger.project_status`` rebuilds spend, settled tasks, the queue and the label changes
from Label Studio. Here we add what only the backend knows: the current model's estimate of how many
labels are still wrong (and so the label accuracy now and a forecast of the spend to reach a target),
and the rq queue (depth, failed jobs). Shared by GET /api/status, GET /dashboard and `alc status`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backend.model_store import ModelStore, Ranking

MIN_COST_PER_CORRECTION = 2  # re-annotations: two agreeing opinions outvote one initial label


def label_accuracy_estimate(status: dict, ranking: Ranking | None, target: float = 0.95) -> dict[str, Any]:
    """Expected number of wrong labels now, from the model, and the spend forecast to reach ``target`` accuracy.

    A settled task counts as correct. Any other task with a model row is correct with probability
    exp(-noisiness): for a single initial label noisiness is -log p(label), so this is the model's
    probability of that label (for several labels, the geometric mean over them). Tasks the model did
    not score are left out. The forecast divides the corrections still needed by the corrections per
    re-annotation seen so far, so it only exists once some labels were changed.

    The suggested budget (for the manager to accept with `alc connect --budget`) is the model's estimate
    of wrong labels among all scored tasks times the cost of one correction: the cost seen so far, or
    before any correction the least it can cost (two agreeing re-annotations outvote one initial label).
    """
    if ranking is None:
        return {"available": False, "reason": "no trained model yet"}
    settled = {row["task_id"] for row in status.get("settled_tasks", [])}
    p_correct = np.exp(-np.clip(np.asarray(ranking.noisiness, dtype=float), 0, None))
    wrong = 0.0
    wrong_all = 0.0
    scored = 0
    for task_id, p in zip(ranking.task_ids, p_correct):
        if not math.isfinite(p):
            continue
        scored += 1
        wrong_all += 1.0 - float(p)
        if task_id not in settled:
            wrong += 1.0 - float(p)
    if scored == 0:
        return {"available": False, "reason": "the model scored no task"}
    accuracy = 1.0 - wrong / scored
    needed = max(0.0, wrong - (1.0 - target) * scored)
    spent = status["budget"]["spent"]
    changed = status["tasks"]["labels_changed"]
    per_correction = spent / changed if changed else None
    return {
        "available": True,
        "scored_tasks": scored,
        "labels_wrong": round(wrong, 1),
        "accuracy": round(accuracy, 4),
        "target": target,
        "corrections_needed": round(needed, 1),
        "reannotations_per_correction": round(per_correction, 2) if per_correction else None,
        "forecast_spend": math.ceil(needed * per_correction) if per_correction is not None else None,
        "suggested_budget": math.ceil(wrong_all * (per_correction or MIN_COST_PER_CORRECTION)),
    }


def collect_status(client: Any, project_id: int, settings: Any, store: ModelStore | None = None,
                   redis_conn: Any = None, target: float = 0.95) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON data."""
    from connectors.ledger import project_status, reconcile

    ledger = reconcile(client, project_id, settings.initial_label_source, settings.budget)
    status = project_status(client, project_id, settings.initial_label_source, settings.budget, ledger=ledger)
    status["settled_tasks"] = [
        {"task_id": int(task.id), "label": ledger.final_labels[row]}
        for row, task in enumerate(ledger.snapshot.tasks) if ledger.settled[row]
    ]
    version = store.load(project_id) if store is not None else None
    status["model"] = {"version": version.version if version is not None else None}
    status["estimate"] = label_accuracy_estimate(status, version.ranking if version is not None else None, target)
    if redis_conn is not None:
        from backend.queue import queue_status

        try:
            jobs = queue_status(redis_conn)
            status["jobs"] = {"queues": jobs["queues"], "failed_jobs": jobs["failed_jobs"], "workers": jobs["workers"],
                              "project": jobs["projects"].get(project_id)}
        except Exception as exc:  # Redis down must not take the dashboard with it
            status["jobs"] = {"error": f"Redis unavailable: {exc}"}
    return status
