"""One project's status for the project manager: the connectors' ledger plus the model's view and the job queue.

``connectors.ledger.project_status`` rebuilds spend, settled tasks, the queue and the label changes
from Label Studio. Here we add what only the backend knows: the current model's estimate of how many
labels are still wrong (and so the label accuracy now, a forecast of the spend to reach a target and
a suggested budget, each with its interval or its stated basis), the cleaning view (why each open
and next task is there), per-annotator agreement with the final majority, labels *corrected* where
the truth is known (the demo writes it), and the rq queue (depth, workers, the failed-job registry).
Shared by GET /api/status, GET /dashboard and `alc status`.

Why the old estimate read 68.6% when the truth was 80.5%: it summed the model's probability of each
label, and a strongly regularised linear model is under-confident (on the demo's digits its mean
p(label) is about 0.50 at a true accuracy of 0.805). Confident learning (cleanlab's
``num_label_issues``: per-class thresholds, so the model's overall confidence cancels out) counts
0.80 / 0.83 / 0.74 / 0.77 on four seeds whose truth is 0.805 / 0.805 / 0.755 / 0.76, and a bootstrap
over the tasks gives an interval that covered the truth in all four. The retrain records it in the
version's meta (:func:`label_noise_estimate`); a version without it is shown with the old basis, said so.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backend.model_store import ModelStore, Ranking

if TYPE_CHECKING:
    from connectors.ledger import Ledger  # the Label Studio SDK behind it loads only where a project is read

log = logging.getLogger(__name__)
MIN_COST_PER_CORRECTION = 2  # re-annotations: two agreeing opinions outvote one initial label
NEXT_TASKS = 12  # the cleaning view's "next up": the ranking's next unsettled tasks that are not open yet
TRUTH_DIR = "truth"  # <ALC_DATA_HOME>/truth/project-<id>.json: {task id: true label}, where the truth is known


def label_noise_estimate(labels: np.ndarray, probs: np.ndarray, *, rounds: int = 200, seed: int = 0) -> dict[str, Any]:
    """How many of ``labels`` (N,) are wrong, by confident learning on out-of-fold ``probs`` (N, C), with a
    90% bootstrap interval over the tasks. Plain JSON data: the retrain stores it in a version's meta."""
    from cleanlab.count import num_label_issues

    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    n = len(labels)
    count = int(num_label_issues(labels, probs))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(rounds):
        rows = rng.integers(0, n, n)
        if len(np.unique(labels[rows])) == probs.shape[1]:  # cleanlab needs every class present
            draws.append(num_label_issues(labels[rows], probs[rows]))
    low, high = (np.percentile(draws, [5, 95]) if draws else (count, count))
    return {"tasks": n, "wrong": count, "wrong_low": int(np.floor(low)), "wrong_high": int(np.ceil(high)),
            "method": "confident learning (cleanlab num_label_issues) on out-of-fold probabilities; "
                      "90% interval from resampling the tasks"}


