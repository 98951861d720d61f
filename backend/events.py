"""What happens on a Label Studio event: count it, queue the work, and resync what Redis missed.

The web process calls :func:`handle_event` for every handled webhook and :func:`recover_missed`
after it; both only touch Redis (Label Studio waits on the webhook inside the annotator's request).

- ANNOTATION_CREATED / ANNOTATION_UPDATED: one per-annotation job (read that task, settle or reopen it)
  and one more annotation towards the coalesced retrain. An ANNOTATION_UPDATED whose label and skip flag
  equal what the working state already holds changed nothing the loop counts (the backend's own edits,
  e.g. taking the ground-truth star off, fire it): it is acknowledged and ignored.
- ANNOTATIONS_DELETED names no task: the working state knows the task of each annotation, and each such
  task gets its per-annotation job (it is read again); an annotation it does not know makes a reconcile.
- every event keeps the periodic reconcile scheduled (one SET NX when it is).
"""

from __future__ import annotations

from typing import Any

import redis

from backend import queue as q
from backend.webhooks import ANNOTATION_ACTIONS, WebhookEvent
from backend.working_state import WorkingState

NO_CHANGE = "ignored: the annotation's label is unchanged (e.g. the backend's own edit)"


def recover_missed(st: Any) -> None:
    """Redis is back: resync every project whose webhooks were refused, from Label Studio."""
    while st.missed:
        project_id = st.missed.pop()
        try:
            q.enqueue_reconcile(st.redis, project_id, "webhooks refused while Redis was down")
            q.request_retrain(st.redis, project_id, st.cadence, force=True)
        except redis.RedisError:
            st.missed.add(project_id)
            raise


def handle_event(st: Any, event: WebhookEvent) -> str:
    """``st`` is the app's state (``redis``, ``cadence``, ``settings``); returns what happened to the
    project's retrain (or why the event was ignored)."""
    conn, cadence, project_id = st.redis, st.cadence, event.project_id
    assert project_id is not None
    q.schedule_reconcile(conn, st.settings.reconcile_seconds)
    if event.action == "ANNOTATION_UPDATED" and unchanged(conn, event):
        return NO_CHANGE
    if event.action in ANNOTATION_ACTIONS:
        q.record_annotations(conn, project_id, 1)
        q.enqueue_annotation_job(conn, project_id, event.task_id, cadence)
        return q.request_retrain(conn, project_id, cadence)
    if event.action == "ANNOTATIONS_DELETED":
        q.record_annotations(conn, project_id, max(len(event.annotation_ids), 1))
        tasks = WorkingState(conn, project_id).tasks_of_annotations(event.annotation_ids)
        if not tasks or None in tasks.values():
            q.enqueue_reconcile(conn, project_id, "annotations deleted")
        for task_id in sorted({t for t in tasks.values() if t is not None}):
            q.enqueue_annotation_job(conn, project_id, task_id, cadence)
        return q.request_retrain(conn, project_id, cadence)
    conn.sadd(q.PROJECTS_KEY, project_id)
    if event.action == "START_TRAINING":
        return q.request_retrain(conn, project_id, cadence, force=True)
    # PROJECT_UPDATED fires for every change, our own model_version switches included: retrain only
    # when the label config differs from the one the serving model was trained on (and rebuild the
    # working state, whose classes it holds); a new budget or window (`alc connect` again) is taken at once.
    refresh_project_state(conn, project_id, event.instructions, event.description)
    known = conn.get(q.project_key(project_id, "config"))
    if event.label_config_hash and known is not None and known.decode() != event.label_config_hash:
        q.enqueue_reconcile(conn, project_id, "label config changed")
        return q.request_retrain(conn, project_id, cadence, force=True)
    return "unchanged"


def refresh_project_state(conn: redis.Redis, project_id: int, instructions: str | None, description: str | None) -> None:
    """The project's state (budget, window, baseline; connectors.state) from the payload into the working state."""
    from connectors.errors import ProjectConfigError
    from connectors.state import parse_state

    state = WorkingState(conn, project_id)
    if (instructions is None and description is None) or not state.exists():
        return
    try:
        new = parse_state(instructions, description)
    except ProjectConfigError:
        return  # a broken state: reconcile reports it; the working state keeps the last good one
    state.set_project_state(new)


def unchanged(conn: redis.Redis, event: WebhookEvent) -> bool:
    """The payload's annotation has the label and skip flag the working state holds for it (two HGETs)."""
    from connectors.counts import _choice

    payload = event.annotation
    if not isinstance(payload, dict) or not event.annotation_ids or event.task_id is None:
        return False
    state = WorkingState(conn, event.project_id)
    if not state.exists():
        return False
    task = state.task(event.task_id)
    known = next((a for a in (task.annotations if task else []) if a.id == event.annotation_ids[0]), None)
    if known is None:
        return False
    result = payload.get("result")
    label = _choice(result if isinstance(result, list) else None, state.config().from_name)
    return known.label == label and known.cancelled == bool(payload.get("was_cancelled"))
