"""Label Studio webhook payloads -> small events the queue understands.

Label Studio posts every action of a project to the ML backend's /webhook (send_for_all_actions), waits
1 s and never retries, inside the annotator's own request. So parsing is cheap and strict about what we
use, and silent about actions we do not need (they are acknowledged and ignored).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.protocol import MAX_ID, ProtocolError, config_hash, parse_id, parse_project

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
HANDLED = ANNOTATION_ACTIONS + ("ANNOTATIONS_DELETED", "START_TRAINING", "PROJECT_UPDATED")


@dataclass(frozen=True)
class WebhookEvent:
    action: str
    project_id: int | None
    task_id: int | None = None
    annotation_ids: list[int] = field(default_factory=list)
    label_config_hash: str | None = None
    annotation: dict | None = field(default=None, repr=False)  # the annotation as the payload carries it
    description: str | None = field(default=None, repr=False)  # PROJECT_UPDATED: the project's description
    instructions: str | None = field(default=None, repr=False)  # and its instructions (where connectors.state keeps it)

    @property
    def handled(self) -> bool:
        return self.action in HANDLED


def parse_webhook(body: Any) -> WebhookEvent:
    """Validate a webhook body; ProtocolError (4xx) for anything we cannot act on safely."""
    if not isinstance(body, dict):
        raise ProtocolError("webhook body must be a JSON object")
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise ProtocolError("webhook body has no 'action'")
    if action not in HANDLED:
        return WebhookEvent(action, None)
    project_id = _project_of(body)
    if action in ANNOTATION_ACTIONS:
        annotation = body.get("annotation")
        if not isinstance(annotation, dict):
            raise ProtocolError(f"{action} without an 'annotation' object")
        task = annotation.get("task")
        if isinstance(task, dict):
            task = task.get("id")
        if task is None and isinstance(body.get("task"), dict):
            task = body["task"].get("id")
        if task is None:
            raise ProtocolError(f"{action}: the annotation names no task id")
        task = parse_id(task, f"{action} task id")  # a positive database integer, never a bool
        annotation_id = annotation.get("id")
        ids = [annotation_id] if _is_id(annotation_id) else []
        return WebhookEvent(action, project_id, task, ids, annotation=annotation)
    if action == "ANNOTATIONS_DELETED":
        items = body.get("annotations")
        if not isinstance(items, list):
            raise ProtocolError("ANNOTATIONS_DELETED without an 'annotations' list")
        ids = [a["id"] for a in items if isinstance(a, dict) and _is_id(a.get("id"))]
        return WebhookEvent(action, project_id, None, ids)
    project = body.get("project") if isinstance(body.get("project"), dict) else {}
    config, description, instructions = (_text(project.get(k), k) for k in ("label_config", "description", "expert_instruction"))
    digest = config_hash(config) if isinstance(config, str) else None
    return WebhookEvent(action, project_id, None, [], digest,
                        description=description if isinstance(description, str) else None,
                        instructions=instructions if isinstance(instructions, str) else None)


def _project_of(body: dict) -> int:
    """The project id: from 'project' (object or id), else the annotation's or task's 'project' field."""
    candidates = [body.get("project")]
    for key in ("annotation", "task"):
        if isinstance(body.get(key), dict):
            candidates.append(body[key].get("project"))
    for value in candidates:
        if value is None:
            continue
        return parse_project(value)
    raise ProtocolError(f"{body.get('action')} names no project")


def _text(value: Any, what: str) -> Any:
    """``value`` unchanged, or ProtocolError (400) for a string that is not valid Unicode (a lone surrogate,
    which JSON's \\ud800 escape can carry): it cannot be hashed or stored, and no Label Studio sends one."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None
    return value


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID
