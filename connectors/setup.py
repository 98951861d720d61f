"""`alc connect`: set a Label Studio project up for the cleaning queue, and say what was set.

Idempotent: connecting again updates what exists (webhook, ML backend, tab) instead of adding
copies, and keeps the recorded baseline (so re-annotations made so far stay re-annotations).
The project's ``maximum_annotations`` is left alone: changing it makes Label Studio reset every
task's overlap, which would close or open the queue behind our back.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable

from label_studio_sdk import LabelStudio

from connectors.client import get_project
from connectors.counts import ProjectSnapshot, _plain, project_config, read_tasks, snapshot_of_raw, user_emails
from connectors.project import choices_tag
from connectors.queue import set_overlaps
from connectors.state import project_state, write_state

TAB_TITLE = "Cleaning queue"
SECRET_HEADER = "X-ALC-Webhook-Secret"  # the header backend.app checks on /webhook
ML_TITLE = "Active label cleaning"


def configure_project(
    client: LabelStudio,
    project_id: int,
    *,
    backend_url: str | None = None,
    webhook_secret: str | None = None,
    budget: int | None = None,
    window: int | None = None,
    basic_auth: tuple[str, str] | None = None,
    initial_label_source: str = "annotations",
    on_read: Callable[[ProjectSnapshot, float], None] | None = None,
) -> dict[str, Any]:
    """Sampling, overlap-first, blind re-annotation, webhook, ML backend, the tab, the baseline and budget.

    ``on_read(snapshot, started)``: the project as this one full read saw it, after connect's own changes
    (baseline, closed strays), and the time the read began; called before the webhook and
    the ML backend are registered (the backend's first retrain then needs no read of its own)."""
    project = get_project(client, project_id)
    choices_tag(project.label_config or "")  # fails early, clearly, on a config without <Choices>
    report: dict[str, Any] = {"project": int(project_id), "title": project.title}

    client.projects.update(int(project_id), sampling="Uncertainty sampling", show_overlap_first=True,
                           show_collab_predictions=False)
    report["sampling"] = "Uncertainty sampling (lowest prediction score of the current model version first)"
    report["show_overlap_first"] = True
    report["show_collab_predictions"] = "off (annotators re-label blind, no pre-filled label)"

    state = project_state(project)
    config, users, started = project_config(project, initial_label_source), user_emails(client), time.time()
    raw_tasks = read_tasks(client, project_id)
    snapshot = snapshot_of_raw(config, raw_tasks, users)
    stray: dict[int, tuple[int, int]] = {}
    if state.baseline_annotation_id is None:
        ids = [a.id for t in snapshot.tasks for a in t.annotations]
        state = replace(state, baseline_annotation_id=max(ids, default=0),
                        connected_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        report["baseline"] = f"{len(ids)} existing annotation(s) are initial labels (ids <= {state.baseline_annotation_id})"
        # from now on the queue decides which labelled tasks are open: close those opened before (an
        # overlap above the annotation count, e.g. from an earlier 'maximum annotations' setting)
        stray = {t.id: (t.n_annotators, t.n_annotators) for t in snapshot.tasks if t.open_slots > 0}
        set_overlaps(client, stray)
        report["closed"] = f"{len(stray)} labelled task(s) that were open outside the queue"
    else:
        report["baseline"] = f"kept: annotations with ids <= {state.baseline_annotation_id} are initial labels"
    # Label Studio's task lock ignores starred annotations, so an opened task whose initial label carries the
    # star would be served twice (connectors.plan.clear_ground_truth); at one PATCH per annotation (about
    # 12 per second) connect leaves them to the backend, which opens no task with its star on
    starred = sum(len(t.ground_truth_ids) for t in snapshot.tasks)
    report["ground_truth"] = (f"{starred} annotation(s) carry Label Studio's ground-truth star: the backend takes it "
                              "off before it opens their task, and the rest in the background in the order it will "
                              "open them (labels untouched)") if starred else "no annotation carries the ground-truth star"
    if budget is not None:
        state = replace(state, budget=int(budget))
    if window is not None:
        state = replace(state, window=int(window))
    write_state(client, project_id, state)
    report["budget"] = state.budget
    report["window"] = state.window if state.window is not None else "the worker's ALC_WINDOW"
    if on_read is not None:
        on_read(snapshot_of_raw(replace(config, state=state), _as_changed(raw_tasks, stray), users), started)

    if backend_url:
        backend_url = backend_url.rstrip("/")
        report["webhook"] = _ensure_webhook(client, project_id, f"{backend_url}/webhook", webhook_secret)
        report["ml_backend"] = _ensure_ml_backend(client, project_id, backend_url, basic_auth)
    report["tab"] = _ensure_tab(client, project_id)
    return report


def _as_changed(raw_tasks: list[dict], overlaps: dict[int, tuple[int, int]]) -> list[dict]:
    """The tasks as Label Studio holds them after connect's PATCHes: strays closed."""
    return [{**raw, "overlap": overlaps[int(raw["id"])][0]} if int(raw["id"]) in overlaps else raw for raw in raw_tasks]


def _ensure_webhook(client: LabelStudio, project_id: int, url: str, secret: str | None) -> str:
    headers = {SECRET_HEADER: secret} if secret else {}
    existing = [w for w in client.webhooks.list(project=str(project_id)) if _plain(w).get("url") == url]
    kwargs = dict(url=url, headers=headers, send_payload=True, send_for_all_actions=True, is_active=True)
    if existing:
        client.webhooks.update(int(_plain(existing[0])["id"]), **kwargs)
        verb = "updated"
    else:
        client.webhooks.create(project=int(project_id), **kwargs)
        verb = "created"
    return f"{verb} {url} (all actions{', with the secret header' if secret else ''})"


def _ensure_ml_backend(client: LabelStudio, project_id: int, url: str, basic_auth: tuple[str, str] | None) -> str:
    existing = [m for m in client.ml.list(project=int(project_id)) if _plain(m).get("url", "").rstrip("/") == url]
    if existing:
        return f"already registered: {url}"
    auth: dict[str, Any] = {}
    if basic_auth is not None:
        auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": basic_auth[0], "basic_auth_pass": basic_auth[1]}
    client.ml.create(project=int(project_id), url=url, title=ML_TITLE, is_interactive=False, auto_update=False, **auth)
    return f"registered {url}"


def _ensure_tab(client: LabelStudio, project_id: int) -> str:
    data = {"title": TAB_TITLE, "ordering": ["tasks:predictions_score"], "type": "list", "target": "tasks"}
    for view in client.views.list(project=int(project_id)):
        view = _plain(view)
        if (view.get("data") or {}).get("title") == TAB_TITLE:
            return f"'{TAB_TITLE}' exists (tab {view['id']})"
    created = _plain(client.views.create(project=int(project_id), data=data))
    return f"created '{TAB_TITLE}' (tab {created.get('id')}), ordered by prediction score, lowest first"
