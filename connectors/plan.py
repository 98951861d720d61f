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
import math
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
HOLD_FIELD, SEQ_FIELD, AUDIT_FIELD = "alc_hold", "alc_seq", "alc_audit"  # written once, by a task's first opening
LEAST_OPENING = 2  # what opening a task on one initial label reserves: two agreeing opinions overturn it
AMBIGUOUS_SHARE = 0.5  # ambiguity above this share of log C reserves one opinion more (the dashboard's "ambiguous")


# --- decisions (pure) --------------------------------------------------------------------------


def is_done(task: TaskRecord, max_annotations: int) -> bool:
    """Nothing more to ask: a strict majority, or the cap on annotations per task."""
    return task.settled or task.n_annotations >= max_annotations


def in_cleaning(task: TaskRecord) -> bool:
    """Opened for re-annotation at least once (a slot open now, or a re-annotation already given)."""
    return task.has_initial and (task.open_slots > 0 or task.reannotations > 0)


def opinions_to_settle(counts: Sequence[int]) -> int:
    """The fewest more opinions that settle the task whichever way it goes: the runner-up class must be able
    to win, so top - runner-up + 1 (one initial label: 2, two agreeing opinions overturn it; a tie: 1)."""
    ordered = sorted((int(c) for c in counts), reverse=True) + [0, 0]
    return ordered[0] - ordered[1] + 1


def touched(task: TaskRecord) -> bool:
    """Opened at least once, now or before (in cleaning, or carrying the ``alc_seq`` its first opening wrote)."""
    return in_cleaning(task) or (isinstance(task.data, dict) and SEQ_FIELD in task.data)


def held(task: TaskRecord, max_annotations: int) -> int:
    """Budget set aside to finish a task in cleaning (0 for any other): what its counts still need to settle,
    or what was reserved when it opened (``data.alc_hold``, e.g. 3 for an ambiguous image) less what it has
    spent since, whichever is more; never above what the cap still allows, never below its open slots."""
    if not in_cleaning(task) or is_done(task, max_annotations):
        return 0
    reserved = int(task.data.get(HOLD_FIELD) or 0) - task.reannotations if isinstance(task.data, dict) else 0
    need = max(opinions_to_settle(task.counts), reserved)
    return max(min(need, max_annotations - task.n_annotations), task.open_slots)


def held_total(tasks: Iterable[TaskRecord], max_annotations: int) -> int:
    return sum(held(t, max_annotations) for t in tasks)


def ambiguous(entry: "RankEntry | None", n_classes: int) -> bool:
    """The model finds the image unclear: its ambiguity (predictive entropy, nats) above half of log C."""
    value = entry.ambiguity if entry is not None else None
    return value is not None and value > AMBIGUOUS_SHARE * math.log(max(n_classes, 2))


def opening_cost(task: TaskRecord, entry: "RankEntry | None", max_annotations: int) -> int:
    """What opening this task reserves: the opinions its counts need to settle (2 for one initial label), one
    more when the image is ambiguous (a tie is likely: a third opinion breaks it); within the cap."""
    need = opinions_to_settle(task.counts) + int(ambiguous(entry, len(task.counts)))
    return max(1, min(need, max_annotations - task.n_annotations))


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


def task_patch(task: TaskRecord, overlap: int, class_names: Sequence[str], max_annotations: int, *,
               opening: Opening | None = None) -> dict:
    """The one PATCH body that opens or closes a task and records its status in its data fields; an
    ``opening`` of a task never opened before also records what it reserved (``alc_hold``), its place in the
    order tasks were opened (``alc_seq``) and, for an audit draw, the draw (``alc_audit``)."""
    after = replace(task, overlap=int(overlap))
    final = final_label(after, class_names)
    data = {
        **task.data,
        "alc_status": status_of(after, max_annotations),
        "alc_final_label": final,
        "alc_changed": bool(final is not None and task.initial_label is not None and final != task.initial_label),
    }
    if opening is not None:
        data[HOLD_FIELD] = int(opening.cost)
        if opening.seq is not None:
            data[SEQ_FIELD] = int(opening.seq)
        if opening.audit is not None:
            data[AUDIT_FIELD] = opening.audit.to_json()
    return {"overlap": int(overlap), "is_labeled": bool(task.n_annotators >= overlap), "data": data}


