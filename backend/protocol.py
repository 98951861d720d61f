"""Label Studio's ML-backend protocol: the label config, the project id, and predictions with scores.

The meaning of ``score``: Label Studio's 'Uncertainty sampling' serves the task with the LOWEST score of
the project's current model_version first. So ``score = 1 / (1 + exp(priority))``, a number in (0, 1)
that falls as the priority rises: the task to re-annotate first has the lowest score. Tasks that need
nothing (priority -inf, e.g. the oracle's settled ones) get 1.0, the end of the queue.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag
from label_studio_sdk.label_interface.objects import PredictionValue

from connectors.project import object_type
from scoring.pipeline import score_from_priority, scores_from_priorities  # noqa: F401 (the protocol's score)


class ProtocolError(ValueError):
    """A request Label Studio (or anyone) sent that cannot be served: answered with ``status`` and the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TaskError(ValueError):
    """One task cannot be scored; the others still are (a per-task error in the response)."""


def config_hash(label_config: str) -> str:
    """Short digest of a label config: PROJECT_UPDATED retrains only when the config really changed."""
    return hashlib.sha256(label_config.encode()).hexdigest()[:16]


MAX_ID = 2**63 - 1  # Label Studio's ids are database integers; anything longer is not one of them
_PROJECT = re.compile(r"([0-9]{1,19})(?:\.[0-9]{0,32})?")  # '<id>' or '<id>.<created-at timestamp>', ASCII digits only


def parse_id(value: Any, what: str) -> int:
    """A positive integer id (never a bool, never beyond a database integer), or ProtocolError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise ProtocolError(f"bad {what} {_shown(value)}: expected a positive integer id")
    return value


def parse_project(value: Any) -> int:
    """Label Studio sends the project as '<id>.<created-at timestamp>'; webhooks send a number or an object."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, str):
        match = _PROJECT.fullmatch(value)
        if match is None:
            raise ProtocolError(f"bad project {_shown(value)}: expected '<id>.<timestamp>' or an integer id")
        value = int(match.group(1))
    return parse_id(value, "project")


def _shown(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of a bad value for an error message (ascii: lone surrogates stay escaped)."""
    text = ascii(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass(frozen=True)
class ChoicesConfig:
    """The part of a label config this backend uses: one Choices tag on one object (an image, a text, ...)."""

    from_name: str
    to_name: str
    data_key: str
    class_names: tuple[str, ...]
    interface: LabelInterface
    object_type: str = "image"  # the object's tag, lower case: "image", "text", "hypertext", ...

    @classmethod
    def parse(cls, label_config: Any) -> "ChoicesConfig":
        if not isinstance(label_config, str) or not label_config.strip():
            raise ProtocolError("label_config is missing", 422)
        try:
            interface = LabelInterface(label_config)
        except Exception as exc:  # the SDK raises lxml and its own errors for bad XML
            raise ProtocolError(f"label_config does not parse: {exc}", 422) from None
        choices = interface.find_tags_by_class(ChoicesTag)
        if not choices:
            raise ProtocolError("label_config has no <Choices> tag: this backend ranks classification labels", 422)
        tag = choices[0]
        if len(tag.labels) < 2:
            raise ProtocolError(f"<Choices name={tag.name!r}> needs at least two <Choice> values", 422)
        target = tag.objects[0] if tag.objects else None
        if target is None or not str(target.value).startswith("$"):
            raise ProtocolError(f"<Choices name={tag.name!r}> is not attached to an object with a $data value", 422)
        return cls(tag.name, target.name, str(target.value)[1:], tuple(tag.labels), interface, object_type(target))

    def object_value(self, task: dict) -> str:
        """The labelled object's data value (an image URL, a text); TaskError when there is none."""
        data = task.get("data")
        value = data.get(self.data_key) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise TaskError(f"task has no {self.object_type} in data[{self.data_key!r}]")
        return value

    def image_ref(self, task: dict) -> str:
        """The task's image URL; a task of another object type is scored by the retrain only (TaskError)."""
        if self.object_type != "image":
            raise TaskError(f"a <{self.object_type}> task outside the last ranking is scored by the next retrain")
        return self.object_value(task)

    def counts_from_annotations(self, task: dict) -> np.ndarray:
        """(C,) label counts from the task's annotations as Label Studio sends them (cancelled ones skipped).
        Anything of the wrong shape is this task's error (TaskError), never an exception of the request."""
        counts = np.zeros(len(self.class_names))
        for annotation in _list(task.get("annotations"), "the task's 'annotations'"):
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            for region in _list(annotation.get("result"), "an annotation's 'result'"):
                if not isinstance(region, dict) or region.get("from_name") != self.from_name:
                    continue
                value = region.get("value")
                if not isinstance(value, dict):
                    raise TaskError("a result's 'value' must be an object")
                for choice in _list(value.get("choices"), "a result's 'choices'"):
                    if not isinstance(choice, str) or choice not in self.class_names:
                        raise TaskError(
                            f"label {_shown(choice)} is not one of the config's classes ({', '.join(self.class_names)})"
                        )
                    counts[self.class_names.index(choice)] += 1
        return counts

    def prediction(self, class_index: int, score: float, model_version: str, explanation: dict) -> dict:
        """One prediction in Label Studio's format (SDK types), plus this product's explanation."""
        region = self.interface.get_control(self.from_name).label([self.class_names[class_index]])
        value = PredictionValue(result=[region], score=score, model_version=model_version).model_dump()
        value["explanation"] = explanation
        return value


def _list(value: Any, what: str) -> list:
    """None -> []; a list as it is; anything else is the task's error."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise TaskError(f"{what} must be a list, got {type(value).__name__}")
    return value


def explanation(
    priority: float, noisiness: float, ambiguity: float, counts: np.ndarray, class_names: tuple[str, ...] | list[str],
    selector_version: str, rule: str,
) -> dict:
    """Why this task sits where it does: shown next to each prediction."""
    finite = lambda x: float(x) if x is not None and np.isfinite(x) else None  # noqa: E731
    return {
        "priority": finite(priority),
        "noisiness": finite(noisiness),
        "ambiguity": finite(ambiguity),
        "label_counts": {name: int(c) for name, c in zip(class_names, counts) if c},
        "selector_version": selector_version,
        "rule": rule,
        "meaning": "score = 1/(1+exp(priority)); the lowest score is re-annotated first",
    }
