"""Every task of a project, read from Label Studio in pages, into label counts per class and an audit trail.

What counts (the numbers the queue and the budget are built on):

- The *initial* label of a task comes from the project's initial label source:
  ``annotations`` (default): the annotations that existed when ``alc connect`` recorded its baseline
  (annotation id <= the baseline id kept in the project's state, see :mod:`connectors.state`); a task
  with none of those (imported or first labelled after connect, or a project never connected) has its
  earliest annotation as its initial label. ``data:<field>``: the class name in
  ``task.data[field]``. ``predictions:<model_version>``: the choice of the task's prediction of that model
  version. With the last two, every annotation is a re-annotation.
- Every other annotation is a *re-annotation*: it adds one to the count of its class.
- Skipped/cancelled annotations count nowhere (Label Studio does not count them towards the task's
  overlap either). An annotation whose choice is not one of the label config's classes (or that has no
  choice) is kept in the record and reported in ``problems``, not counted as a label; it still was work,
  so it is paid from the budget like any other re-annotation (spend follows Label Studio's own count).
- Updated annotations are read as they are now; deleted ones are simply gone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.label_interface import LabelInterface
from label_studio_sdk.label_interface.control_tags import ChoicesTag

from connectors.client import get_project
from connectors.errors import ProjectConfigError
from connectors.state import ProjectState, parse_state

PAGE_SIZE = 500


@dataclass(frozen=True)
class AnnotationRecord:
    """One annotation as Label Studio holds it, with what it means for the counts."""

    id: int
    annotator: str  # the user's email when Label Studio lists it, else "user <id>"
    annotator_id: int | None
    created_at: str | None
    updated_at: str | None
    lead_time: float | None  # seconds the annotator spent, as Label Studio measured it
    label: str | None  # the chosen class; None when the annotation chose nothing
    cancelled: bool  # skipped: counts nowhere
    initial: bool  # part of the initial label (the connect-time baseline)
    valid: bool  # counted in the label counts
    ground_truth: bool = False  # Label Studio's star; imported annotations get it by default


@dataclass(frozen=True)
class PredictionRecord:
    """One prediction of a task (the scores this product pushed carry their explanation)."""

    id: int | None
    model_version: str
    score: float | None
    label: str | None
    explanation: dict | None
    created_at: str | None


@dataclass
class TaskRecord:
    id: int
    data: dict
    overlap: int
    annotations: list[AnnotationRecord]
    predictions: list[PredictionRecord]
    initial_label: str | None  # the majority of the initial label(s); None when there is none or a tie
    has_initial: bool = True  # False: no label yet (plain labelling work, not cleaning: never in the budget)

    @property
    def n_annotations(self) -> int:
        """Annotations Label Studio counts against the task's overlap (all but the skipped ones)."""
        return sum(not a.cancelled for a in self.annotations)

    @property
    def n_annotators(self) -> int:
        """Distinct users behind the counted annotations: what Label Studio compares with ``overlap``
        (a task is labelled once that many different users annotated it)."""
        users = {a.annotator_id if a.annotator_id is not None else f"annotation {a.id}"
                 for a in self.annotations if not a.cancelled}
        return len(users)

    @property
    def ground_truth_ids(self) -> list[int]:
        return [a.id for a in self.annotations if a.ground_truth and not a.cancelled]

    @property
    def n_initial(self) -> int:
        return sum(a.initial and not a.cancelled for a in self.annotations)

    @property
    def reannotations(self) -> int:
        """Annotations beyond the initial ones: what this task cost the budget."""
        return self.n_annotations - self.n_initial

    @property
    def open_slots(self) -> int:
        """Re-annotations Label Studio will still ask for (overlap above the annotators so far): committed
        budget. A task without a label yet has none: its first annotation is its initial label."""
        return max(0, self.overlap - self.n_annotators) if self.has_initial else 0

    def prediction(self, model_version: str | None) -> PredictionRecord | None:
        """The task's latest prediction of ``model_version``."""
        found = [p for p in self.predictions if model_version and p.model_version == model_version]
        return found[-1] if found else None