@dataclass(frozen=True)
class RankEntry:
    score: float  # lower = served sooner
    priority: float | None = None
    noisiness: float | None = None
    ambiguity: float | None = None
    wrong_prob: float | None = None  # the model's probability that the current label is wrong (audit draws)


def rank_entries(ranking: Any) -> dict[int, RankEntry]:
    """task id -> its entry, from a ``scoring.ranked.Ranking`` (or anything with the same arrays)."""
    p_label = getattr(ranking, "p_label", None)
    return entries_of(ranking.task_ids, ranking.scores, getattr(ranking, "priority", None),
                      getattr(ranking, "noisiness", None), getattr(ranking, "ambiguity", None),
                      None if p_label is None else 1.0 - np.asarray(p_label, dtype=float))


def entries_of(task_ids: Sequence[int], scores: Sequence[float], priorities: Sequence[float] | None = None,
               noisiness: Sequence[float] | None = None, ambiguity: Sequence[float] | None = None,
               wrong_prob: Sequence[float] | None = None) -> dict[int, RankEntry]:
    columns = {"score": scores, "priority": priorities, "noisiness": noisiness, "ambiguity": ambiguity,
               "wrong_prob": wrong_prob}
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


def to_finish(tasks: Iterable[TaskRecord], max_annotations: int) -> list[int]:
    """Tasks in cleaning that are not done and have no open slot (a tie whose extra opinion is not asked yet):
    they come before any new opening, ties first (one opinion settles them), then by task id."""
    waiting = [t for t in tasks if in_cleaning(t) and t.open_slots == 0 and not is_done(t, max_annotations)]
    return [t.id for t in sorted(waiting, key=lambda t: (opinions_to_settle(t.counts), t.id))]


@dataclass(frozen=True)
class AuditPolicy:
    """The audit's share of the openings (scoring.audit): ``share`` of the budget goes to uniform draws from
    the untouched pool, whose settled labels give the accuracy estimate its design-based basis."""

    share: float
    rng: np.random.Generator
    audit_spent: int = 0  # re-annotations spent or held on audit draws so far


@dataclass(frozen=True)
class Opening:
    """What opening one task reserves and records (``task_patch(..., opening=)``)."""

    cost: int
    audit: Any = None  # scoring.audit.AuditDraw for an audit draw
    seq: int | None = None  # touched_seq: tasks opened before it (given when the PATCH is made)


@dataclass(frozen=True)
class Plan:
    model_version: str
    open: list[int]  # in the order they are opened: tasks to finish, then audit draws, then the ranking's best
    keep: list[int]
    close: list[int]
    predict: list[int]  # tasks that get a prediction of model_version: the window and its spares
    budget: Budget  # after the plan
    openings: dict[int, Opening] = field(default_factory=dict)  # the first opening of a task: its cost, its draw

    @property
    def window(self) -> list[int]:
        return sorted(self.keep + self.open)

    def opening_only(self, granted: Sequence[int]) -> "Plan":
        """The plan with only the ``granted`` openings (the budget reservation may grant fewer)."""
        granted_set = set(granted)
        opened = [t for t in self.open if t in granted_set]
        lost = [t for t in self.open if t not in granted_set]
        held_lost = sum(self.openings[t].cost if t in self.openings else 0 for t in lost)
        return replace(self, open=opened, openings={t: o for t, o in self.openings.items() if t in granted_set},
                       budget=Budget(self.budget.total, self.budget.spent, self.budget.committed - len(lost),
                                     self.budget.held - held_lost))


