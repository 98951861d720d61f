"""One project's status for the project manager: the connectors' ledger plus the estimate and the job queue.

``connectors.ledger.project_status`` rebuilds spend, settled tasks, the queue and the label changes
from Label Studio (or the working state, which the periodic reconcile proves equal to it). Here we add
what only the backend knows: the label accuracy now with its interval (:func:`accuracy_estimate`, the
one estimator, ``scoring.estimate.estimate_accuracy``, from the audit draws the live loop makes and the
tasks it cleaned), the re-annotations to reach a target and the suggested budget (both from
``scoring.estimate.reannotations_to_reach``, so they agree), the cleaning view (why each open and next
task is there), per-annotator agreement with the final majority (each annotator named by their email),
labels *corrected* where the truth is known (the demo writes it), and the rq queue. Shared by
GET /api/status, GET /dashboard, `alc status` and the demo's report.

No accuracy figure is shown before an audit draw has settled: the model's own view of its labels is
biased (an under-confident model reads 68.6% where the truth was 80.5%), so it is used only as the
control variate of the audit's difference estimator, never as the estimate alone.
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
CONFIDENCE = 0.9
NEXT_TASKS = 12  # the cleaning view's "next up": the ranking's next unsettled tasks that are not open yet
TRUTH_DIR = "truth"  # <ALC_DATA_HOME>/truth/project-<id>.json: {task id: true label}, where the truth is known


def estimator_inputs(ledger: Ledger, ranking: Ranking | None) -> dict[str, Any] | None:
    """``scoring.estimate.estimate_accuracy``'s arrays from a ledger: one row per task with an initial label;
    touched_seq from each task's recorded ``alc_seq`` (a task in cleaning without one: after the recorded
    ones, in task order); the audit draws with ``task`` as a row; wrong_prob = 1 - p[label] of the latest
    ranking (its mean where a task is not in it), or None without a ranking that has it; initial_wrong_prob
    likewise from its p[initial label] (as ``alc simulate`` passes it: one estimator, the same inputs)."""
    from scoring.audit import AuditDraw

    snap = ledger.snapshot
    rows = [i for i, t in enumerate(snap.tasks) if t.has_initial and sum(t.initial_counts) > 0]
    if not rows:
        return None
    tasks = [snap.tasks[i] for i in rows]
    counts = np.asarray(snap.counts, dtype=np.int64)[rows]
    initial = np.asarray(snap.initial_counts, dtype=np.int64)[rows].argmax(axis=1)
    seq = np.array([t.seq if t.seq is not None else -1 for t in tasks], dtype=np.int64)
    unnumbered = [k for k, t in enumerate(tasks) if t.seq is None and (t.reannotations > 0 or t.open_slots > 0)]
    seq[unnumbered] = seq.max(initial=-1) + 1 + np.arange(len(unnumbered))
    audits = []
    for k, t in enumerate(tasks):
        if t.audit is None:
            continue
        try:
            draw = AuditDraw.from_json(t.audit)
        except ValueError as exc:
            log.warning("task %s: its audit record is unusable (%s); left out of the estimate", t.id, exc)
            continue
        if draw.seq == seq[k]:
            audits.append(AuditDraw(k, draw.seq, draw.pool_size, draw.pool_wrong_prob, draw.wrong_prob))
    return {"counts": counts, "initial_labels": initial, "touched_seq": seq, "audits": audits,
            "wrong_prob": _wrong_prob(ranking, "p_label", tasks), "initial_wrong_prob": _wrong_prob(ranking, "p_initial", tasks)}


def _wrong_prob(ranking: Ranking | None, field: str, tasks: list) -> np.ndarray | None:
    """1 - the ranking's per-task probability ``field`` (p_label or p_initial), in ``tasks``' order; a task the
    ranking lacks (or holds NaN for) gets the mean of the others. None without a ranking or any known value."""
    values = None if ranking is None else getattr(ranking, field)
    if values is None:
        return None
    p = np.asarray(values, dtype=float)
    known = np.isfinite(p)
    if not known.any():
        return None
    fill = float(np.mean(1.0 - p[known]))
    by_id = {tid: float(1.0 - v) for tid, v, ok in zip(ranking.task_ids, p, known) if ok}
    return np.clip(np.array([by_id.get(t.id, fill) for t in tasks]), 0.0, 1.0)


def accuracy_estimate(ledger: Ledger, ranking: Ranking | None, *, target: float = 0.95,
                      audit_share: float | None = None) -> dict[str, Any]:
    """The label accuracy now with its interval, the re-annotations to reach ``target`` and the suggested
    budget, as plain JSON data (``available`` False with the ``reason`` while there is no estimate).

    The cost of a fix is the re-annotations per label changed so far (90% Wilson interval on the changes
    per re-annotation), or before any change the least a fix can cost (two agreeing opinions), whose
    upper range is then unknown. The suggested budget is what is spent plus the forecast."""
    from scoring.estimate import estimate_accuracy, fix_cost, reannotations_to_reach

    inputs = estimator_inputs(ledger, ranking)
    if inputs is None:
        return {"available": False, "reason": "no task has a label yet"}
    estimate = estimate_accuracy(**inputs, confidence=CONFIDENCE)
    if estimate is None:
        opened = len(inputs["audits"])
        if audit_share is not None and audit_share <= 0:
            why = "the audit is off (ALC_AUDIT_SHARE=0): without audit draws there is no unbiased basis"
        elif opened:
            why = (f"no audit draw has settled yet ({opened} open): the estimate rests on tasks drawn at random "
                   "and settled, and the model's own view is biased")
        else:
            why = ("no audit draw yet: the estimate rests on tasks drawn at random and settled (the first "
                   "push opens them), and the model's own view is biased")
        return {"available": False, "reason": why}
    budget, changed = ledger.budget, int(ledger.changed.sum())
    spent = int(budget.spent)
    cost = fix_cost(changed=min(changed, spent), spent=spent, confidence=CONFIDENCE)
    forecast = reannotations_to_reach(estimate, target, reannotations_per_fix=cost.per_fix, fix_rate_low=cost.rate_low,
                                      fix_rate_high=cost.rate_high, remaining_budget=budget.remaining)
    plus = lambda n: None if n is None else spent + int(n)  # noqa: E731
    return {
        "available": True,
        "basis": estimate.basis,
        "confidence": estimate.confidence,
        "tasks": estimate.n_tasks,
        "accuracy": round(estimate.accuracy, 4),
        "accuracy_interval": [round(estimate.low, 4), round(estimate.high, 4)],
        "labels_wrong": int(estimate.wrong_left),
        "labels_wrong_interval": [int(estimate.wrong_low), int(estimate.wrong_high)],
        "audited": estimate.n_audited,
        "cleaned": estimate.n_cleaned,
        "target": target,
        "forecast_spend": forecast.reannotations,
        "forecast_interval": [forecast.low, forecast.high],
        "forecast_basis": forecast.basis,
        "cost_basis": cost.basis,
        "suggested_budget": plus(forecast.reannotations),
        "suggested_budget_range": [plus(forecast.low), plus(forecast.high)],
    }


def annotator_figures(ledger: Ledger, names: dict[int, str] | None = None) -> list[dict]:
    """The ledger's per-annotator figures (each annotator by their email, ``names``) plus agreement with the
    final majority: the share of their re-annotations of *settled* tasks that carry the task's final label."""
    from connectors.ledger import name_of

    snap = ledger.snapshot
    agree: dict[str, list[int]] = {}
    for row, task in enumerate(snap.tasks):
        if not ledger.settled[row]:
            continue
        for a in task.annotations:
            if a.cancelled or a.initial or not a.valid:
                continue
            tally = agree.setdefault(name_of(a, names), [0, 0])
            tally[0] += int(a.label == ledger.final_labels[row])
            tally[1] += 1
    out = []
    for entry in ledger.annotators(names):
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
            if ranking.p_label is not None and math.isfinite(float(ranking.p_label[r])):
                out["p_label"] = round(float(ranking.p_label[r]), 3)  # the out-of-fold p of the current label
        out["why"] = _why(out)
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


