"""The cleaning queue in Label Studio: which labelled tasks annotators are served again, and in what order.

How Label Studio 1.23.2 is steered (measured on the live server):

- A labelled task re-enters the label stream when its ``overlap`` is raised above the number of
  distinct users who annotated it (Label Studio's ``is_labeled`` test); ``overlap == annotators`` takes
  it out again. Opening a task = ``overlap = annotators + 1`` (one slot, one more opinion); closing =
  ``overlap = annotators``. Values are absolute, never increments,
  so a push or a settle that is retried after failing half-way does the same thing again, not twice.
- 'Uncertainty sampling' serves the open task whose prediction of the project's current model_version
  has the LOWEST score. So a push imports one prediction per open task under a new model_version, its
  score from the ranking (lower = re-annotate sooner), and then switches the project to that version.
  The prediction carries the explanation (priority, noisiness, ambiguity, counts, model version) in
  its region's ``meta.alc``, so the audit trail can be rebuilt from Label Studio alone.
- Caveat (Label Studio's code, 1.23.2): once the organisation has more than one member, its
  uncertainty sampling picks at random among the open tasks that have current predictions (it means
  to randomise among the top few, but the random order replaces the score order). The window is
  what holds then: only the top-K tasks are open at all.

The window: at most ``window`` tasks are open at a time. A task that is open stays open until it gets
the annotation it was opened for (closing it under an annotator's hands could pay for one annotation
twice); free places go to the highest-priority unsettled tasks, one slot each, only while the budget
can pay (:mod:`connectors.ledger`). When the budget is spent every open task is closed.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from label_studio_sdk import LabelStudio

from connectors.counts import ProjectSnapshot, TaskRecord, read_project
from connectors.ledger import Budget, budget_of, settled_mask

log = logging.getLogger(__name__)

PATCH_THREADS = 4  # Label Studio answers task updates concurrently; a few in flight keep a push of 1,000 short
IMPORT_BATCH = 500  # predictions per bulk import request


@dataclass
class PushResult:
    """What a push changed in Label Studio."""

    model_version: str
    opened: list[int] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)  # open before and still open
    predictions: int = 0  # imported by this push
    budget: dict = field(default_factory=dict)  # after the push
    seconds: float = 0.0

    @property
    def window(self) -> list[int]:
        return sorted(self.kept + self.opened)

    def as_dict(self) -> dict:
        return {"model_version": self.model_version, "opened": self.opened, "closed": self.closed, "kept": self.kept,
                "window": self.window, "predictions": self.predictions, "budget": self.budget,
                "seconds": round(self.seconds, 3)}


def push_window(
    client: LabelStudio,
    project_id: int,
    *,
    snapshot: ProjectSnapshot | None = None,
    task_ids: Sequence[int],
    scores: Sequence[float],
    priorities: Sequence[float] | None = None,
    model_version: str,
    window: int,
    budget: int | None = None,
    max_annotations: int = 5,
    noisiness: Sequence[float] | None = None,
    ambiguity: Sequence[float] | None = None,
    initial_label_source: str | None = None,
) -> PushResult:
    """Open the top-``window`` unsettled tasks by score (lowest first) within the budget; see the module doc.

    ``snapshot`` only tells which initial label source to read with: the push always reads the project
    again, because annotations arrive while a model trains and the budget must be judged on the present.
    """
    started = time.perf_counter()
    if len(task_ids) != len(scores):
        raise ValueError(f"{len(task_ids)} task ids but {len(scores)} scores")
    source = initial_label_source or (snapshot.initial_label_source if snapshot is not None else "annotations")
    snap = read_project(client, project_id, source)
    ranked = _ranking(task_ids, scores, priorities, noisiness, ambiguity)
    settled = settled_mask(snap)
    n = snap.n_annotations
    before = budget_of(snap, budget)

    done = {t.id for row, t in enumerate(snap.tasks) if settled[row] or n[row] >= max_annotations}
    open_now = [t.id for t in snap.tasks if t.open_slots > 0]
    close = [tid for tid in open_now if tid in done]
    if before.exhausted:
        close = list(open_now)
    keep = [tid for tid in open_now if tid not in close]
    committed = before.committed - sum(snap.task(tid).open_slots for tid in close)
    if before.total is not None and before.total - before.spent - committed < 0:
        # the budget shrank below what is open: close the lowest-priority open tasks first
        keep.sort(key=lambda tid: ranked.get(tid, {}).get("score", 1.0))
        while keep and before.total - before.spent - committed < 0:
            tid = keep.pop()
            close.append(tid)
            committed -= snap.task(tid).open_slots
    after_close = Budget(before.total, before.spent, committed)

    window = snap.state.window if snap.state.window is not None else window
    free = max(0, int(window) - len(keep))
    affordable = after_close.affordable()
    candidates = sorted(
        (tid for tid in ranked if tid in snap and tid not in done and snap.task(tid).has_initial
         and snap.task(tid).open_slots == 0),
        key=lambda tid: (ranked[tid]["score"], -(ranked[tid].get("priority") or 0.0), tid),
    )
    opened = candidates[: int(min(free, affordable))]

    result = PushResult(model_version=model_version, kept=sorted(keep), closed=sorted(close))
    set_overlaps(client, {tid: (snap.task(tid).n_annotators,) * 2 for tid in close})
    window_ids = keep + opened
    result.predictions = _import_predictions(client, snap, window_ids, ranked, model_version)
    clear_ground_truth(client, [a for tid in opened for a in snap.task(tid).ground_truth_ids])
    set_overlaps(client, {tid: (snap.task(tid).n_annotators + 1, snap.task(tid).n_annotators) for tid in opened})
    result.opened = sorted(opened)
    if window_ids and snap.model_version != model_version:
        client.projects.update(int(project_id), model_version=model_version)
    result.budget = Budget(before.total, before.spent, committed + len(opened)).as_dict()
    result.seconds = time.perf_counter() - started
    log.info("project %s: pushed %s: %d opened, %d kept, %d closed, budget %s", project_id, model_version,
             len(result.opened), len(result.kept), len(result.closed), result.budget)
    return result


def on_annotation(
    client: LabelStudio,
    project_id: int,
    task_id: int,
    max_annotations: int = 5,
    *,
    budget: int | None = None,
    initial_label_source: str = "annotations",
) -> dict:
    """After an annotation on ``task_id``: settled (strict majority) or at the cap -> closed; else one more slot.

    A settled or capped task is decided on a fresh read of that task alone (closing never spends). Otherwise
    the whole project is read: one more slot is opened only when the budget can pay for it, and when the
    budget is spent every open task is closed. Values are absolute, so a retry is harmless.
    """
    one = read_project(client, project_id, initial_label_source, task_ids=[task_id])
    task = one.tasks[0]
    count = task.n_annotations
    settled = bool(settled_mask(one)[0])
    outcome = {"task_id": int(task_id), "annotations": count, "counts": one.counts[0].tolist()}
    if settled or count >= max_annotations:  # the common case, decided on this task alone: closing spends nothing
        return {**outcome, "action": _close(client, task, settled, max_annotations)}
    if task.reannotations == 0:
        return {**outcome, "action": "not in cleaning (no re-annotation yet)"}
    snap = read_project(client, project_id, initial_label_source)
    row = snap.row(task_id)
    task = snap.tasks[row]
    count = task.n_annotations
    state = budget_of(snap, budget)
    settled = bool(settled_mask(snap)[row])
    outcome = {"task_id": int(task_id), "annotations": count, "counts": snap.counts[row].tolist()}
    if state.exhausted:
        to_close = {t.id: (t.n_annotators, t.n_annotators) for t in snap.tasks if t.open_slots > 0}
        set_overlaps(client, to_close)
        return {**outcome, "action": "budget spent: window closed", "closed": sorted(to_close),
                "budget": Budget(state.total, state.spent, 0).as_dict()}
    if settled or count >= max_annotations:  # another annotation arrived in between
        committed = state.committed - task.open_slots
        return {**outcome, "action": _close(client, task, settled, max_annotations),
                "budget": Budget(state.total, state.spent, committed).as_dict()}
    if task.reannotations == 0:
        return {**outcome, "action": "not in cleaning (no re-annotation yet)", "budget": state.as_dict()}
    if task.open_slots > 0:
        return {**outcome, "action": "waiting for an open slot", "budget": state.as_dict()}
    if state.affordable() < 1:
        return {**outcome, "action": "no majority, but the budget is committed: not reopened", "budget": state.as_dict()}
    clear_ground_truth(client, task.ground_truth_ids)
    set_overlaps(client, {task.id: (task.n_annotators + 1, task.n_annotators)})
    return {**outcome, "action": "no majority: one more opinion asked",
            "budget": Budget(state.total, state.spent, state.committed + 1).as_dict()}


def _close(client: LabelStudio, task: TaskRecord, settled: bool, max_annotations: int) -> str:
    if task.overlap != task.n_annotators:
        set_overlaps(client, {task.id: (task.n_annotators, task.n_annotators)})
    return "settled" if settled else f"closed at the cap of {max_annotations} annotations"


def _ranking(task_ids, scores, priorities, noisiness, ambiguity) -> dict[int, dict]:
    """task id -> its ranking entry (score, and the components when given)."""
    columns = {"score": scores, "priority": priorities, "noisiness": noisiness, "ambiguity": ambiguity}
    arrays = {k: np.asarray(v, dtype=float) for k, v in columns.items() if v is not None}
    for name, values in arrays.items():
        if len(values) != len(task_ids):
            raise ValueError(f"{len(task_ids)} task ids but {len(values)} {name} values")
    out = {}
    for i, tid in enumerate(task_ids):
        out[int(tid)] = {k: (float(v[i]) if np.isfinite(v[i]) else None) for k, v in arrays.items()}
        if out[int(tid)]["score"] is None:
            out[int(tid)]["score"] = 1.0  # no score: the end of the queue
    return out


def _import_predictions(client: LabelStudio, snap: ProjectSnapshot, task_ids: list[int], ranked: dict[int, dict],
                        model_version: str) -> int:
    """One prediction per window task under ``model_version``, in bulk; tasks that have one already are skipped
    (a push retried after failing half-way imports nothing twice)."""
    predictions = []
    for tid in task_ids:
        task = snap.task(tid)
        if task.prediction(model_version) is not None:
            continue
        entry = ranked.get(tid) or {"score": 1.0}
        row = snap.row(tid)
        counts = snap.counts[row]
        label = snap.class_names[int(np.argmax(counts))] if counts.sum() else snap.class_names[0]
        explanation = {
            **{k: entry.get(k) for k in ("priority", "noisiness", "ambiguity")},
            "score": entry["score"],
            "label_counts": {name: int(c) for name, c in zip(snap.class_names, counts) if c},
            "model_version": model_version,
            "in_ranking": tid in ranked,
        }
        region = {"from_name": snap.from_name, "to_name": _to_name(snap), "type": "choices",
                  "value": {"choices": [label]}, "meta": {"alc": explanation}}
        predictions.append({"task": tid, "model_version": model_version, "score": entry["score"], "result": [region]})
    for start in range(0, len(predictions), IMPORT_BATCH):
        client.projects.import_predictions(snap.project_id, request=predictions[start:start + IMPORT_BATCH])
    return len(predictions)


def _to_name(snap: ProjectSnapshot) -> str:
    from label_studio_sdk.label_interface import LabelInterface

    control = LabelInterface(snap.label_config).get_control(snap.from_name)
    return control.to_name[0] if control.to_name else ""


def set_overlaps(client: LabelStudio, overlaps: dict[int, tuple[int, int]]) -> None:
    """Task id -> (new overlap, its distinct annotators). ``is_labeled`` is set to match: Label Studio does
    not recompute it when a task's overlap is updated (measured on 1.23.2), and its stream filters on it."""
    if not overlaps:
        return

    def update(item: tuple[int, tuple[int, int]]) -> Any:
        tid, (overlap, annotators) = item
        return client.tasks.update(str(tid), overlap=int(overlap), is_labeled=bool(annotators >= overlap))

    _parallel(update, list(overlaps.items()))


def clear_ground_truth(client: LabelStudio, annotation_ids: list[int]) -> None:
    """Take Label Studio's ground-truth star off these annotations before their task is opened.

    Label Studio 1.23.2 leaves ground-truth annotations out of its task-lock count (``Task.has_lock``)
    but not out of ``is_labeled``; imported annotations are ground truth by default. An opened task
    whose initial label is ground truth is therefore served to two annotators at once (measured), and
    both are paid. Without the star the lock holds; the label itself is untouched.
    """
    _parallel(lambda aid: client.annotations.update(int(aid), ground_truth=False), list(annotation_ids))


def _parallel(fn, items: list) -> None:
    if items:
        with ThreadPoolExecutor(max_workers=min(PATCH_THREADS, len(items))) as pool:
            list(pool.map(fn, items))
