"""The little a project needs to remember, kept in Label Studio itself: its budget and its connect-time baseline.

Everything else (counts, spend, the queue, the audit trail) is rebuilt from Label Studio's tasks,
annotations and predictions. What cannot be rebuilt is tiny: the budget B and the id of the last
annotation that existed when ``alc connect`` ran (the baseline: annotations up to it are the initial
labels, later ones are re-annotations paid from the budget). It lives on one line of the project's
description, ``alc-state: {...}``, so every process that can reach Label Studio (web app, workers,
another machine) sees the same state, and a project manager can read it in the project settings.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from label_studio_sdk import LabelStudio

from connectors.client import get_project
from connectors.errors import ProjectConfigError

MARKER = "alc-state:"
_LINE = re.compile(r"^alc-state:\s*(\{.*\})\s*$", re.MULTILINE)


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


def parse_state(description: str | None) -> ProjectState:
    """The state on the project's description line, or an empty state when there is none."""
    match = _LINE.search(description or "")
    if match is None:
        return ProjectState()
    try:
        raw: Any = json.loads(match.group(1))
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
            f"the project description's '{MARKER}' line is not valid ({exc}); fix it or run `alc connect` again"
        ) from None


def with_state(description: str | None, state: ProjectState) -> str:
    """The description with its state line replaced (or appended)."""
    text = _LINE.sub("", description or "").rstrip()
    line = f"{MARKER} {state.to_json()}"
    return f"{text}\n\n{line}" if text else line


def read_state(client: LabelStudio, project_id: int) -> ProjectState:
    return parse_state(get_project(client, project_id).description)


def write_state(client: LabelStudio, project_id: int, state: ProjectState) -> ProjectState:
    project = get_project(client, project_id)
    client.projects.update(int(project_id), description=with_state(project.description, state))
    return state
