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
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from connectors.client import NO_RETRY_HEADER, get_project, get_task
from connectors.errors import TaskNotFound
from connectors.project import ProjectConfig, project_config
from connectors.state import ProjectState

from scoring.majority import has_strict_majority, majority_label  # pure numpy: one majority rule everywhere

PAGE_SIZE = 500
EXPORT_TIMEOUT = 600.0  # seconds: a 10,000-task export took 12 s idle and passed 30 s under load


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One prediction of a task (the scores this product pushed carry their explanation)."""

    id: int | None
    model_version: str
    score: float | None
    label: str | None
    explanation: dict | None
    created_at: str | None


@dataclass(slots=True)
class TaskRecord:
    id: int
    data: dict
    overlap: int
    annotations: list[AnnotationRecord]
    predictions: list[PredictionRecord]
    initial_label: str | None  # the majority of the initial label(s); None when there is none or a tie
    has_initial: bool = True  # False: no label yet (plain labelling work, not cleaning: never in the budget)
    counts: list[int] = field(default_factory=list)  # (C,) initial label(s) plus every valid re-annotation
    initial_counts: list[int] = field(default_factory=list)  # (C,) the initial label(s) only
    seq: int | None = None  # touched_seq: tasks opened before this one (``data.alc_seq``); None = never opened
    audit: dict | None = None  # the audit draw that opened it (``data.alc_audit``, scoring.audit.AuditDraw JSON)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> "TaskRecord":
        raw = json.loads(text)
        raw["annotations"] = [AnnotationRecord(**a) for a in raw["annotations"]]
        raw["predictions"] = [PredictionRecord(**p) for p in raw["predictions"]]
        return cls(**raw)

    @property
    def settled(self) -> bool:
        """A strict majority (scoring.majority, the one rule everywhere)."""
        return bool(has_strict_majority(np.asarray(self.counts))) if self.counts else False

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
    config: ProjectConfig | None = field(default=None, repr=False)  # set by read_project / snapshot_of
    users: dict[int, str] = field(default_factory=dict, repr=False)  # annotator id -> email (read_project)
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


def read_project(
    client: LabelStudio, project_id: int, initial_label_source: str = "annotations", page_size: int = PAGE_SIZE,
    task_ids: Sequence[int] | None = None,
) -> ProjectSnapshot:
    """Every task (or only ``task_ids``, one request each) with its annotations and predictions, into counts."""
    config = project_config(get_project(client, project_id), initial_label_source)
    users = user_emails(client)
    if task_ids is None:
        raw_tasks = read_tasks(client, project_id, page_size)
    else:
        raw_tasks = sorted((_plain(get_task(client, t)) for t in task_ids), key=lambda t: int(t["id"]))
    return snapshot_of_raw(config, raw_tasks, users)


def snapshot_of_raw(config: ProjectConfig, raw_tasks: list[dict], users: dict[int, str]) -> ProjectSnapshot:
    """The snapshot of tasks as Label Studio returns them (``read_tasks``), under ``config``'s rules."""
    problems: list[str] = []
    tasks = [task_record(raw, config, users, problems) for raw in raw_tasks]
    number_unrecorded(tasks)
    snapshot = snapshot_of(config, tasks, problems)
    snapshot.users = users
    return snapshot


def read_task(client: LabelStudio, config: ProjectConfig, task_id: int, users: dict[int, str] | None = None,
              problems: list[str] | None = None) -> TaskRecord:
    """One task, one request (its annotations, predictions and overlap); :class:`TaskNotFound` on a 404."""
    try:
        raw = _plain(get_task(client, task_id))
    except ApiError as exc:
        if exc.status_code == 404:
            raise TaskNotFound(f"Label Studio has no task {task_id}") from None
        raise
    if int(raw.get("project") or config.project_id) != config.project_id:
        raise TaskNotFound(f"task {task_id} is not in project {config.project_id}")
    return task_record(raw, config, users or {}, problems if problems is not None else [])


