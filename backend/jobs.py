"""rq job functions, kept thin: sync from Label Studio -> retrain -> rescore -> publish -> push.

Label Studio is the source of truth: every retrain reads the whole project again (connectors'
``read_project``), so an annotation whose webhook was lost (Redis down, backend restarting) is counted
by the next retrain. A new model version is published (atomically) only after training succeeded;
otherwise the previous one keeps serving and rq retries the job with backoff.

The worker calls :func:`configure` once with its Settings; jobs take them from there (never from the
environment, never from the job's arguments, which live in Redis).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rq import get_current_job

from backend import queue as q
from backend.images import ImageLoader
from backend.metrics import record_job
from backend.model_store import ModelStore, Ranking
from backend.protocol import ChoicesConfig, ProtocolError, config_hash, scores_from_priorities
from backend.settings import Settings, SettingsError

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """What a retrain needs from Label Studio, one row per task."""

    task_ids: list[int]
    class_names: list[str]
    counts: np.ndarray  # (N, C) initial label plus every re-annotation
    image_refs: list[str | None]
    label_config: str
    source: Any = field(default=None, repr=False)  # the connectors' own snapshot, handed back to the push


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


# --- Label Studio's side (connectors) ----------------------------------------------------------


def _client(settings: Settings) -> Any:
    from connectors.client import connect

    url, key = settings.require_label_studio()
    return connect(url, key, timeout=settings.label_studio_timeout, retries=3)


def read_snapshot(settings: Settings, project_id: int) -> Snapshot:
    """Every task of the project with its label counts, from Label Studio (connectors.counts.read_project)."""
    from connectors.counts import read_project

    snap = read_project(_client(settings), project_id, initial_label_source=settings.initial_label_source)
    config = ChoicesConfig.parse(snap.label_config)
    refs = []
    for data in snap.task_data:
        value = data.get(config.data_key) if isinstance(data, dict) else None
        refs.append(value if isinstance(value, str) else None)
    return Snapshot(list(snap.task_ids), list(snap.class_names), np.asarray(snap.counts, float), refs, snap.label_config, snap)


def push_ranking(settings: Settings, project_id: int, snapshot: Snapshot, ranking: Ranking, version: str) -> Any:
    """Hand the new ranking to Label Studio through one connectors function (the open window of top-K tasks)."""
    from connectors.queue import push_window

    return push_window(
        _client(settings),
        project_id,
        snapshot=snapshot.source,
        task_ids=ranking.task_ids,
        scores=ranking.scores,
        priorities=ranking.priority,
        noisiness=ranking.noisiness,
        ambiguity=ranking.ambiguity,
        model_version=version,
        window=settings.window,
        budget=settings.budget,
        max_annotations=settings.max_annotations_per_task,
        initial_label_source=settings.initial_label_source,
    )


def settle_task(settings: Settings, project_id: int, task_id: int) -> Any:
    """After one annotation: settle the task on a strict majority or ask for another opinion (connectors)."""
    from connectors.queue import on_annotation

    return on_annotation(
        _client(settings),
        project_id,
        task_id,
        max_annotations=settings.max_annotations_per_task,
        budget=settings.budget,
        initial_label_source=settings.initial_label_source,
    )


# --- training and scoring (scoring/) -----------------------------------------------------------


def train_and_score(
    settings: Settings, project_id: int, snapshot: Snapshot, store: ModelStore, loader: ImageLoader
) -> tuple[Any, Ranking, dict]:
    """Fit (or update) the selector on the tasks that have labels and a usable image; rank them."""
    from scoring.ranking import Strategy
    from scoring.selectors import make_selector

    counts = np.asarray(snapshot.counts, dtype=float)
    skipped: dict[int, str] = {}
    usable = []
    for i, (task_id, ref) in enumerate(zip(snapshot.task_ids, snapshot.image_refs)):
        if counts[i].sum() <= 0:
            skipped[task_id] = "no label yet"
        elif ref is None:
            skipped[task_id] = "no image"
        else:
            usable.append(i)
    images, errors = loader.load_many([snapshot.image_refs[i] for i in usable])
    ok = [j for j in range(len(usable)) if j not in errors]
    for j, message in errors.items():
        skipped[snapshot.task_ids[usable[j]]] = message
    rows = [usable[j] for j in ok]
    if len(rows) < 2:
        reasons = Counter(skipped.values()).most_common(3)
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons)
        raise ValueError(f"project {project_id}: {len(rows)} task(s) with a label and an image; need at least 2 (skipped: {why})")
    data, counts = images[ok], counts[rows]
    task_ids = [snapshot.task_ids[i] for i in rows]

    previous = store.load(project_id)
    same_tasks = previous is not None and previous.ranking.task_ids == task_ids
    if same_tasks and previous.ranking.class_names == list(snapshot.class_names) and previous.meta.get("selector") == settings.selector:
        selector, mode = previous.selector(), "update"
        selector.update(data, counts)
    else:
        context = {"cache_dir": store.project_dir(project_id) / "cache", "n_classes": counts.shape[1]}
        selector, mode = make_selector(settings.selector, **{**context, **settings.selector_options}), "fit"
        selector.fit(data, counts)
    strategy = Strategy.build(selector, settings.rule)
    output = strategy.model_output(data)
    priorities = strategy.priorities(counts, output)
    probs = output.mean(axis=0) if output.ndim == 3 else output
    ranking = Ranking(
        task_ids=task_ids,
        class_names=list(snapshot.class_names),
        counts=counts,
        priority=priorities.priority,
        noisiness=priorities.noisiness,
        ambiguity=priorities.ambiguity,
        scores=scores_from_priorities(priorities.priority),
        predicted=probs.argmax(axis=1),
    )
    meta = {
        "project": project_id,
        "selector": settings.selector,
        "selector_version": str(selector.version),
        "selector_options": settings.selector_options,
        "rule": strategy.rule.name,
        "mode": mode,
        "tasks": len(task_ids),
        "annotations": int(counts.sum()),
        "skipped": {str(k): v for k, v in skipped.items()},
    }
    return selector, ranking, meta


# --- the rq jobs -------------------------------------------------------------------------------


PERMANENT_CONNECTOR_ERRORS = ("LabelStudioAuthError", "UnknownProject", "ProjectConfigError")


def _permanent_errors() -> tuple[type[BaseException], ...]:
    """Failures a retry cannot fix: a missing setting, a refused key, an unknown project, a bad label config."""
    import connectors.client
    import connectors.errors

    found = [
        getattr(module, name)
        for module in (connectors.errors, connectors.client)
        for name in PERMANENT_CONNECTOR_ERRORS
        if isinstance(getattr(module, name, None), type)
    ]
    return (SettingsError, ProtocolError, *found)


def _no_retry_if_permanent(job: Any, exc: Exception) -> None:
    """rq retries every failure; spare it the backoff when the error says a retry is pointless."""
    if job is not None and isinstance(exc, _permanent_errors()):
        job.retries_left = 0


def retrain(project_id: int) -> dict:
    """The coalesced retrain of one project: sync, fit/update, rescore, publish, push."""
    ctx = context()
    job = get_current_job()
    conn = job.connection
    cadence = q.Cadence.from_settings(ctx.settings)
    covered = q.claim(conn, project_id, job.id, cadence)
    if covered is None:
        record_job(conn, "retrain", "duplicate", 0.0)
        return {"skipped": "another retrain of this project owns the pending mark"}
    started = time.monotonic()
    try:
        snapshot = read_snapshot(ctx.settings, project_id)
        selector, ranking, meta = train_and_score(ctx.settings, project_id, snapshot, ctx.store, ctx.loader)
        version = ctx.store.publish(project_id, selector, ranking, meta)
        conn.set(q.project_key(project_id, "config"), config_hash(snapshot.label_config))
        pushed = push_ranking(ctx.settings, project_id, snapshot, ranking, version)
    except Exception as exc:
        record_job(conn, "retrain", "error", time.monotonic() - started)
        log.exception("retrain of project %s failed; the previous model version keeps serving", project_id)
        _no_retry_if_permanent(job, exc)
        raise
    seconds = time.monotonic() - started
    record_job(conn, "retrain", "ok", seconds)
    record = {"model_version": version, "seconds": round(seconds, 3), "tasks": meta["tasks"], "mode": meta["mode"],
              "push": _push_summary(pushed)}
    follow_up = q.finish(conn, project_id, job.id, covered, cadence, record)
    log.info("project %s: model %s (%s, %d tasks) in %.1f s", project_id, version, meta["mode"], meta["tasks"], seconds)
    return {**record, "annotations": covered, "follow_up": follow_up}


def _push_summary(pushed: Any) -> dict:
    """How many tasks the push opened, kept and closed, and the budget after it (ids stay in Label Studio)."""
    data = pushed.as_dict() if hasattr(pushed, "as_dict") else dict(pushed or {})
    return {k: len(v) if isinstance(v, list) else v for k, v in data.items() if k != "window"}


def annotation_changed(project_id: int, task_id: int) -> Any:
    """Per-annotation bookkeeping in Label Studio: majority reached -> settled, else one more opinion."""
    ctx = context()
    conn = get_current_job().connection
    started = time.monotonic()
    try:
        result = settle_task(ctx.settings, project_id, task_id)
    except Exception as exc:
        record_job(conn, "annotation", "error", time.monotonic() - started)
        _no_retry_if_permanent(get_current_job(), exc)
        raise
    record_job(conn, "annotation", "ok", time.monotonic() - started)
    return result

