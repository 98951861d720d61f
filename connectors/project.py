"""A project's fixed facts, read once: the label config parsed by the SDK's ``LabelInterface`` and its alc-state line.

Every connectors function that needs the classes, the ``<Choices>`` name, the object it labels or the
initial-label source takes a :class:`ProjectConfig` instead of parsing the XML again. It is plain data
(``to_json``/``from_json``), so the backend keeps it in Redis next to the working state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag

from connectors.errors import ProjectConfigError
from connectors.state import ProjectState, project_state

INITIAL_SOURCES = ("annotations", "data:<field>", "predictions:<model_version>")


@dataclass(frozen=True)
class ProjectConfig:
    project_id: int
    title: str
    label_config: str
    from_name: str  # the <Choices> tag
    to_name: str  # the object it labels
    data_key: str | None  # the task data field of that object ($image -> "image")
    class_names: list[str]
    initial_label_source: str
    state: ProjectState
    model_version: str | None
    object_type: str = "image"  # the labelled object's tag, lower case: image, text, hypertext, ... (what to rank on)

    @property
    def source(self) -> tuple[str, str | None]:
        return parse_source(self.initial_label_source)

    @property
    def index(self) -> dict[str, int]:
        return {name: c for c, name in enumerate(self.class_names)}

    def with_model_version(self, version: str | None) -> "ProjectConfig":
        return replace(self, model_version=version)

    def to_json(self) -> str:
        data = asdict(self)
        data["state"] = asdict(self.state)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ProjectConfig":
        data = json.loads(text)
        data["state"] = ProjectState(**data["state"])
        return cls(**data)


def parse_source(source: str) -> tuple[str, str | None]:
    kind, _, arg = (source or "").partition(":")
    if source == "annotations":
        return "annotations", None
    if kind in ("data", "predictions") and arg:
        return kind, arg
    raise ProjectConfigError(f"initial label source must be one of {', '.join(INITIAL_SOURCES)}, got {source!r}")


def choices_tag(label_config: str) -> tuple[str, list[str]]:
    """(from_name, class names) of the label config's first <Choices>."""
    tag, _ = _choices(label_config)
    return tag.name, list(tag.labels)


def _choices(label_config: str) -> tuple[Any, LabelInterface]:
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # lxml and the SDK raise their own errors for bad XML
        raise ProjectConfigError(f"the project's label config does not parse: {exc}") from None
    tags = interface.find_tags_by_class(ChoicesTag)
    if not tags:
        raise ProjectConfigError("the project's label config has no <Choices> tag: only classification labels are cleaned")
    tag = tags[0]
    if len(tag.labels) < 2:
        raise ProjectConfigError(f"<Choices name={tag.name!r}> needs at least two <Choice> values")
    return tag, interface


def project_config(project: Any, initial_label_source: str = "annotations") -> ProjectConfig:
    """The config of an SDK project object (``client.projects.get``): the one place the XML is parsed."""
    parse_source(initial_label_source)
    label_config = project.label_config or ""
    tag, _ = _choices(label_config)
    target = tag.objects[0] if tag.objects else None
    value = str(target.value) if target is not None and target.value else ""
    return ProjectConfig(
        project_id=int(project.id),
        title=project.title or "",
        label_config=label_config,
        from_name=tag.name,
        to_name=target.name if target is not None else (tag.to_name[0] if tag.to_name else ""),
        data_key=value[1:] if value.startswith("$") else None,
        class_names=list(tag.labels),
        initial_label_source=initial_label_source,
        state=project_state(project),
        model_version=project.model_version or None,
        object_type=object_type(target),
    )


def object_type(target: Any) -> str:
    """The labelled object's tag name in lower case (``<Text>`` -> "text"), "image" when the SDK gives none."""
    tag = getattr(target, "tag", None) if target is not None else None
    return str(tag).lower() if tag else "image"
