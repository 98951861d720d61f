"""What happens on a Label Studio event: count it, queue the work, and resync what Redis missed.

The web process calls :func:`handle_event` for every handled webhook and :func:`recover_missed`
after it; both only touch Redis (Label Studio waits on the webhook inside the annotator's request).
"""

from __future__ import annotations

from typing import Any

import redis

from backend import queue as q
from backend.webhooks import ANNOTATION_ACTIONS, WebhookEvent


def recover_missed(st: Any) -> None:
    """Redis is back: resync every project whose webhooks were refused, from Label Studio."""
    while st.missed:
        project_id = st.missed.pop()
        try:
            q.request_retrain(st.redis, project_id, st.cadence, force=True)
        except redis.RedisError:
            st.missed.add(project_id)
            raise


def handle_event(st: Any, event: WebhookEvent) -> str:
    """``st`` is the app's state (``redis``, ``cadence``); returns what happened to the project's retrain."""
    conn, cadence, project_id = st.redis, st.cadence, event.project_id
    assert project_id is not None
    if event.action in ANNOTATION_ACTIONS:
        q.record_annotations(conn, project_id, 1)
        q.enqueue_annotation_job(conn, project_id, event.task_id, cadence)
        return q.request_retrain(conn, project_id, cadence)
    if event.action == "ANNOTATIONS_DELETED":
        q.record_annotations(conn, project_id, max(len(event.annotation_ids), 1))
        return q.request_retrain(conn, project_id, cadence)
    conn.sadd(q.PROJECTS_KEY, project_id)
    if event.action == "START_TRAINING":
        return q.request_retrain(conn, project_id, cadence, force=True)
    # PROJECT_UPDATED fires for every change, our own model_version switches included: retrain only
    # when the label config differs from the one the serving model was trained on.
    known = conn.get(q.project_key(project_id, "config"))
    if event.label_config_hash and known is not None and known.decode() != event.label_config_hash:
        return q.request_retrain(conn, project_id, cadence, force=True)
    return "unchanged"