def _why(card: dict) -> str:
    """One line a manager can read: what the model believes, and whether the task looks ambiguous to it
    (the rules' ambiguity is the posterior's entropy divided by log C: above half its maximum)."""
    noisy, ambiguous = card.get("noisiness"), card.get("ambiguity")
    if noisy is None:
        return "not in the model's ranking"
    belief = f"the model says {card['model_label']}" if card.get("model_label") else "the model"
    if card.get("p_label") is not None:
        belief += f" and gives the label {card['label']} p = {card['p_label']:.2f}"
    tail = "; the task looks ambiguous to it" if ambiguous is not None and ambiguous > 0.5 else ""
    return belief + tail


def jobs_status(redis_conn: Any, project_id: int) -> dict[str, Any]:
    """The rq queues, workers and failed-job registry, this project's retrain state and the ground-truth stars
    the background job has still to take off; Redis down is reported."""
    from backend.queue import queue_status, retrain_records
    from backend.working_state import WorkingState

    try:
        jobs = queue_status(redis_conn)
        stars = WorkingState(redis_conn, project_id).n_starred()
    except Exception as exc:  # Redis down must not take the dashboard with it
        return {"error": f"Redis unavailable: {exc}"}
    project = jobs["projects"].get(project_id)
    if project is not None:  # a retrain that published nothing (the budget was spent) made no model version
        published = sum(1 for r in retrain_records(redis_conn, project_id) if r.get("model_version"))
        project = {**project, "retrains": published}
    return {"queues": jobs["queues"], "failed_jobs": jobs["failed_jobs"], "workers": jobs["workers"],
            "project": project, "stars_left": stars}