def task_record(raw: dict, config: ProjectConfig, users: dict[int, str], problems: list[str]) -> TaskRecord:
    """One task as Label Studio returns it, with its counts per the module's rules."""
    kind, arg = config.source
    index = config.index
    task_id = int(raw["id"])
    predictions = [_prediction(p, config.from_name) for p in raw.get("predictions") or [] if isinstance(p, dict)]
    annotations = _annotations(raw, config.from_name, users, index, kind, config.state, problems)
    counts = [0] * len(index)
    initial = [0] * len(index)
    for a in annotations:
        if a.valid:
            counts[index[a.label]] += 1
            if a.initial:
                initial[index[a.label]] += 1
    if kind != "annotations":
        label = _external_initial(raw, predictions, kind, arg)
        if label is None:
            problems.append(f"task {task_id}: no initial label in {config.initial_label_source}")
        elif label not in index:
            problems.append(f"task {task_id}: initial label {label!r} ({config.initial_label_source}) is not one of the classes")
        else:
            counts[index[label]] += 1
            initial[index[label]] += 1
    top = majority_label(np.asarray(initial)) if sum(initial) else None
    initial_label = config.class_names[top] if top is not None else None
    has_initial = bool(sum(initial) > 0 or any(a.initial and not a.cancelled for a in annotations))
    overlap = raw.get("overlap")
    data = raw.get("data") or {}
    return TaskRecord(task_id, data, int(overlap if overlap is not None else 1), annotations,
                      predictions, initial_label, has_initial, counts, initial, *opening_of(data))


def opening_of(data: Any) -> tuple[int | None, dict | None]:
    """``(seq, audit)`` as a task's first opening recorded them in its data (``alc_seq``, ``alc_audit``)."""
    if not isinstance(data, dict):
        return None, None
    seq, audit = data.get("alc_seq"), data.get("alc_audit")
    return (int(seq) if isinstance(seq, int) and not isinstance(seq, bool) else None,
            audit if isinstance(audit, dict) else None)


def number_unrecorded(tasks: list[TaskRecord]) -> None:
    """Tasks re-annotated before openings recorded ``alc_seq`` get their touched_seq after the recorded ones,
    in the order of their first re-annotation (in place)."""
    late = [t for t in tasks if t.seq is None and t.reannotations > 0]
    if not late:
        return
    first = lambda t: min((a.created_at or "", a.id) for a in t.annotations if not a.initial and not a.cancelled)  # noqa: E731
    start = max((t.seq for t in tasks if t.seq is not None), default=-1) + 1
    for i, task in enumerate(sorted(late, key=first)):
        task.seq = start + i


def snapshot_of(config: ProjectConfig, tasks: list[TaskRecord], problems: list[str] | None = None) -> ProjectSnapshot:
    """The snapshot of these task records (ordered by id), whether read in full or kept in the working state."""
    tasks = sorted(tasks, key=lambda t: t.id)
    n_classes = len(config.class_names)
    counts = np.array([t.counts for t in tasks], dtype=np.int64).reshape(len(tasks), n_classes)
    initial = np.array([t.initial_counts for t in tasks], dtype=np.int64).reshape(len(tasks), n_classes)
    return ProjectSnapshot(
        project_id=config.project_id,
        title=config.title,
        label_config=config.label_config,
        class_names=list(config.class_names),
        from_name=config.from_name,
        initial_label_source=config.initial_label_source,
        model_version=config.model_version,
        state=config.state,
        tasks=tasks,
        counts=counts,
        initial_counts=initial,
        problems=list(problems or []),
        config=config,
    )


def read_tasks(client: LabelStudio, project_id: int, page_size: int = PAGE_SIZE) -> list[dict]:
    """Every task with its annotations, predictions and overlap, as plain dicts ordered by id.

    Two reads, each the fastest Label Studio 1.23.2 offers for its part (2,000 tasks on the busy 2-core
    dev machine): its JSON export gives every annotation in one request (8 s; the Data Manager's task
    list with ``fields=all`` takes 33 s) but names predictions by id only and leaves out ``overlap``;
    the task list restricted to ``include=id,overlap,predictions`` gives those (4 s).
    """
    # its own long timeout, never retried: a retry would start a second export that Label Studio keeps building
    options = {"timeout_in_seconds": EXPORT_TIMEOUT, "max_retries": 0, "additional_headers": {NO_RETRY_HEADER: "1"}}
    export = b"".join(client.projects.exports.download_sync(int(project_id), export_type="JSON",
                                                             download_all_tasks=True, request_options=options))
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


def user_emails(client: LabelStudio) -> dict[int, str]:
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