@dataclass
class ProjectSnapshot:
    """A project as read at one moment: one row per task (ordered by task id)."""

    project_id: int
    title: str
    label_config: str
    class_names: list[str]
    from_name: str
    initial_label_source: str
    model_version: str | None  # the project's current model version (the one Label Studio serves by)
    state: ProjectState
    tasks: list[TaskRecord]
    counts: np.ndarray  # (N, C) int: initial label(s) plus every valid re-annotation
    initial_counts: np.ndarray  # (N, C) int: the initial label(s) only
    problems: list[str] = field(default_factory=list)
    _index: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {t.id: i for i, t in enumerate(self.tasks)}

    @property
    def task_ids(self) -> list[int]:
        return [t.id for t in self.tasks]

    @property
    def task_data(self) -> list[dict]:
        return [t.data for t in self.tasks]

    @property
    def overlap(self) -> np.ndarray:
        return np.array([t.overlap for t in self.tasks], dtype=np.int64)

    @property
    def n_annotations(self) -> np.ndarray:
        return np.array([t.n_annotations for t in self.tasks], dtype=np.int64)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._index

    def row(self, task_id: int) -> int:
        try:
            return self._index[int(task_id)]
        except KeyError:
            raise KeyError(f"task {task_id} is not in project {self.project_id}") from None

    def task(self, task_id: int) -> TaskRecord:
        return self.tasks[self.row(task_id)]


def choices_tag(label_config: str) -> tuple[str, list[str]]:
    """(from_name, class names) of the label config's first <Choices>, read by the SDK's LabelInterface."""
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
    return tag.name, list(tag.labels)


def parse_source(source: str) -> tuple[str, str | None]:
    kind, _, arg = (source or "").partition(":")
    if source == "annotations":
        return "annotations", None
    if kind in ("data", "predictions") and arg:
        return kind, arg
    raise ProjectConfigError(
        f"initial label source must be 'annotations', 'data:<field>' or 'predictions:<model_version>', got {source!r}"
    )


def read_project(
    client: LabelStudio, project_id: int, initial_label_source: str = "annotations", page_size: int = PAGE_SIZE,
    task_ids: Sequence[int] | None = None,
) -> ProjectSnapshot:
    """Every task (or only ``task_ids``, one request each) with its annotations and predictions, into counts."""
    kind, arg = parse_source(initial_label_source)
    project = get_project(client, project_id)
    from_name, class_names = choices_tag(project.label_config or "")
    state = parse_state(project.description)
    users = _user_emails(client)
    if task_ids is None:
        raw_tasks = read_tasks(client, project_id, page_size)
    else:
        raw_tasks = sorted((_plain(client.tasks.get(str(int(t)))) for t in task_ids), key=lambda t: int(t["id"]))

    problems: list[str] = []
    index = {name: c for c, name in enumerate(class_names)}
    n, n_classes = len(raw_tasks), len(class_names)
    counts = np.zeros((n, n_classes), dtype=np.int64)
    initial_counts = np.zeros((n, n_classes), dtype=np.int64)
    tasks: list[TaskRecord] = []
    for i, raw in enumerate(raw_tasks):
        task_id = int(raw["id"])
        predictions = [_prediction(p, from_name) for p in raw.get("predictions") or []]
        annotations = _annotations(raw, from_name, users, index, kind, state, problems)
        for a in annotations:
            if a.valid:
                counts[i, index[a.label]] += 1
                if a.initial:
                    initial_counts[i, index[a.label]] += 1
        if kind != "annotations":
            label = _external_initial(raw, predictions, kind, arg)
            if label is None:
                problems.append(f"task {task_id}: no initial label in {initial_label_source}")
            elif label not in index:
                problems.append(f"task {task_id}: initial label {label!r} ({initial_label_source}) is not one of the classes")
            else:
                counts[i, index[label]] += 1
                initial_counts[i, index[label]] += 1
        initial_label = _majority_name(initial_counts[i], class_names)
        has_initial = bool(initial_counts[i].sum() > 0 or any(a.initial and not a.cancelled for a in annotations))
        tasks.append(TaskRecord(task_id, raw.get("data") or {}, int(raw.get("overlap") or 0), annotations,
                                predictions, initial_label, has_initial))
    return ProjectSnapshot(
        project_id=int(project_id),
        title=project.title or "",
        label_config=project.label_config or "",
        class_names=class_names,
        from_name=from_name,
        initial_label_source=initial_label_source,
        model_version=project.model_version or None,
        state=state,
        tasks=tasks,
        counts=counts,
        initial_counts=initial_counts,
        problems=problems,
    )