def annotator_names(client: Any, ledger: Ledger) -> dict[int, str]:
    """User id -> email for every annotator of the ledger: the users known when it was read, and Label
    Studio's list (one request) only when an annotator joined since."""
    names = dict(ledger.snapshot.users)
    unnamed = any(a.annotator_id is not None and a.annotator_id not in names and a.annotator == f"user {a.annotator_id}"
                  for t in ledger.snapshot.tasks for a in t.annotations)
    if client is not None and unnamed:
        from connectors.counts import user_emails

        names.update(user_emails(client))
    return names


def build_status(client: Any, ledger: Ledger, store: ModelStore | None = None, redis_conn: Any = None,
                 target: float = 0.95, budget: int | None = None, truth: dict[int, str] | None = None,
                 audit_share: float | None = None) -> dict[str, Any]:
    """Everything the dashboard shows, as plain JSON data, from a ledger already read from Label Studio
    (or the working state). Annotators are named by their email as Label Studio lists its users now."""
    project_id = ledger.snapshot.project_id
    from connectors.ledger import project_status

    names = annotator_names(client, ledger)
    status = project_status(client, project_id, ledger.snapshot.initial_label_source, budget, ledger=ledger,
                            names=names)
    status["annotators"] = annotator_figures(ledger, names)
    status["truth"] = truth_figures(ledger, truth) if truth else None
    status["generated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
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
        try:
            status["estimate"] = accuracy_estimate(ledger, version.ranking if version is not None else None,
                                                   target=target, audit_share=audit_share)
        except ValueError as exc:  # records that contradict each other: say so, show the rest
            log.warning("project %s: no estimate (%s)", project_id, exc)
            status["estimate"] = {"available": False, "reason": f"the audit records are inconsistent: {exc}"}
    status["cleaning"] = cleaning_view(status, ledger, version.ranking if version is not None else None)
    if redis_conn is not None:
        status["jobs"] = jobs_status(redis_conn, project_id)
    return status


def collect_status(client: Any, project_id: int, settings: Any, store: ModelStore | None = None,
                   redis_conn: Any = None, target: float = 0.95) -> dict[str, Any]:
    """The project's status from the pipeline's working state in Redis (no Label Studio read: contract 5),
    or, where there is none yet (or Redis is down), from one paged read of Label Studio."""
    ledger = working_ledger(redis_conn, project_id, settings.budget, settings.max_annotations_per_task)
    source = "the working state (Redis; the periodic reconcile proves it equals Label Studio)"
    if ledger is None:
        from connectors.ledger import reconcile

        ledger = reconcile(client, project_id, settings.initial_label_source, settings.budget,
                           settings.max_annotations_per_task)
        source = "Label Studio (a full read)"
    status = build_status(client, ledger, store=store, redis_conn=redis_conn, target=target, budget=settings.budget,
                          truth=read_truth(settings.data_home, project_id), audit_share=settings.audit_share)
    status["source"] = source
    return status


def working_ledger(redis_conn: Any, project_id: int, budget: int | None, max_annotations: int | None = None) -> Ledger | None:
    """The ledger from backend.working_state when the project has one, else None (Redis errors included)."""
    if redis_conn is None:
        return None
    from backend.working_state import WorkingState

    try:
        state = WorkingState(redis_conn, project_id, max_annotations)
        return state.ledger(budget) if state.exists() else None
    except Exception as exc:  # a broken or unreachable state must not take the page with it: read Label Studio
        log.warning("project %s: working state unusable (%s); reading Label Studio", project_id, exc)
        return None


def _iso_time(value: Any) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    return datetime.fromtimestamp(value, timezone.utc).isoformat(timespec="seconds")