def plan_window(tasks: Sequence[TaskRecord], entries: Mapping[int, RankEntry], *, budget: Budget, window: int,
                max_annotations: int, model_version: str, spares: int = 0,
                audit: AuditPolicy | None = None) -> Plan:
    """Keep open tasks that still need their annotation, close done ones (all of them once the budget is
    spent), then fill free places: first the tasks in cleaning that wait for an opinion (ties first: their
    cost is already held), then new tasks while the budget not yet spent or held can pay what each one
    reserves (:func:`opening_cost`: 2 for one initial label, 3 for an ambiguous image), an audit draw from
    the untouched pool whenever ``scoring.audit.audit_due`` says so, else the ranking's best. So the plan
    never opens more than the budget can bring to a majority, and stops opening new tasks when it runs low.
    ``spares`` more ranked tasks get a prediction so that a free place can be refilled without a retrain."""
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
    closing = set(close)
    holding = sum(held(t, max_annotations) for t in tasks if not (t.id in closing and t.reannotations == 0))
    free_places = max(0, int(window) - len(keep))
    opened: list[int] = []
    openings: dict[int, Opening] = {}
    unlimited = budget.total is None

    def slot_left() -> bool:  # Label Studio may serve one more annotation (open slots within B)
        return unlimited or budget.total - budget.spent - committed - len(opened) >= 1

    def free() -> float:  # budget neither spent nor held for the tasks in cleaning
        return float("inf") if unlimited else budget.total - budget.spent - holding

    if not budget.exhausted:
        for tid in to_finish(tasks, max_annotations):  # their opinions are held already: no new cost
            if len(opened) >= free_places or not slot_left():
                break
            opened.append(tid)
        fresh = [tid for tid in candidates(tasks, entries, max_annotations)
                 if not in_cleaning(by_id[tid]) and tid not in closing]
        drawn: set[int] = set()
        ranked = iter(fresh)
        audit_spent = audit.audit_spent if audit is not None else 0
        while len(opened) < free_places and slot_left():
            pick, draw = None, None
            if audit is not None and _audit_due(audit, audit_spent, budget, holding):
                pool = [tid for tid in fresh if tid not in drawn and not touched(by_id[tid])]
                if pool:
                    draw = _draw(audit, pool, entries, seq=0)
                    pick = draw.task
            if pick is None:
                pick = next((tid for tid in ranked if tid not in openings), None)
                if pick is None:
                    break
            cost = opening_cost(by_id[pick], entries.get(pick), max_annotations)
            if cost > free():
                if draw is not None:  # an audit that does not fit: nothing else will either, this round
                    break
                continue  # an ambiguous task (3) may not fit where a clear one (2) does
            drawn.add(pick)
            opened.append(pick)
            openings[pick] = Opening(cost, draw)
            holding += cost
            if draw is not None:
                audit_spent += cost
        spare_ids = [tid for tid in fresh if tid not in openings][:max(0, int(spares))]
    else:
        spare_ids = []
    served_first = sorted(opened, key=lambda t: 0 if t in openings and openings[t].audit is not None else 1)
    return Plan(model_version, opened, sorted(keep), sorted(close), keep + served_first + spare_ids,
                Budget(budget.total, budget.spent, committed + len(opened), holding), openings)


def _audit_due(audit: AuditPolicy, audit_spent: int, budget: Budget, holding: int) -> bool:
    from scoring.audit import audit_due

    spent = max(budget.spent + holding, audit_spent)  # (the budget and the tasks may be read a moment apart)
    return audit.share > 0 and audit_due(audit_spent=audit_spent, spent=spent, budget=budget.total, share=audit.share)


def _draw(audit: AuditPolicy, pool: list[int], entries: Mapping[int, RankEntry], seq: int) -> Any:
    """One uniform draw from the untouched pool (scoring.audit.draw_audit), with each task's wrong_prob
    (0 where the ranking has none: no model yet)."""
    from scoring.audit import draw_audit

    wrong = np.array([(entries[t].wrong_prob if t in entries and entries[t].wrong_prob is not None else 0.0)
                      for t in pool], dtype=float)
    return draw_audit(np.asarray(pool, dtype=np.int64), wrong, seq=seq, rng=audit.rng)


@dataclass(frozen=True)
class Decision:
    """What one annotation on a task asks for."""

    action: str  # "close" | "open" | "close-all" | "none"
    reason: str


