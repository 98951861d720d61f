"""Label Studio's window of open tasks, kept from the working state: the push after a retrain, the step after
one annotation, the refill of a free place and the sweep after a reconcile.

Each step reads and writes the working state (:mod:`backend.working_state`) and sends Label Studio only the
requests the step needs (a push: the predictions and the task PATCHes; an annotation: one GET and at most
two PATCHes). Budget slots are reserved atomically before a task opens and released when its PATCH fails,
so two steps racing never open more than the budget pays. The rq jobs (:mod:`backend.jobs`) call these.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import replace
from typing import Any

import numpy as np

from backend import queue as q
from backend.model_store import Ranking
from backend.settings import Settings
from backend.working_state import WorkingState

SPARES = 50  # ranked candidates beyond the window that get a prediction: free places are refilled from them


def window_of(settings: Settings, state: WorkingState) -> int:
    own = state.config().state.window
    return own if own is not None else settings.window


def push_ranking(settings: Settings, ls: Any, state: WorkingState, ranking: Ranking, version: str) -> Any:
    """plan_window on the working state as it is now (annotations arrive while a model trains), with the
    audit's share of the openings, slots reserved atomically, then apply_plan: predictions, the version
    switch, the task PATCHes (each first opening numbered by the state's touched_seq counter)."""
    from connectors.plan import apply_plan, candidates, opening_cost, plan_window, rank_entries

    config, tasks = state.config(), state.tasks()
    entries = rank_entries(ranking)
    cap = settings.max_annotations_per_task
    budget = state.budget(settings.budget)
    window = window_of(settings, state)
    plan = plan_window(list(tasks.values()), entries, budget=budget, window=window, max_annotations=cap,
                       model_version=version, spares=SPARES, audit=audit_policy(settings, tasks, version))
    if state.n_starred():
        state.order_starred(candidates(tasks.values(), entries, cap), tasks)
    opened: set[int] = set()
    granted: list[int] = []

    def reserve(asked: list[tuple[int, int]]) -> list[int]:
        granted.extend(state.reserve([t for t, _ in asked], budget.total, most_open=window,
                                     costs=[c for _, c in asked]))
        return granted

    def stars_off(task_id: int) -> int:  # in the opening PATCH's thread, just before it: best tasks open first
        return take_stars_off(ls, state, tasks[task_id].ground_truth_ids, threads=1)

    def patched(task_id: int, body: dict) -> None:
        state.apply_patch(task_id, body)
        opened.add(task_id)

    try:
        result = apply_plan(ls, config, plan, entries, tasks, max_annotations=cap, on_patched=patched, reserve=reserve,
                            before_open=stars_off, next_seq=state.next_seq)
    finally:
        for tid in set(granted) - opened:
            state.release(tid)
    state.set_model_version(version)
    _remember_predictions(state, config, plan, entries, version)
    served = set(result.window)
    spares = [tid for tid in plan.predict if tid not in served and tid in entries]
    state.set_wrong_prob({tid: e.wrong_prob for tid, e in entries.items() if e.wrong_prob is not None})
    state.set_spares({tid: entries[tid].score for tid in spares},
                     {tid: opening_cost(tasks[tid], entries[tid], cap) for tid in spares})
    # a settled task's place is refilled from the spares: their stars off now (the ranking is live, the window
    # open), so that a refill costs no request more than the PATCH that opens it
    result.requests += take_stars_off(ls, state, [a for tid in spares for a in tasks[tid].ground_truth_ids])
    result.budget = state.budget(settings.budget).as_dict()
    if state.n_starred():
        q.enqueue_unstar(state.conn, state.project_id)
    return result


def audit_policy(settings: Settings, tasks: dict[int, Any], seed: str) -> Any:
    """The audit's share (ALC_AUDIT_SHARE; None when 0) with what the audit draws have spent or hold so far;
    the draws' generator is seeded by ``seed`` (a push's: its model version, so a retried push draws the same
    tasks)."""
    from connectors.plan import AuditPolicy, held

    if settings.audit_share <= 0:
        return None
    cap = settings.max_annotations_per_task
    spent = sum(t.reannotations + held(t, cap) for t in tasks.values() if t.audit is not None)
    return AuditPolicy(settings.audit_share, np.random.default_rng(zlib.crc32(seed.encode())), spent)


def take_stars_off(ls: Any, state: WorkingState, annotation_ids: list[int], threads: int | None = None) -> int:
    """The ground-truth star off those of these annotations that still carry it, before their task opens
    (Label Studio's task lock ignores starred annotations); returns the requests made."""
    from connectors.plan import PATCH_THREADS, clear_ground_truth

    starred = state.starred(annotation_ids)
    clear_ground_truth(ls, starred, threads=threads or PATCH_THREADS)
    state.unstarred(starred)
    return len(starred)


def _remember_predictions(state: WorkingState, config: Any, plan: Any, entries: dict, version: str) -> None:
    """The predictions just imported, into the task records (the dashboard's queue shows their scores)."""
    from connectors.counts import PredictionRecord

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for tid in plan.predict:
        task = state.task(tid)
        if task is None or task.prediction(version) is not None:
            continue
        entry = entries.get(tid)
        why = {"priority": entry.priority, "noisiness": entry.noisiness, "ambiguity": entry.ambiguity,
               "score": entry.score, "model_version": version} if entry else None
        label = config.class_names[int(np.argmax(task.counts))] if sum(task.counts) else config.class_names[0]
        record = PredictionRecord(None, version, entry.score if entry else 1.0, label, why, now)
        state.put_task(replace(task, predictions=[*task.predictions, record]))


def settle(settings: Settings, ls: Any, state: WorkingState, task_id: int) -> dict:
    """After an annotation on ``task_id``: one GET of that task, then at most two PATCHes (close it and
    refill its place, or open one more slot on a tie, reserved atomically within the budget)."""
    from connectors.client import update_task
    from connectors.counts import read_task
    from connectors.errors import TaskNotFound
    from connectors.plan import after_annotation, task_patch

    config = state.config()
    cap = settings.max_annotations_per_task
    known = state.task(task_id)
    try:
        task = read_task(ls, config, task_id, state.users())
    except TaskNotFound:
        state.delete_task(task_id)
        return {"task_id": int(task_id), "action": "task not in Label Studio (deleted): dropped"}
    if known is not None:  # the data as stored, not as the task API resolves its URLs; an order a full read gave
        seq = task.seq if task.seq is not None else (known.seq if task.reannotations > 0 else None)
        task = replace(task, data=known.data, seq=seq)
    state.put_task(task)
    state.sync_starred(task)
    budget = state.budget(settings.budget)
    decision = after_annotation(task, budget, cap)
    outcome: dict[str, Any] = {"task_id": int(task_id), "annotations": task.n_annotations, "counts": list(task.counts),
                               "action": decision.reason}
    if decision.action == "close":
        body = task_patch(task, task.n_annotators, config.class_names, cap)
        if task.overlap != task.n_annotators or any(task.data.get(k) != body["data"][k] for k in body["data"]):
            update_task(ls, task.id, body)
            state.apply_patch(task.id, body)
        outcome["refilled"] = refill(settings, ls, state)
    elif decision.action == "close-all":
        outcome["closed"] = close_tasks(settings, ls, state, state.open_tasks())
    elif decision.action == "open":
        if not state.reserve([task.id], budget.total):  # its opinions are held: only B itself can refuse
            outcome["action"] = "no majority, but the budget is committed: not reopened"
        else:
            try:
                take_stars_off(ls, state, task.ground_truth_ids)
                body = task_patch(task, task.n_annotators + 1, config.class_names, cap)
                update_task(ls, task.id, body)
            except Exception:
                state.release(task.id)
                raise
            state.apply_patch(task.id, body)
    outcome["budget"] = state.budget(settings.budget).as_dict()
    return outcome


def refill(settings: Settings, ls: Any, state: WorkingState) -> int | None:
    """A free place in the window goes to an audit draw when one is due (ALC_AUDIT_SHARE; drawn from the
    untouched pool like a push's, its prediction imported first so Label Studio serves it first), else to the
    best spare of the current ranking (it has its prediction), whose opening the budget can pay, what it
    reserves included (:func:`connectors.plan.opening_cost`): the queue never waits for a retrain to stay full,
    and never opens what it could not finish."""
    from connectors.plan import LEAST_OPENING, in_cleaning, is_done, opening_cost, refill_draw

    budget = state.budget(settings.budget)
    window = window_of(settings, state)
    cap = settings.max_annotations_per_task
    if budget.exhausted or budget.committed >= window or (budget.remaining is not None and budget.remaining < LEAST_OPENING):
        return None
    config = state.config()
    if settings.audit_share > 0:
        tasks = state.tasks()
        policy = audit_policy(settings, tasks, f"{config.model_version}:{budget.spent}:{budget.committed}")
        draw = refill_draw(tasks.values(), state.wrong_prob(), audit=policy, budget=budget, max_annotations=cap)
        if draw is not None:
            return _open(settings, ls, state, tasks[draw.task], opening_cost(tasks[draw.task], None, cap), budget,
                         window, audit=draw)
    for tid in state.spares():
        state.drop_spare(tid)
        task = state.task(tid)
        if task is None or task.open_slots or not task.has_initial or is_done(task, cap) or in_cleaning(task):
            continue
        cost = max(state.spare_cost(tid) or 0, opening_cost(task, None, cap))  # the push knew its ambiguity
        if budget.remaining is not None and cost > budget.remaining:
            continue
        return _open(settings, ls, state, task, cost, budget, window)
    return None


def _open(settings: Settings, ls: Any, state: WorkingState, task: Any, cost: int, budget: Any, window: int,
          audit: Any = None) -> int | None:
    """One task opened between retrains: ``cost`` reserved atomically (None when another refill took the place
    or the budget first), numbered (touched_seq), an audit draw's prediction imported (score 0: served first),
    its stars off, one PATCH."""
    from connectors.client import update_task
    from connectors.counts import PredictionRecord
    from connectors.plan import Opening, RankEntry, prediction_for, task_patch

    if budget.remaining is not None and cost > budget.remaining:
        return None
    config = state.config()
    record = None
    if audit is not None and config.model_version and task.prediction(config.model_version) is None:
        # served first; imported before the reservation (a record write must not undo it). A spare drawn
        # keeps the prediction it has: Label Studio serves it soon anyway.
        served_first = prediction_for(config, task, RankEntry(0.0), config.model_version)
        ls.projects.import_predictions(config.project_id, request=[served_first])
        region = served_first["result"][0]
        record = PredictionRecord(None, config.model_version, 0.0, region["value"]["choices"][0],
                                  region["meta"]["alc"], None)
    if not state.reserve([task.id], budget.total, most_open=window, costs=[cost]):  # two refills racing
        return None
    seq = state.next_seq() if task.seq is None else None
    opening = Opening(cost, replace(audit, seq=seq) if audit is not None and seq is not None else None, seq)
    body = task_patch(task, task.n_annotators + 1, config.class_names, settings.max_annotations_per_task,
                      opening=opening)
    try:
        take_stars_off(ls, state, task.ground_truth_ids)  # none left when the background job came by first
        update_task(ls, task.id, body)
    except Exception:
        state.release(task.id)
        raise
    patched = state.apply_patch(task.id, body)
    if record is not None and patched is not None:
        state.put_task(replace(patched, predictions=[*patched.predictions, record]))
    return task.id


def close_tasks(settings: Settings, ls: Any, state: WorkingState, task_ids: list[int]) -> list[int]:
    from connectors.plan import patch_tasks, task_patch

    config, cap = state.config(), settings.max_annotations_per_task
    tasks = {tid: state.task(tid) for tid in task_ids}
    patch_tasks(ls, {tid: task_patch(t, t.n_annotators, config.class_names, cap) for tid, t in tasks.items() if t},
                on_patched=state.apply_patch)
    return sorted(task_ids)


def sweep(settings: Settings, ls: Any, state: WorkingState) -> dict:
    """After a reconcile: close what is done (everything once the budget is spent), correct the alc_*
    fields that lost events left stale, refill free places."""
    from connectors.plan import is_done, patch_tasks, task_patch

    cap = settings.max_annotations_per_task
    budget = state.budget(settings.budget)
    config = state.config()
    patches = {}
    for task in state.tasks().values():
        due = task.open_slots > 0 and (budget.exhausted or is_done(task, cap))
        overlap = task.n_annotators if due else task.overlap
        body = task_patch(task, overlap, config.class_names, cap)
        stale = "alc_status" in task.data and any(task.data.get(k) != body["data"][k] for k in body["data"])
        if due or stale:
            patches[task.id] = body
    patch_tasks(ls, patches, on_patched=state.apply_patch)
    opened = []
    while (tid := refill(settings, ls, state)) is not None:
        opened.append(tid)
    return {"corrected": sorted(patches), "opened": opened}


def project_done(settings: Settings, state: WorkingState) -> bool:
    """The budget neither spent nor held for the tasks in cleaning cannot pay a new opening: no task can be
    opened any more (the open ones are finished by the annotation steps), so a retrain would change nothing
    but the order of the last open tasks (and the last annotation's job may not have run yet: the working
    state can be one annotation behind when the retrain starts)."""
    from connectors.plan import LEAST_OPENING

    budget = state.budget(settings.budget)
    return budget.remaining is not None and budget.remaining < LEAST_OPENING
