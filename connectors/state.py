"""The little a project needs to remember, kept in Label Studio itself: its budget and its connect-time baseline.

Everything else (counts, spend, the queue, the audit trail) is rebuilt from Label Studio's tasks,
annotations and predictions. What cannot be rebuilt is tiny: the budget B and the id of the last
annotation that existed when ``alc connect`` ran (the baseline: annotations up to it are the initial
labels, later ones are re-annotations paid from the budget). It lives in the project itself, so every
process that can reach Label Studio (web app, workers, another machine) sees the same state.

Where: a ``<template class="alc-state">{json}</template>`` element at the end of the project's
annotator instructions (``expert_instruction``). An HTML template's content is never rendered, so neither
the project card nor the instructions an annotator may be shown display it; Label Studio's HTML cleaning
keeps the element (it escapes ``&`` and ``<`` in the JSON, which the reader undoes), and the label config
is left alone (changing it would change its hash and retrain). Projects connected before kept an
``alc-state: {json}`` line in their description, which the project card shows: it is still read, and the
next write moves it into the instructions.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from label_studio_sdk import LabelStudio

from connectors.client import get_project
from connectors.errors import ProjectConfigError

MARKER = "alc-state"
_ELEMENT = re.compile(r'\s*<template class="alc-state">(.*?)</template>', re.DOTALL)
_LEGACY_LINE = re.compile(r"^alc-state:\s*(\{.*\})\s*$", re.MULTILINE)  # in the description, before


@dataclass(frozen=True)
class ProjectState:
    """Budget in re-annotations and window size (None: the global settings apply) and the connect-time
    baseline (None: not connected)."""

    budget: int | None = None
    window: int | None = None
    baseline_annotation_id: int | None = None
    connected_at: str | None = None

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}, sort_keys=True)


def parse_state(*texts: str | None) -> ProjectState:
    """The state kept in the first of ``texts`` (the project's instructions, then its description) that holds
    one, or an empty state when none does."""
    for text in texts:
        match = _ELEMENT.search(text or "")
        if match is not None:
            return _state_of(html.unescape(match.group(1)))
    for text in texts:
        match = _LEGACY_LINE.search(text or "")
        if match is not None:
            return _state_of(match.group(1))
    return ProjectState()


def project_state(project: Any) -> ProjectState:
    """The state of a project as the SDK (or a webhook's payload) gives it."""
    return parse_state(getattr(project, "expert_instruction", None), getattr(project, "description", None))


def _state_of(raw_json: str) -> ProjectState:
    try:
        raw: Any = json.loads(raw_json)
        budget, window = raw.get("budget"), raw.get("window")
        baseline = raw.get("baseline_annotation_id")
        return ProjectState(
            budget=None if budget is None else int(budget),
            window=None if window is None else int(window),
            baseline_annotation_id=None if baseline is None else int(baseline),
            connected_at=raw.get("connected_at"),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise ProjectConfigError(
            f"the project's '{MARKER}' is not valid ({exc}); fix it in the project's instructions or run `alc connect` again"
        ) from None


def with_state(instructions: str | None, state: ProjectState) -> str:
    """The instructions with their state element replaced (or appended)."""
    text = _ELEMENT.sub("", instructions or "").rstrip()
    element = f'<template class="alc-state">{html.escape(state.to_json(), quote=False)}</template>'
    return f"{text}\n{element}" if text else element


def read_state(client: LabelStudio, project_id: int) -> ProjectState:
    return project_state(get_project(client, project_id))


def write_state(client: LabelStudio, project_id: int, state: ProjectState) -> ProjectState:
    """Write the state into the project's instructions (moving it out of the description of a project
    connected before)."""
    project = get_project(client, project_id)
    fields = {"expert_instruction": with_state(project.expert_instruction, state)}
    if _LEGACY_LINE.search(project.description or ""):
        fields["description"] = _LEGACY_LINE.sub("", project.description or "").rstrip()
    client.projects.update(int(project_id), **fields)
    return state
