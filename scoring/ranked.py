"""The ranking a retrain produces: one row per task, the value the queue, the model store and the dashboard share.

Made here (scoring/) from a strategy's output; numpy only, no Label Studio, no Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Ranking:
    """What a retrain produced for one project: one row per task, in the snapshot's order."""

    task_ids: list[int]
    class_names: list[str]
    counts: np.ndarray  # (N, C)
    priority: np.ndarray  # (N,) higher = relabel first
    noisiness: np.ndarray
    ambiguity: np.ndarray
    scores: np.ndarray  # (N,) what Label Studio gets: lower = relabel first
    predicted: np.ndarray  # (N,) the selector's most likely class, shown as the prediction's choice
    p_label: np.ndarray | None = None  # (N,) out-of-fold posterior of each task's current majority label
    p_initial: np.ndarray | None = None  # (N,) out-of-fold posterior of each task's initial label (NaN: none known)

    def row(self, task_id: int) -> int | None:
        if not hasattr(self, "_index"):
            self._index = {t: i for i, t in enumerate(self.task_ids)}
        return self._index.get(task_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_ids": [int(t) for t in self.task_ids],
            "class_names": list(self.class_names),
            "counts": np.asarray(self.counts).astype(float).tolist(),
            "priority": _floats(self.priority),
            "noisiness": _floats(self.noisiness),
            "ambiguity": _floats(self.ambiguity),
            "scores": _floats(self.scores),
            "predicted": [int(c) for c in self.predicted],
            **({"p_label": _floats(self.p_label)} if self.p_label is not None else {}),
            **({"p_initial": _floats(self.p_initial)} if self.p_initial is not None else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Ranking":
        arr = lambda k: np.array([np.nan if v is None else v for v in data[k]], dtype=float)  # noqa: E731
        return cls(
            task_ids=[int(t) for t in data["task_ids"]],
            class_names=list(data["class_names"]),
            counts=np.asarray(data["counts"], dtype=float).reshape(len(data["task_ids"]), len(data["class_names"])),
            priority=arr("priority"),
            noisiness=arr("noisiness"),
            ambiguity=arr("ambiguity"),
            scores=arr("scores"),
            predicted=np.asarray(data["predicted"], dtype=int),
            p_label=arr("p_label") if "p_label" in data else None,
            p_initial=arr("p_initial") if "p_initial" in data else None,
        )


def _floats(values: Any) -> list[float | None]:
    """JSON has no inf/nan: they become None (e.g. the oracle's -inf for tasks that need nothing)."""
    return [float(v) if np.isfinite(v) else None for v in np.asarray(values, dtype=float)]
