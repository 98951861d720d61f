"""rq job functions: the one retrain pipeline, the per-annotation step, the reconcile and the un-starring.

```
retrain:     working state -> images (cached per task) -> selector.fit/update -> Ranking
             -> connectors.plan.plan_window (pure) -> reserve slots (atomic) -> connectors.plan.apply_plan
annotation:  GET that one task -> working state -> after_annotation -> at most two task PATCHes
reconcile:   full read -> compare with the working state (recorded) -> rebuild -> close / refill what is due
unstar:      ground-truth stars off in the background, in slices that yield to every other job
```
The working state (:mod:`backend.working_state`) replaces the whole-project reads: a project is read
in full only when its state is missing and in ``reconcile``, which runs periodically (rq's scheduler) and
proves that the state equals Label Studio's. What each job changes in Label Studio (the push, the step after
an annotation, the sweep) is in :mod:`backend.task_window`. A new model version is published (atomically) only after
training succeeded; otherwise the previous one keeps serving and rq retries the job with backoff.

The worker calls :func:`configure` once with its Settings; jobs take them from there (never from the
environment, never from the job's arguments, which live in Redis). Each job makes one Label Studio client.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import httpx
from rq import get_current_job

from backend import queue as q
from backend.images import ImageLoader
from backend.metrics import record_job
from backend.model_store import ModelStore
from backend.protocol import ProtocolError, config_hash
from backend.settings import Settings, SettingsError
from backend.task_window import project_done, push_ranking, settle, sweep, take_stars_off
from backend.training import Snapshot, train_and_score, training_snapshot  # noqa: F401 (tests patch them here)
from backend.working_state import WorkingState, compare, ensure_state, rebuild_from_label_studio

log = logging.getLogger(__name__)

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
