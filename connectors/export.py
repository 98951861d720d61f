"""Final labels plus the audit trail, one row per task, rebuilt from Label Studio alone.

A row: the task, its initial and final label (the strict majority once there is one, else the initial
label), whether it is settled, its label counts, every annotation (annotator, label, time, lead time,
initial or not), and every ranking this product pushed for it (model version, score, priority,
noisiness, ambiguity, time); ``chosen_*`` is the ranking under which it was first opened.
CSV cells that hold lists or objects are JSON.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from label_studio_sdk import LabelStudio

from connectors.client import task_url
from connectors.ledger import Ledger, reconcile

CSV_COLUMNS = [
    "task_id", "url", "status", "settled", "initial_label", "final_label", "label_changed", "counts",
    "annotations_total", "reannotations", "chosen_model_version", "chosen_at", "chosen_priority",
    "chosen_noisiness", "chosen_ambiguity", "chosen_score", "annotations", "rankings",
]


def export_rows(client: LabelStudio, project_id: int, initial_label_source: str = "annotations",
                budget: int | None = None, ledger: Ledger | None = None) -> list[dict[str, Any]]:
    ledger = ledger or reconcile(client, project_id, initial_label_source, budget)
    snap = ledger.snapshot
    changed = ledger.changed
    rows = []
    for row, task in enumerate(snap.tasks):
        rankings = sorted(
            ({"model_version": p.model_version, "score": p.score, "time": p.created_at,
              **{k: p.explanation.get(k) for k in ("priority", "noisiness", "ambiguity")}}
             for p in task.predictions if p.explanation is not None),
            key=lambda r: r["time"] or "",
        )
        chosen = rankings[0] if rankings else {}
        settled = bool(ledger.settled[row])
        if settled:
            status = "settled"
        elif task.open_slots > 0:
            status = "open"
        elif task.reannotations > 0:
            status = "unsettled"
        else:
            status = "not re-annotated"
        rows.append({
            "task_id": task.id,
            "url": task_url(client, snap.project_id, task.id),
            "status": status,
            "settled": settled,
            "initial_label": task.initial_label,
            "final_label": ledger.final_labels[row],
            "label_changed": bool(changed[row]),
            "counts": {name: int(c) for name, c in zip(snap.class_names, snap.counts[row]) if c},
            "annotations_total": task.n_annotations,
            "reannotations": task.reannotations,
            "chosen_model_version": chosen.get("model_version"),
            "chosen_at": chosen.get("time"),
            "chosen_priority": chosen.get("priority"),
            "chosen_noisiness": chosen.get("noisiness"),
            "chosen_ambiguity": chosen.get("ambiguity"),
            "chosen_score": chosen.get("score"),
            "annotations": [
                {"id": a.id, "annotator": a.annotator, "label": a.label, "created_at": a.created_at,
                 "updated_at": a.updated_at, "lead_time": a.lead_time, "initial": a.initial,
                 "skipped": a.cancelled, "counted": a.valid}
                for a in task.annotations
            ],
            "rankings": rankings,
        })
    return rows


def to_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1)


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return out.getvalue()
