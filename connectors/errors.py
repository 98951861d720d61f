"""The errors the connectors raise, each with a message that says what to do next."""

from __future__ import annotations


class ConnectorError(RuntimeError):
    """Base class: something between us and Label Studio went wrong."""


class LabelStudioUnavailable(ConnectorError):
    """Label Studio did not answer (down, unreachable, too slow, or 5xx) after every retry."""


class LabelStudioAuthError(ConnectorError):
    """Label Studio refused the API token (401/403)."""


class UnknownProject(ConnectorError):
    """No project with this id in Label Studio (404), or the token cannot see it."""


class TaskNotFound(ConnectorError):
    """No task with this id in the project (404): a deleted task or a forged webhook; never retried."""


class ProjectConfigError(ConnectorError):
    """The project cannot be cleaned as configured (no <Choices> in its label config, bad initial label source)."""