def label_accuracy_estimate(ranking: Ranking | None, settled_ids: set[int], spent: int, labels_changed: int,
                            target: float = 0.95, meta: dict | None = None) -> dict[str, Any]:
    """Expected number of wrong labels now, the label accuracy, the spend forecast to reach ``target`` and
    a suggested budget, each with an interval or its basis.

    With the retrain's confident-learning estimate in ``meta["label_noise"]`` (see label_noise_estimate;
    ``meta["label_noise_initial"]`` for the initial labels) that count and its interval are used. Without
    it: a settled task counts as correct, any other as correct with exp(-noisiness) (the model's
    probability of its label): no interval, and low for an under-confident model, which the basis says.

    The forecast divides the corrections still needed by the re-annotations per label changed so far
    (so it exists only after a change). The suggested budget (to accept with `alc connect --budget`) is
    the wrong initial labels times that cost, or before any change the least a correction can cost (two
    agreeing re-annotations outvote one initial label); its range carries the count's interval.
    """
    if ranking is None:
        return {"available": False, "reason": "no trained model yet"}
    meta = meta or {}
    per_correction = spent / labels_changed if labels_changed else None
    cost = per_correction or MIN_COST_PER_CORRECTION
    now, initial = meta.get("label_noise"), meta.get("label_noise_initial") or meta.get("label_noise")
    if isinstance(now, dict) and now.get("tasks"):
        n = int(now["tasks"])
        wrong, low, high = float(now["wrong"]), float(now["wrong_low"]), float(now["wrong_high"])
        wrong_all, all_low, all_high = float(initial["wrong"]), float(initial["wrong_low"]), float(initial["wrong_high"])
        basis = now.get("method", "confident learning")
    else:
        p_correct = np.exp(-np.clip(np.asarray(ranking.noisiness, dtype=float), 0, None))
        finite = np.isfinite(p_correct)
        n = int(finite.sum())
        if n == 0:
            return {"available": False, "reason": "the model scored no task"}
        unsettled = np.array([t not in settled_ids for t in ranking.task_ids], dtype=bool)
        wrong_all = float((1.0 - p_correct[finite]).sum())
        wrong = float((1.0 - p_correct[finite & unsettled]).sum())
        low = high = wrong
        all_low = all_high = wrong_all
        basis = ("the model's probability of each label (this version recorded no confident-learning estimate): "
                 "no interval, and too low for an under-confident model")
    needed = max(0.0, wrong - (1.0 - target) * n)
    accuracy = lambda w: round(1.0 - w / n, 4)  # noqa: E731
    return {
        "available": True,
        "basis": basis,
        "scored_tasks": n,
        "noise_rate": round(wrong_all / n, 4),
        "labels_wrong": round(wrong, 1),
        "labels_wrong_interval": [round(low, 1), round(high, 1)],
        "accuracy_before": accuracy(wrong_all),
        "accuracy_before_interval": [accuracy(all_high), accuracy(all_low)],
        "accuracy": accuracy(wrong),
        "accuracy_interval": [accuracy(high), accuracy(low)],
        "target": target,
        "corrections_needed": round(needed, 1),
        "reannotations_per_correction": round(per_correction, 2) if per_correction else None,
        "forecast_spend": math.ceil(needed * per_correction) if per_correction is not None else None,
        "suggested_budget": math.ceil(wrong_all * cost),
        "suggested_budget_range": ([math.floor(all_low * cost), math.ceil(all_high * cost)] if all_low != all_high
                                   else [math.ceil(wrong_all * cost)] * 2),
        "cost_basis": (f"{per_correction:.2f} re-annotations per label changed so far ({labels_changed} changed)"
                       if per_correction else "2 re-annotations per correction, the least one can cost (none changed yet)"),
    }


def annotator_figures(ledger: Ledger) -> list[dict]:
    """The ledger's per-annotator figures (by email) plus agreement with the final majority: the share of
    their re-annotations of *settled* tasks that carry the task's final label."""
    snap = ledger.snapshot
    agree: dict[str, list[int]] = {}
    for row, task in enumerate(snap.tasks):
        if not ledger.settled[row]:
            continue
        for a in task.annotations:
            if a.cancelled or a.initial or not a.valid:
                continue
            tally = agree.setdefault(a.annotator, [0, 0])
            tally[0] += int(a.label == ledger.final_labels[row])
            tally[1] += 1
    out = []
    for entry in ledger.annotators():
        hits, total = agree.get(entry["annotator"], (0, 0))
        out.append({**entry, "agreement_with_final": round(hits / total, 3) if total else None, "on_settled_tasks": total})
    return out


