"""One project's status for the project manager: the connectors' ledger plus the model's view and the job queue.

``connectors.ledger.project_status`` rebuilds spend, settled tasks, the queue and the label changes
from Label Studio. Here we add what only the backend knows: the current model's estimate of how many
labels are still wrong (and so the label accuracy now, a forecast of the spend to reach a target and
a suggested budget), and the rq queue (depth, workers, the failed-job registry). Shared by
GET /api/status, GET /dashboard and `alc status`.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import numpy as np

from backend.model_store import ModelStore, Ranking
from connectors.ledger import Ledger, project_status, reconcile

MIN_COST_PER_CORRECTION = 2  # re-annotations: two agreeing opinions outvote one initial label


def label_accuracy_estimate(ranking: Ranking | None, settled_ids: set[int], spent: int, labels_changed: int,
                            target: float = 0.95) -> dict[str, Any]:
    """Expected number of wrong labels now, from the model, and the spend forecast to reach ``target`` accuracy.

    A settled task counts as correct. Any other task with a model row is correct with probability
    exp(-noisiness): for a single initial label noisiness is -log p(label), so this is the model's
    probability of that label (for several labels, the geometric mean over them). Tasks the model did
    not score are left out. ``accuracy_before`` is the same estimate with nothing settled (the labels
    as they were). The forecast divides the corrections still needed by the re-annotations per
    correction seen so far, so it only exists once some label was changed.

    The suggested budget (for the manager to accept with `alc connect --budget`) is the estimated
    noise rate times the scored tasks (the expected number of wrong initial labels) times the cost of
    one correction: the cost seen so far, or before any correction the least it can cost (two
    agreeing re-annotations outvote one initial label).
    """
    if ranking is None:
        return {"available": False, "reason": "no trained model yet"}
    p_correct = np.exp(-np.clip(np.asarray(ranking.noisiness, dtype=float), 0, None))
    finite = np.isfinite(p_correct)
    scored = int(finite.sum())
    if scored == 0:
        return {"available": False, "reason": "the model scored no task"}
    unsettled = np.array([t not in settled_ids for t in ranking.task_ids], dtype=bool)
    wrong_all = float((1.0 - p_correct[finite]).sum())
    wrong = float((1.0 - p_correct[finite & unsettled]).sum())
    needed = max(0.0, wrong - (1.0 - target) * scored)
    per_correction = spent / labels_changed if labels_changed else None
    return {
        "available": True,
        "scored_tasks": scored,
        "noise_rate": round(wrong_all / scored, 4),
        "labels_wrong": round(wrong, 1),
        "accuracy_before": round(1.0 - wrong_all / scored, 4),
        "accuracy": round(1.0 - wrong / scored, 4),
        "target": target,
        "corrections_needed": round(needed, 1),
        "reannotations_per_correction": round(per_correction, 2) if per_correction else None,
        "forecast_spend": math.ceil(needed * per_correction) if per_correction is not None else None,
        "suggested_budget": math.ceil(wrong_all * (per_correction or MIN_COST_PER_CORRECTION)),
    }


def jobs_status(redis_conn: Any, project_id: int) -> dict[str, Any]:
    """The rq queues, workers and failed-job registry, and this project's retrain state; Redis down is reported."""
    from backend.queue import queue_status

    try:
        jobs = queue_status(redis_conn)
    except Exception as exc:  # Redis down must not take the dashboard with it
        return {"error": f"Redis unavailable: {exc}"}
    return {"queues": jobs["queues"], "failed_jobs": jobs["failed_jobs"], "workers": jobs["workers"],
            "project": jobs["projects"].get(project_id)}


def build_status(client: Any, ledger: Ledger, store: ModelStore | None = None, redis_conn: Any = None,
                 target: float = 0.95, budget: int | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON data, from a ledger already read from Label Studio."""
    project_id = ledger.snapshot.project_id
    status = project_status(client, project_id, ledger.snapshot.initial_label_source, budget, ledger=ledger)
    status["generated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    settled_ids = {int(t.id) for t, done in zip(ledger.snapshot.tasks, ledger.settled) if done}
    try:
        version = store.load(project_id) if store is not None else None
    except (OSError, ValueError, KeyError) as exc:  # a damaged model store: say so, show the rest
        version = None
        status["estimate"] = {"available": False, "reason": f"the model store could not be read: {exc}"}
    status["model"] = {
        "version": version.version if version is not None else None,
        "selector": version.meta.get("selector") if version is not None else None,
        "created_at": _iso_time(version.meta.get("created_at")) if version is not None else None,
    }
    if "estimate" not in status:
        status["estimate"] = label_accuracy_estimate(
            version.ranking if version is not None else None, settled_ids,
            status["budget"]["spent"], status["tasks"]["labels_changed"], target)
    if redis_conn is not None:
        status["jobs"] = jobs_status(redis_conn, project_id)
    return status


def collect_status(client: Any, project_id: int, settings: Any, store: ModelStore | None = None,
                   redis_conn: Any = None, target: float = 0.95) -> dict[str, Any]:
    """Read the project from Label Studio (one paged read) and build its status."""
    ledger = reconcile(client, project_id, settings.initial_label_source, settings.budget)
    return build_status(client, ledger, store=store, redis_conn=redis_conn, target=target, budget=settings.budget)


def _iso_time(value: Any) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
