"""rq job functions: the one retrain pipeline, the per-annotation step and the reconcile.

```
retrain:     working state -> images (cached per task) -> selector.fit/update -> Ranking
             -> connectors.plan.plan_window (pure) -> reserve slots (atomic) -> connectors.plan.apply_plan
annotation:  GET that one task -> working state -> after_annotation -> at most two task PATCHes
reconcile:   full read -> compare with the working state (recorded) -> rebuild -> close / refill what is due
unstar:      ground-truth stars off in the background, in slices that yield to every other job
```
The working state (:mod:`backend.working_state`) replaces the whole-project reads: a project is read
in full only when its state is missing and in ``reconcile``, which runs periodically (rq's scheduler) and
proves that the state equals Label Studio's. A new model version is published (atomically) only after
training succeeded; otherwise the previous one keeps serving and rq retries the job with backoff.

The worker calls :func:`configure` once with its Settings; jobs take them from there (never from the
environment, never from the job's arguments, which live in Redis). Each job makes one Label Studio client.
"""

from __future__ import annotations

import logging
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import httpx
import numpy as np
from rq import get_current_job

from backend import queue as q
from backend.images import ImageLoader
from backend.metrics import record_job
from backend.model_store import ModelStore, Ranking
from backend.protocol import ProtocolError, config_hash
from backend.settings import Settings, SettingsError
from backend.training import Snapshot, train_and_score, training_snapshot  # noqa: F401 (tests patch them here)
from backend.working_state import WorkingState, compare, ensure_state, rebuild_from_label_studio

log = logging.getLogger(__name__)

SPARES = 50  # ranked candidates beyond the window that get a prediction: free places are refilled from them
TRANSPORT: httpx.BaseTransport | None = None  # tests: an in-memory Label Studio under the real client
CLIENT_BACKOFF = 0.5  # seconds before the client's first retry (doubling)
# the background un-starring, one request at a time: Label Studio 1.23.2 takes about 12 such PATCHes a second
# with one in flight and 14 with two (4 gunicorn workers, SQLite), and a second one makes its other answers
# 2.6x slower (a task GET 72 -> 189 ms); the other queues are looked at after each one (a job that arrives
# waits for at most one un-star, about 85 ms)
UNSTAR_THREADS = 1
UNSTAR_BATCH = 1
UNSTAR_SLICE_SECONDS = 120.0


@dataclass
class JobContext:
    settings: Settings
    store: ModelStore
    loader: ImageLoader


_context: JobContext | None = None


def configure(settings: Settings) -> JobContext:
    """Called once per worker process (before forking work horses)."""
    global _context
    _context = JobContext(settings, ModelStore(settings.models_path), ImageLoader.from_settings(settings))
    return _context


def context() -> JobContext:
    if _context is None:
        raise RuntimeError("jobs are not configured: run them in `alc worker`, which calls backend.jobs.configure")
    return _context


def client(ctx: JobContext) -> Any:
    """One Label Studio client per job."""
    from connectors.client import connect

    url, key = ctx.settings.require_label_studio()
    return connect(url, key, timeout=ctx.settings.label_studio_timeout, retries=3, backoff=CLIENT_BACKOFF,
                   transport=TRANSPORT, check=False)


def working_state(ctx: JobContext, conn: Any, ls: Any, project_id: int) -> WorkingState:
    return ensure_state(conn, ls, project_id, ctx.settings.initial_label_source,
                        max_annotations=ctx.settings.max_annotations_per_task)


# --- Label Studio's side: the push, one annotation, the sweep ----------------------------------


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


# --- the rq jobs -------------------------------------------------------------------------------


PERMANENT_CONNECTOR_ERRORS = ("LabelStudioAuthError", "UnknownProject", "ProjectConfigError", "TaskNotFound")