def read_tasks(client: LabelStudio, project_id: int, page_size: int = PAGE_SIZE) -> list[dict]:
    """Every task with its annotations, predictions and overlap, as plain dicts ordered by id.

    Two reads, each the fastest Label Studio 1.23.2 offers for its part (2,000 tasks on the busy 2-core
    dev machine): its JSON export gives every annotation in one request (8 s; the Data Manager's task
    list with ``fields=all`` takes 33 s) but names predictions by id only and leaves out ``overlap``;
    the task list restricted to ``include=id,overlap,predictions`` gives those (4 s).
    """
    export = b"".join(client.projects.exports.download_sync(int(project_id), export_type="JSON",
                                                             download_all_tasks=True))
    tasks = sorted(json.loads(export), key=lambda t: int(t["id"]))
    listed_by_id: dict[int, dict] = {}
    page, pages = 1, 1
    while page <= pages:
        listed = client.tasks.list(project=int(project_id), fields="all", include="id,overlap,predictions",
                                   page=page, page_size=page_size)
        total = getattr(listed.response, "total", None) if listed.response is not None else None
        for item in listed.items or []:
            item = _plain(item)
            listed_by_id[int(item["id"])] = item
        if total is not None:
            pages = -(-int(total) // page_size)
        elif len(listed.items or []) == page_size:
            pages = page + 1
        page += 1
    for task in tasks:
        listed = listed_by_id.get(int(task["id"]), {})  # empty for a task imported between the two reads
        task["overlap"] = int(listed.get("overlap") or 1)
        task["predictions"] = listed.get("predictions") or []
    return tasks


def _annotations(raw: dict, from_name: str, users: dict[int, str], index: dict[str, int], kind: str,
                 state: ProjectState, problems: list[str]) -> list[AnnotationRecord]:
    """The task's annotations in creation order, each marked initial/valid per the module's rules."""
    items = sorted(raw.get("annotations") or [], key=lambda a: (str(a.get("created_at")), int(a.get("id") or 0)))
    counted = [a for a in items if not a.get("was_cancelled")]
    initial_ids: set[int] = set()
    if kind == "annotations" and counted:
        baseline = state.baseline_annotation_id
        if baseline is not None:
            initial_ids = {int(a["id"]) for a in counted if int(a["id"]) <= baseline}
        # no baseline, or a task imported (or first labelled) after connect: its first annotation is initial
        initial_ids = initial_ids or {int(counted[0]["id"])}
    out = []
    for a in items:
        cancelled = bool(a.get("was_cancelled"))
        label = _choice(a.get("result"), from_name)
        initial = int(a["id"]) in initial_ids
        valid = not cancelled and label in index
        if not cancelled and not valid:
            what = "chose no class" if label is None else f"label {label!r} is not one of the classes"
            problems.append(f"task {raw['id']}, annotation {a.get('id')}: {what}; not counted")
        user = a.get("completed_by")
        user_id = int(user) if isinstance(user, int) else (user.get("id") if isinstance(user, dict) else None)
        out.append(AnnotationRecord(
            id=int(a["id"]),
            annotator=users.get(user_id, f"user {user_id}") if user_id is not None else "unknown",
            annotator_id=user_id,
            created_at=_iso(a.get("created_at")),
            updated_at=_iso(a.get("updated_at")),
            lead_time=float(a["lead_time"]) if a.get("lead_time") is not None else None,
            label=label,
            cancelled=cancelled,
            initial=initial,
            valid=valid,
            ground_truth=bool(a.get("ground_truth")),
        ))
    return out


def _external_initial(raw: dict, predictions: list[PredictionRecord], kind: str, arg: str | None) -> str | None:
    if kind == "data":
        value = (raw.get("data") or {}).get(arg)
        return value if isinstance(value, str) else None
    found = [p for p in predictions if p.model_version == arg]
    return found[-1].label if found else None


def _prediction(p: dict, from_name: str) -> PredictionRecord:
    explanation = None
    for region in p.get("result") or []:
        meta = region.get("meta") if isinstance(region, dict) else None
        if isinstance(meta, dict) and isinstance(meta.get("alc"), dict):
            explanation = meta["alc"]
    return PredictionRecord(
        id=p.get("id"),
        model_version=str(p.get("model_version") or ""),
        score=float(p["score"]) if p.get("score") is not None else None,
        label=_choice(p.get("result"), from_name),
        explanation=explanation,
        created_at=_iso(p.get("created_at")),
    )


def _choice(result: Any, from_name: str) -> str | None:
    """The first choice of the <Choices> named ``from_name`` in an annotation/prediction result."""
    for region in result or []:
        if not isinstance(region, dict) or region.get("from_name") != from_name:
            continue
        choices = (region.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def _majority_name(row: np.ndarray, class_names: list[str]) -> str | None:
    if row.sum() == 0:
        return None
    top = np.flatnonzero(row == row.max())
    return class_names[int(top[0])] if top.size == 1 else None


def _user_emails(client: LabelStudio) -> dict[int, str]:
    """User id -> email (one request); annotations name their annotator by id only."""
    try:
        return {int(u.id): str(u.email or u.username or f"user {u.id}") for u in client.users.list()}
    except Exception:  # a token without the right to list users still reads the project
        return {}


def _plain(obj: Any) -> dict:
    """SDK models and plain dicts alike, as plain JSON data."""
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj.dict()


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
