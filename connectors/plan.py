"""The window as decisions (pure) and the Label Studio calls that carry them out.

``plan_window`` and ``after_annotation`` decide from task records and the budget alone, with no
Label Studio call, so they are tested without one; ``apply_plan`` and ``patch_tasks`` make the calls.
How Label Studio is steered (overlap, ``is_labeled``, uncertainty sampling) is described in
:mod:`connectors.queue`.

What a re-rank sends: one bulk prediction import (the window's tasks plus a few spares that a settled
task's free place is refilled from, batches of 500, tasks that already have this version's prediction
skipped) and one project PATCH (``model_version``: the ranking is live before any task is opened);
then one PATCH per task opened or closed, which sets ``overlap``, ``is_labeled`` and the task's
``alc_*`` data fields together, a bounded number in flight.

The ``alc_*`` data fields make the cleaned result visible in Label Studio's Data Manager (filter or
sort by them): ``alc_status`` (open / settled / capped / unsettled), ``alc_final_label`` (the strict
majority once there is one, else the initial label) and ``alc_changed`` (final differs from initial).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from connectors.client import update_task
from connectors.counts import TaskRecord
from connectors.ledger import Budget
from connectors.project import ProjectConfig

log = logging.getLogger(__name__)

PATCH_THREADS = 8  # task PATCHes in flight at once: Label Studio answers them concurrently
IMPORT_BATCH = 500  # predictions per bulk import request
STATUS_FIELDS = ("alc_status", "alc_final_label", "alc_changed")


# --- decisions (pure) --------------------------------------------------------------------------


def is_done(task: TaskRecord, max_annotations: int) -> bool:
    """Nothing more to ask: a strict majority, or the cap on annotations per task."""
    return task.settled or task.n_annotations >= max_annotations


def final_label(task: TaskRecord, class_names: Sequence[str]) -> str | None:
    if task.settled:
        return class_names[int(np.argmax(task.counts))]
    return task.initial_label


def status_of(task: TaskRecord, max_annotations: int) -> str:
    if task.settled:
        return "settled"
    if task.n_annotations >= max_annotations:
        return "capped"
    return "open" if task.open_slots > 0 else "unsettled"


def task_patch(task: TaskRecord, overlap: int, class_names: Sequence[str], max_annotations: int) -> dict:
    """The one PATCH body that opens or closes a task and records its status in its data fields."""
    after = replace(task, overlap=int(overlap))
    final = final_label(after, class_names)
    data = {
        **task.data,
        "alc_status": status_of(after, max_annotations),
        "alc_final_label": final,
        "alc_changed": bool(final is not None and task.initial_label is not None and final != task.initial_label),
    }
    return {"overlap": int(overlap), "is_labeled": bool(task.n_annotators >= overlap), "data": data}


@dataclass(frozen=True)
class RankEntry:
    score: float  # lower = served sooner
    priority: float | None = None
    noisiness: float | None = None
    ambiguity: float | None = None


def rank_entries(ranking: Any) -> dict[int, RankEntry]:
    """task id -> its entry, from a ``scoring.ranked.Ranking`` (or anything with the same arrays)."""
    return entries_of(ranking.task_ids, ranking.scores, getattr(ranking, "priority", None),
                      getattr(ranking, "noisiness", None), getattr(ranking, "ambiguity", None))


def entries_of(task_ids: Sequence[int], scores: Sequence[float], priorities: Sequence[float] | None = None,
               noisiness: Sequence[float] | None = None, ambiguity: Sequence[float] | None = None) -> dict[int, RankEntry]:
    columns = {"score": scores, "priority": priorities, "noisiness": noisiness, "ambiguity": ambiguity}
    arrays = {k: np.asarray(v, dtype=float) for k, v in columns.items() if v is not None}
    for name, values in arrays.items():
        if len(values) != len(task_ids):
            raise ValueError(f"{len(task_ids)} task ids but {len(values)} {name} values")
    columns_as_lists = {k: [float(x) if np.isfinite(x) else None for x in v.tolist()] for k, v in arrays.items()}
    columns_as_lists["score"] = [1.0 if x is None else x for x in columns_as_lists["score"]]  # no score: the end
    names = list(columns_as_lists)
    return {int(tid): RankEntry(**dict(zip(names, row)))
            for tid, row in zip(task_ids, zip(*(columns_as_lists[k] for k in names)))}


def candidates(tasks: Iterable[TaskRecord], entries: Mapping[int, RankEntry], max_annotations: int) -> list[int]:
    """Ranked tasks that may be opened (labelled, not done, not open), best first."""
    eligible = [t.id for t in tasks if t.id in entries and t.has_initial and t.open_slots == 0
                and not is_done(t, max_annotations)]
    return sorted(eligible, key=lambda tid: (entries[tid].score, -(entries[tid].priority or 0.0), tid))


@dataclass(frozen=True)
class Plan:
    model_version: str
    open: list[int]
    keep: list[int]
    close: list[int]
    predict: list[int]  # tasks that get a prediction of model_version: the window and its spares
    budget: Budget  # after the plan

    @property
    def window(self) -> list[int]:
        return sorted(self.keep + self.open)

    def opening_only(self, granted: Sequence[int]) -> "Plan":
        """The plan with only the ``granted`` openings (the budget reservation may grant fewer)."""
        granted_set = set(granted)
        opened = [t for t in self.open if t in granted_set]
        lost = len(self.open) - len(opened)
        return replace(self, open=opened,
                       budget=Budget(self.budget.total, self.budget.spent, self.budget.committed - lost))


def plan_window(tasks: Sequence[TaskRecord], entries: Mapping[int, RankEntry], *, budget: Budget, window: int,
                max_annotations: int, model_version: str, spares: int = 0) -> Plan:
    """Keep open tasks that still need their annotation, close done ones (all of them once the budget is
    spent), fill free places with the best candidates the budget can pay for; ``spares`` more get a
    prediction so that a free place can be refilled without a retrain."""
    by_id = {t.id: t for t in tasks}
    open_now = [t.id for t in tasks if t.open_slots > 0]
    close = list(open_now) if budget.exhausted else [tid for tid in open_now if is_done(by_id[tid], max_annotations)]
    keep = [tid for tid in open_now if tid not in close]
    committed = budget.committed - sum(by_id[tid].open_slots for tid in close)
    if budget.total is not None and budget.total - budget.spent - committed < 0:
        # the budget shrank below what is open: close the lowest-priority open tasks first
        keep.sort(key=lambda tid: entries[tid].score if tid in entries else 1.0)
        while keep and budget.total - budget.spent - committed < 0:
            tid = keep.pop()
            close.append(tid)
            committed -= by_id[tid].open_slots
    after_close = Budget(budget.total, budget.spent, committed)
    free = max(0, int(window) - len(keep))
    ranked = [] if budget.exhausted else candidates(tasks, entries, max_annotations)
    n_open = int(min(free, after_close.affordable()))
    opened = ranked[:n_open]
    spare = ranked[n_open:n_open + max(0, int(spares))]
    return Plan(model_version, sorted(opened), sorted(keep), sorted(close), keep + opened + spare,
                Budget(budget.total, budget.spent, committed + len(opened)))


@dataclass(frozen=True)
class Decision:
    """What one annotation on a task asks for."""

    action: str  # "close" | "open" | "close-all" | "none"
    reason: str


def after_annotation(task: TaskRecord, budget: Budget, max_annotations: int) -> Decision:
    """Settled or at the cap -> close; budget spent -> close the window; a tie -> one more slot."""
    if task.settled:
        return Decision("close", "settled")
    if task.n_annotations >= max_annotations:
        return Decision("close", f"closed at the cap of {max_annotations} annotations")
    if not task.has_initial or task.reannotations == 0:
        return Decision("none", "not in cleaning (no re-annotation yet)")
    if budget.exhausted:
        return Decision("close-all", "budget spent: window closed")
    if task.open_slots > 0:
        return Decision("none", "waiting for an open slot")
    return Decision("open", "no majority: one more opinion asked")


# --- the calls ---------------------------------------------------------------------------------


@dataclass
class PushResult:
    """What a push changed in Label Studio."""

    model_version: str
    opened: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # open before and still open
    predictions: int = 0  # imported by this push
    requests: int = 0  # Label Studio requests the push made
    budget: dict = field(default_factory=dict)  # after the push
    seconds: float = 0.0

    @property
    def window(self) -> list[int]:
        return sorted(self.kept + self.opened)

    def as_dict(self) -> dict:
        return {"model_version": self.model_version, "opened": self.opened, "closed": self.closed, "kept": self.kept,
                "window": self.window, "predictions": self.predictions, "requests": self.requests,
                "budget": self.budget, "seconds": round(self.seconds, 3)}


def apply_plan(client: LabelStudio, config: ProjectConfig, plan: Plan, entries: Mapping[int, RankEntry],
               tasks: Mapping[int, TaskRecord], *, max_annotations: int,
               on_patched: Callable[[int, dict], None] | None = None,
               reserve: Callable[[list[int]], list[int]] | None = None,
               before_open: Callable[[int], int] | None = None) -> PushResult:
    """Predictions, then the model version switch (live), then the closing PATCHes, then the opening ones.
    Values are absolute, so a push retried after failing half-way does the same thing again, not twice.
    ``on_patched(task_id, body)`` is called after each successful task PATCH (the backend updates its
    working state there); ``reserve(task_ids) -> granted`` (the backend's atomic budget reservation) is
    asked, after the closes freed their slots, which of ``plan.open`` may really be opened;
    ``before_open(task_id) -> requests made`` runs just before each opening PATCH, in its thread (the
    backend takes the task's ground-truth stars off there), so the best tasks open first, not last."""
    started = time.perf_counter()
    result = PushResult(plan.model_version, kept=list(plan.keep), budget=plan.budget.as_dict())
    predictions = [prediction_for(config, tasks[tid], entries.get(tid), plan.model_version)
                   for tid in plan.predict if tasks[tid].prediction(plan.model_version) is None]
    for start in range(0, len(predictions), IMPORT_BATCH):
        client.projects.import_predictions(config.project_id, request=predictions[start:start + IMPORT_BATCH])
        result.requests += 1
    result.predictions = len(predictions)
    if plan.predict and config.model_version != plan.model_version:
        client.projects.update(config.project_id, model_version=plan.model_version)
        result.requests += 1
    closes = {tid: task_patch(tasks[tid], tasks[tid].n_annotators, config.class_names, max_annotations)
              for tid in plan.close}
    result.requests += patch_tasks(client, closes, on_patched)
    result.closed = list(plan.close)
    granted = set(plan.open if reserve is None else reserve(list(plan.open)))  # asked once, for all of them
    opening = [t for t in plan.open if t in granted]
    opens = {tid: task_patch(tasks[tid], tasks[tid].n_annotators + 1, config.class_names, max_annotations)
             for tid in opening}
    result.requests += patch_tasks(client, opens, on_patched, before=before_open)
    result.opened = opening
    if len(opening) < len(plan.open):
        result.budget = plan.opening_only(opening).budget.as_dict()
    result.seconds = time.perf_counter() - started
    log.info("project %s: pushed %s: %d opened, %d kept, %d closed, %d requests", config.project_id,
             plan.model_version, len(plan.open), len(plan.keep), len(plan.close), result.requests)
    return result


def prediction_for(config: ProjectConfig, task: TaskRecord, entry: RankEntry | None, model_version: str) -> dict:
    """The prediction that carries a task's score (lower = sooner) and its explanation (``meta.alc``)."""
    entry = entry or RankEntry(1.0)
    counts = np.asarray(task.counts)
    label = config.class_names[int(np.argmax(counts))] if counts.sum() else config.class_names[0]
    explanation = {
        "priority": entry.priority, "noisiness": entry.noisiness, "ambiguity": entry.ambiguity,
        "score": entry.score,
        "label_counts": {name: int(c) for name, c in zip(config.class_names, counts) if c},
        "model_version": model_version,
        "in_ranking": entry.priority is not None or entry.noisiness is not None,
    }
    region = {"from_name": config.from_name, "to_name": config.to_name, "type": "choices",
              "value": {"choices": [label]}, "meta": {"alc": explanation}}
    return {"task": task.id, "model_version": model_version, "score": entry.score, "result": [region]}


def patch_tasks(client: LabelStudio, patches: Mapping[int, dict],
                on_patched: Callable[[int, dict], None] | None = None,
                before: Callable[[int], int] | None = None) -> int:
    """One PATCH per task in the given order, ``PATCH_THREADS`` in flight, each after ``before(task_id)``
    (which returns the requests it made); returns the number of requests."""
    def send(item: tuple[int, dict]) -> int:
        tid, body = item
        made = before(tid) if before is not None else 0
        update_task(client, tid, body)
        if on_patched is not None:
            on_patched(tid, body)
        return made + 1

    items = list(patches.items())
    if not items:
        return 0
    with ThreadPoolExecutor(max_workers=min(PATCH_THREADS, len(items))) as pool:
        return sum(pool.map(send, items))


def clear_ground_truth(client: LabelStudio, annotation_ids: Sequence[int], *, threads: int = PATCH_THREADS) -> int:
    """Take Label Studio's ground-truth star off these annotations, ``threads`` PATCHes in flight; returns
    the number of requests. An annotation deleted meanwhile (404) has no star left to take off.

    Label Studio 1.23.2 leaves ground-truth annotations out of its task-lock count (``Task.has_lock``)
    but not out of ``is_labeled``; imported annotations are ground truth by default. An opened task
    whose initial label is ground truth is therefore served to two annotators at once (measured), and
    both are paid. Without the star the lock holds; the label itself is untouched.
    """
    def clear(annotation_id: int) -> None:
        try:
            client.annotations.update(int(annotation_id), ground_truth=False)
        except ApiError as exc:
            if exc.status_code != 404:
                raise

    ids = list(annotation_ids)
    if threads == 1 or len(ids) == 1:  # one in flight (the push's call per task): no pool to start
        for annotation_id in ids:
            clear(annotation_id)
    elif ids:
        with ThreadPoolExecutor(max_workers=min(threads, len(ids))) as pool:
            list(pool.map(clear, ids))
    return len(ids)