def after_annotation(task: TaskRecord, budget: Budget, max_annotations: int) -> Decision:
    """Settled or at the cap -> close; budget spent -> close the window; a tie -> one more slot (its cost was
    held when the task opened, so it comes before any new opening)."""
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
    audits: list[int] = field(default_factory=list)  # of the opened: the audit draws
    predictions: int = 0  # imported by this push
    requests: int = 0  # Label Studio requests the push made
    budget: dict = field(default_factory=dict)  # after the push
    seconds: float = 0.0

    @property
    def window(self) -> list[int]:
        return sorted(self.kept + self.opened)

    def as_dict(self) -> dict:
        return {"model_version": self.model_version, "opened": self.opened, "closed": self.closed, "kept": self.kept,
                "audits": self.audits, "window": self.window, "predictions": self.predictions, "requests": self.requests,
                "budget": self.budget, "seconds": round(self.seconds, 3)}


def apply_plan(client: LabelStudio, config: ProjectConfig, plan: Plan, entries: Mapping[int, RankEntry],
               tasks: Mapping[int, TaskRecord], *, max_annotations: int,
               on_patched: Callable[[int, dict], None] | None = None,
               reserve: Callable[[list[tuple[int, int]]], list[int]] | None = None,
               before_open: Callable[[int], int] | None = None,
               next_seq: Callable[[int], int] | None = None) -> PushResult:
    """Predictions, then the model version switch (live), then the closing PATCHes, then the opening ones.
    Values are absolute, so a push retried after failing half-way does the same thing again, not twice.
    ``on_patched(task_id, body)`` is called after each successful task PATCH (the backend updates its
    working state there); ``reserve([(task_id, cost), ...]) -> granted`` (the backend's atomic budget
    reservation; cost 0: a task in cleaning whose opinions are held already) is asked, after the closes freed
    their slots, which of ``plan.open`` may really be opened; ``next_seq(n)`` gives the first of ``n``
    consecutive touched_seq numbers for the tasks opened for the first time (the backend's atomic counter;
    without it they follow the tasks already touched); ``before_open(task_id) -> requests made`` runs just
    before each opening PATCH, in its thread (the backend takes the task's ground-truth stars off there), so
    the best tasks open first, not last. Audit draws are served first (their prediction's score is 0)."""
    started = time.perf_counter()
    result = PushResult(plan.model_version, kept=list(plan.keep), budget=plan.budget.as_dict())
    audits = {tid for tid, o in plan.openings.items() if o.audit is not None}
    served = {tid: (replace(entries[tid], score=0.0) if tid in audits and tid in entries else entries.get(tid))
              for tid in plan.predict}
    predictions = [prediction_for(config, tasks[tid], served[tid], plan.model_version)
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
    asked = [(tid, plan.openings[tid].cost if tid in plan.openings else 0) for tid in plan.open]
    granted = set(plan.open if reserve is None else reserve(asked))  # asked once, for all of them
    opening = [t for t in plan.open if t in granted]
    first = [t for t in opening if t in plan.openings]
    if next_seq is not None:
        start_seq = next_seq(len(first)) if first else 0
    else:
        start_seq = sum(touched(t) for t in tasks.values())
    seqs = {tid: start_seq + i for i, tid in enumerate(first)}
    opens = {tid: task_patch(tasks[tid], tasks[tid].n_annotators + 1, config.class_names, max_annotations,
                             opening=_numbered(plan.openings.get(tid), seqs.get(tid)))
             for tid in opening}
    result.requests += patch_tasks(client, opens, on_patched, before=before_open)
    result.opened = sorted(opening)
    result.audits = [t for t in opening if t in audits]
    if len(opening) < len(plan.open):
        result.budget = plan.opening_only(opening).budget.as_dict()
    result.seconds = time.perf_counter() - started
    log.info("project %s: pushed %s: %d opened (%d audit draws), %d kept, %d closed, %d requests",
             config.project_id, plan.model_version, len(opening), len(result.audits), len(plan.keep),
             len(plan.close), result.requests)
    return result


def _numbered(opening: Opening | None, seq: int | None) -> Opening | None:
    """The opening with its touched_seq (and its audit draw's ``seq``) filled in."""
    if opening is None:
        return None
    audit = replace(opening.audit, seq=int(seq)) if opening.audit is not None and seq is not None else opening.audit
    return replace(opening, seq=seq, audit=audit)


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