def _permanent_errors() -> tuple[type[BaseException], ...]:
    """Failures a retry cannot fix: a missing setting, a refused key, an unknown project or task, a bad config."""
    import connectors.errors

    found = [getattr(connectors.errors, name) for name in PERMANENT_CONNECTOR_ERRORS]
    return (SettingsError, ProtocolError, *found)


def _is_permanent(exc: BaseException) -> bool:
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, _permanent_errors()):
        return True
    status = getattr(exc, "status_code", None) if isinstance(exc, ApiError) else None
    return status is not None and 400 <= int(status) < 500 and int(status) not in (408, 409, 429)


def _no_retry_if_permanent(job: Any, exc: Exception) -> None:
    """rq retries every failure; spare it the backoff when the error says a retry is pointless (a 404...)."""
    if job is not None and _is_permanent(exc):
        job.retries_left = 0


@dataclass
class _Run:
    """The rq job running now, from when it started."""

    job: Any
    started: float
    outcome: str = "ok"

    @property
    def conn(self) -> Any:
        return self.job.connection

    def seconds(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def _recorded(kind: str) -> Iterator[_Run]:
    """The current job timed and counted under ``kind`` with ``run.outcome`` ("error" when it raises); a
    failure a retry cannot fix gets no retry."""
    run = _Run(get_current_job(), time.monotonic())
    try:
        yield run
    except Exception as exc:
        record_job(run.conn, kind, "error", run.seconds())
        _no_retry_if_permanent(run.job, exc)
        raise
    record_job(run.conn, kind, run.outcome, run.seconds())


def retrain(project_id: int) -> dict:
    """The coalesced retrain of one project: working state, fit/update, rescore, publish, push."""
    ctx = context()
    with _recorded("retrain") as run:
        job, conn = run.job, run.conn
        cadence = q.Cadence.from_settings(ctx.settings)
        covered = q.claim(conn, project_id, job.id, cadence)
        if covered is None:
            run.outcome = "duplicate"
            return {"skipped": "another retrain of this project owns the pending mark"}
        q.schedule_reconcile(conn, ctx.settings.reconcile_seconds)
        run.started = time.monotonic()
        try:
            ls = client(ctx)
            state = working_state(ctx, conn, ls, project_id)
            if project_done(ctx.settings, state):
                record = {"skipped": "budget spent or held for the open tasks: no task can be opened, nothing to "
                                     "retrain for",
                          "seconds": 0.0}
                q.finish(conn, project_id, job.id, covered, cadence, record, follow_up=False)
                run.outcome = "done"
                return record
            snapshot = training_snapshot(state)
            selector, ranking, meta = train_and_score(ctx.settings, project_id, snapshot, ctx.store, ctx.loader)
            if project_done(ctx.settings, state):  # the budget ran out while it trained: publish nothing
                record = {"skipped": "the budget was spent or held during the training: not published",
                          "seconds": round(run.seconds(), 3)}
                q.finish(conn, project_id, job.id, covered, cadence, record, follow_up=False)
                run.outcome = "done"
                return record
            version = ctx.store.publish(project_id, selector, ranking, meta)
            state.set_skipped(meta["skipped"])
            conn.set(q.project_key(project_id, "config"), config_hash(snapshot.label_config))
            pushed = push_ranking(ctx.settings, ls, state, ranking, version)
        except Exception:
            log.exception("retrain of project %s failed; the previous model version keeps serving", project_id)
            raise
        seconds = run.seconds()
        record = {"model_version": version, "seconds": round(seconds, 3), "tasks": meta["tasks"],
                  "mode": meta["mode"], "push": _push_summary(pushed)}
        follow_up = q.finish(conn, project_id, job.id, covered, cadence, record)
        log.info("project %s: model %s (%s, %d tasks) in %.1f s", project_id, version, meta["mode"], meta["tasks"],
                 seconds)
        return {**record, "annotations": covered, "follow_up": follow_up}


def _push_summary(pushed: Any) -> dict:
    """How many tasks the push opened, kept and closed, and the budget after it (ids stay in Label Studio)."""
    data = pushed.as_dict() if hasattr(pushed, "as_dict") else dict(pushed or {})
    return {k: len(v) if isinstance(v, list) else v for k, v in data.items() if k != "window"}


def annotation_changed(project_id: int, task_id: int) -> Any:
    """Per-annotation step on the working state: majority reached -> settled, else one more opinion."""
    ctx = context()
    with _recorded("annotation") as run:
        ls = client(ctx)
        return settle(ctx.settings, ls, working_state(ctx, run.conn, ls, project_id), task_id)


def reconcile(project_id: int, trigger: str = "periodic") -> dict:
    """Full read of the project, the differences from the working state recorded, the state rebuilt, then
    what the lost events left undone (a settled task still open, a free place) done. Label Studio wins."""
    ctx = context()
    with _recorded("reconcile") as run:
        conn = run.conn
        q.release_reconcile(conn, project_id)  # from now on a new request queues another: a run killed mid-way blocks nothing
        ls = client(ctx)
        state = WorkingState(conn, project_id, ctx.settings.max_annotations_per_task)
        differences: list[str] = []
        fresh = rebuild_from_label_studio(state, ls, ctx.settings.initial_label_source,
                                          before=lambda snap, touched: differences.extend(compare(state, snap, touched)))
        swept = sweep(ctx.settings, ls, state)
        if state.n_starred():  # e.g. tasks imported with their annotations since connect
            q.enqueue_unstar(conn, project_id)
        record = {"time": time.time(), "trigger": trigger, "tasks": len(fresh.tasks), "differences": differences[:200],
                  "n_differences": len(differences), "starred_left": state.n_starred(), **swept,
                  "seconds": round(run.seconds(), 3)}
        state.record_reconcile(record)
    if differences:
        log.warning("project %s: reconcile found %d difference(s), e.g. %s", project_id, len(differences), differences[0])
    return record


def reconcile_all() -> dict:
    """The periodic job: one reconcile per connected project, then the next run scheduled (rq's scheduler)."""
    ctx = context()
    conn = get_current_job().connection
    try:
        queued = [int(p) for p in sorted(conn.smembers(q.PROJECTS_KEY), key=int)
                  if WorkingState(conn, int(p)).exists() and q.enqueue_reconcile(conn, int(p), "periodic")]
    finally:
        q.schedule_reconcile(conn, ctx.settings.reconcile_seconds, after_run=True)
    return {"queued": queued}


def unstar(project_id: int) -> dict:
    """Background slice: ground-truth stars off, one PATCH at a time, in the order the latest push would open
    their tasks, until none is left, another job waits (looked at after each PATCH; the next slice then
    starts ``UNSTAR_PAUSE_SECONDS`` later) or ``UNSTAR_SLICE_SECONDS`` passed (the next slice at once).
    Whatever opens a task takes its own stars off first, so nothing waits for this: it saves those requests
    when the tasks open later."""
    ctx = context()
    with _recorded("unstar") as run:
        conn = run.conn
        q.release_unstar(conn, project_id)  # from here a push may queue the next slice
        state = WorkingState(conn, project_id)
        if not state.exists():
            run.outcome = "skipped"
            return {"skipped": "no working state (the next retrain or reconcile rebuilds it)"}
        ls = client(ctx)
        done, gave_way = 0, False
        while batch := state.next_starred(UNSTAR_BATCH):
            take_stars_off(ls, state, batch, threads=UNSTAR_THREADS)
            done += len(batch)
            gave_way = q.others_waiting(conn)
            if gave_way or run.seconds() > UNSTAR_SLICE_SECONDS:
                break
        left = state.n_starred()
        if left:
            q.enqueue_unstar(conn, project_id, pause=gave_way)
        return {"unstarred": done, "left": left, "gave_way": gave_way, "seconds": round(run.seconds(), 3)}
