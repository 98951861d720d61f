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

The decisions are :mod:`connectors.plan`'s (pure) and so are the calls; the two functions here are
the full-read forms (one read of the whole project, then plan and apply), for a caller without the
backend's working state: tests, benchmarks, a one-off push. The service itself decides on its working
state in Redis (``backend.working_state``) and reads only the task that changed.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

from label_studio_sdk import LabelStudio

from connectors.counts import read_project
from connectors.ledger import Budget, budget_of
from connectors.plan import (  # noqa: F401 (re-exported)
    IMPORT_BATCH, PATCH_THREADS, PushResult, after_annotation, apply_plan, clear_ground_truth, entries_of, held,
    patch_tasks, plan_window, task_patch,
)

log = logging.getLogger(__name__)


def push_window(
    client: LabelStudio,
    project_id: int,
    *,
    task_ids: Sequence[int],
    scores: Sequence[float],
    priorities: Sequence[float] | None = None,
    model_version: str,
    window: int,
    budget: int | None = None,
    max_annotations: int = 5,
    noisiness: Sequence[float] | None = None,
    ambiguity: Sequence[float] | None = None,
    initial_label_source: str = "annotations",
    spares: int = 0,
    snapshot=None,
) -> PushResult:
    """Open the top-``window`` unsettled tasks by score (lowest first) within the budget; see the module doc.

    Reads the whole project first (``snapshot``, when given, only names the initial label source)."""
    started = time.perf_counter()
    if len(task_ids) != len(scores):
        raise ValueError(f"{len(task_ids)} task ids but {len(scores)} scores")
    source = snapshot.initial_label_source if snapshot is not None else initial_label_source
    snap = read_project(client, project_id, source)
    entries = entries_of(task_ids, scores, priorities, noisiness, ambiguity)
    window = snap.state.window if snap.state.window is not None else window
    plan = plan_window(snap.tasks, entries, budget=budget_of(snap, budget, max_annotations), window=window,
                       max_annotations=max_annotations, model_version=model_version, spares=spares)
    tasks = {t.id: t for t in snap.tasks}
    clear_ground_truth(client, [a for tid in plan.open for a in tasks[tid].ground_truth_ids])
    result = apply_plan(client, snap.config, plan, entries, tasks, max_annotations=max_annotations)
    result.seconds = time.perf_counter() - started
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
    """After an annotation on ``task_id``: settled (strict majority) or at the cap -> closed; else one more
    slot if the budget can pay; the budget spent -> every open task closed. Full-read form (see module doc)."""
    snap = read_project(client, project_id, initial_label_source)
    task = snap.task(task_id)
    state = budget_of(snap, budget, max_annotations)
    decision = after_annotation(task, state, max_annotations)
    outcome = {"task_id": int(task_id), "annotations": task.n_annotations, "counts": list(task.counts)}
    tasks = {t.id: t for t in snap.tasks}
    if decision.action == "close":
        if task.overlap != task.n_annotators or task.data.get("alc_status") is None:
            patch_tasks(client, {task.id: task_patch(task, task.n_annotators, snap.class_names, max_annotations)})
        after = Budget(state.total, state.spent, state.committed - task.open_slots,
                       state.held - held(task, max_annotations))
        return {**outcome, "action": decision.reason, "budget": after.as_dict()}
    if decision.action == "close-all":
        to_close = [t.id for t in snap.tasks if t.open_slots > 0]
        patch_tasks(client, {tid: task_patch(tasks[tid], tasks[tid].n_annotators, snap.class_names, max_annotations)
                             for tid in to_close})
        return {**outcome, "action": decision.reason, "closed": sorted(to_close),
                "budget": Budget(state.total, state.spent, 0, 0).as_dict()}
    if decision.action == "open":  # a tie: its opinions were held when it opened; only B itself can refuse
        if state.total is not None and state.total - state.spent - state.committed < 1:
            return {**outcome, "action": "no majority, but the budget is committed: not reopened",
                    "budget": state.as_dict()}
        clear_ground_truth(client, task.ground_truth_ids)
        patch_tasks(client, {task.id: task_patch(task, task.n_annotators + 1, snap.class_names, max_annotations)})
        return {**outcome, "action": decision.reason,
                "budget": Budget(state.total, state.spent, state.committed + 1, state.held).as_dict()}
    return {**outcome, "action": decision.reason, "budget": state.as_dict()}


def set_overlaps(client: LabelStudio, overlaps: dict[int, tuple[int, int]]) -> None:
    """Task id -> (new overlap, its distinct annotators), ``is_labeled`` to match (Label Studio does not
    recompute it when a task's overlap is updated, measured on 1.23.2, and its stream filters on it)."""
    patch_tasks(client, {tid: {"overlap": int(o), "is_labeled": bool(n >= o)} for tid, (o, n) in overlaps.items()})