def read_truth(data_home: Path, project_id: int) -> dict[int, str] | None:
    """{task id: true label} where someone who knows the truth wrote it (the demo does), else None."""
    path = Path(data_home) / TRUTH_DIR / f"project-{int(project_id)}.json"
    try:
        return {int(k): str(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError):
        return None


def write_truth(data_home: Path, project_id: int, truth: dict[int, str]) -> Path:
    path = Path(data_home) / TRUTH_DIR / f"project-{int(project_id)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(k): v for k, v in truth.items()}))
    return path


def truth_figures(ledger: Ledger, truth: dict[int, str]) -> dict[str, int]:
    """Of the labels changed, how many the truth calls corrected and how many broken."""
    corrected = broken = 0
    for row in np.flatnonzero(ledger.changed):
        task = ledger.snapshot.tasks[row]
        if task.id not in truth:
            continue
        corrected += int(ledger.final_labels[row] == truth[task.id])
        broken += int(task.initial_label == truth[task.id])
    return {"labels_corrected": corrected, "labels_broken": broken,
            "initial_accuracy": _share(ledger, truth, lambda row, t: t.initial_label),
            "accuracy": _share(ledger, truth, lambda row, t: ledger.final_labels[row])}


def _share(ledger: Ledger, truth: dict[int, str], label_of) -> float | None:
    known = [(row, t) for row, t in enumerate(ledger.snapshot.tasks) if t.id in truth]
    if not known:
        return None
    return round(sum(label_of(row, t) == truth[t.id] for row, t in known) / len(known), 4)


def cleaning_view(status: dict, ledger: Ledger, ranking: Ranking | None, next_n: int = NEXT_TASKS) -> dict[str, list]:
    """The paper's Fig. 4 for a manager: each open task, then the ranking's next ones, with the label, the
    model's belief (its most likely class, and its probability of the label where there is one label),
    noisiness and ambiguity, and a thumbnail URL (served by the backend through the image loader)."""
    classes = status.get("class_names") or (ranking.class_names if ranking is not None else [])
    tasks = {t.id: (row, t) for row, t in enumerate(ledger.snapshot.tasks)}

    def card(task_id: int, extra: dict) -> dict:
        row, task = tasks.get(task_id, (None, None))
        out = {"task_id": task_id, "thumbnail": f"/dashboard/thumbnail/{status['project']['id']}/{task_id}",
               "label": ledger.final_labels[row] if row is not None else None,
               "counts": ({k: int(v) for k, v in zip(classes, ledger.snapshot.counts[row]) if v} if row is not None else {}),
               "model_label": None, "p_label": None, **extra}
        r = ranking.row(task_id) if ranking is not None else None
        if r is not None:
            out["model_label"] = ranking.class_names[int(ranking.predicted[r])]
            for key in ("priority", "noisiness", "ambiguity"):
                if out.get(key) is None:
                    value = float(getattr(ranking, key)[r])
                    out[key] = value if math.isfinite(value) else None
            if out["counts"] and sum(out["counts"].values()) == 1 and out.get("noisiness") is not None:
                out["p_label"] = round(math.exp(-out["noisiness"]), 3)  # one label: noisiness = -log p(label)
        out["why"] = _why(out, math.log(max(len(classes), 2)))
        return out

    open_cards = [card(q["task_id"], {k: q.get(k) for k in ("priority", "noisiness", "ambiguity", "url", "annotations",
                                                              "overlap")}) for q in status.get("queue", [])]
    next_cards = []
    if ranking is not None:
        shown = {c["task_id"] for c in open_cards}
        for r in np.argsort(-np.nan_to_num(np.asarray(ranking.priority, dtype=float), nan=-np.inf), kind="stable"):
            task_id = int(ranking.task_ids[r])
            row = tasks.get(task_id, (None,))[0]
            if task_id in shown or row is None or ledger.settled[row]:
                continue
            next_cards.append(card(task_id, {"url": None}))
            if len(next_cards) >= next_n:
                break
    return {"open": open_cards, "next": next_cards}


def _why(card: dict, max_entropy: float) -> str:
    """One line a manager can read: what the model believes, and whether the image looks ambiguous to it
    (entropy above half its maximum, log C)."""
    noisy, ambiguous = card.get("noisiness"), card.get("ambiguity")
    if noisy is None:
        return "not in the model's ranking"
    belief = f"the model says {card['model_label']}" if card.get("model_label") else "the model"
    if card.get("p_label") is not None:
        belief += f" and gives the label {card['label']} p = {card['p_label']:.2f}"
    tail = "; the image looks ambiguous to it" if ambiguous is not None and ambiguous > max_entropy / 2 else ""
    return belief + tail


def jobs_status(redis_conn: Any, project_id: int) -> dict[str, Any]:
    """The rq queues, workers and failed-job registry, this project's retrain state and the ground-truth stars
    the background job has still to take off; Redis down is reported."""
    from backend.queue import queue_status
    from backend.working_state import WorkingState

    try:
        jobs = queue_status(redis_conn)
        stars = WorkingState(redis_conn, project_id).n_starred()
    except Exception as exc:  # Redis down must not take the dashboard with it
        return {"error": f"Redis unavailable: {exc}"}
    return {"queues": jobs["queues"], "failed_jobs": jobs["failed_jobs"], "workers": jobs["workers"],
            "project": jobs["projects"].get(project_id), "stars_left": stars}


def build_status(client: Any, ledger: Ledger, store: ModelStore | None = None, redis_conn: Any = None,
                 target: float = 0.95, budget: int | None = None, truth: dict[int, str] | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON data, from a ledger already read from Label Studio."""
    project_id = ledger.snapshot.project_id
    from connectors.ledger import project_status

    status = project_status(client, project_id, ledger.snapshot.initial_label_source, budget, ledger=ledger)
    status["annotators"] = annotator_figures(ledger)
    status["truth"] = truth_figures(ledger, truth) if truth else None
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
    skipped = (version.meta.get("skipped") if version is not None else None) or {}  # contract 4: {task id: reason}
    status["skipped"] = [{"task_id": int(t), "reason": str(r)} for t, r in sorted(skipped.items(), key=lambda i: int(i[0]))
                         if str(t).isascii() and str(t).isdigit()]
    if "estimate" not in status:
        status["estimate"] = label_accuracy_estimate(
            version.ranking if version is not None else None, settled_ids,
            status["budget"]["spent"], status["tasks"]["labels_changed"], target,
            meta=version.meta if version is not None else None)
    status["cleaning"] = cleaning_view(status, ledger, version.ranking if version is not None else None)
    if redis_conn is not None:
        status["jobs"] = jobs_status(redis_conn, project_id)
    return status


def collect_status(client: Any, project_id: int, settings: Any, store: ModelStore | None = None,
                   redis_conn: Any = None, target: float = 0.95) -> dict[str, Any]:
    """The project's status from the pipeline's working state in Redis (no Label Studio read: contract 5),
    or, where there is none yet (or Redis is down), from one paged read of Label Studio."""
    ledger = working_ledger(redis_conn, project_id, settings.budget)
    source = "the working state (Redis; the periodic reconcile proves it equals Label Studio)"
    if ledger is None:
        from connectors.ledger import reconcile

        ledger = reconcile(client, project_id, settings.initial_label_source, settings.budget)
        source = "Label Studio (a full read)"
    status = build_status(client, ledger, store=store, redis_conn=redis_conn, target=target, budget=settings.budget,
                          truth=read_truth(settings.data_home, project_id))
    status["source"] = source
    return status


def working_ledger(redis_conn: Any, project_id: int, budget: int | None) -> Ledger | None:
    """The ledger from backend.working_state when the project has one, else None (Redis errors included)."""
    if redis_conn is None:
        return None
    from backend.working_state import WorkingState

    try:
        state = WorkingState(redis_conn, project_id)
        return state.ledger(budget) if state.exists() else None
    except Exception as exc:  # a broken or unreachable state must not take the page with it: read Label Studio
        log.warning("project %s: working state unusable (%s); reading Label Studio", project_id, exc)
        return None


def _iso_time(value: Any) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
