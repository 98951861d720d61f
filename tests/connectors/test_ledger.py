"""The ledger rebuilt from Label Studio: spend, settled tasks, label changes, annotators, timeline; the status dict
and the export rows."""

from __future__ import annotations

import csv
import io
import json

from connectors.export import CSV_COLUMNS, export_rows, to_csv
from connectors.ledger import project_status, reconcile
from connectors.queue import push_window
from connectors.state import ProjectState, with_state


def build(fake):
    """Three tasks: one corrected (cat -> dog, 2 re-annotations), one confirmed, one untouched."""
    pid = fake.add_project("ledger")
    fake.users.update({2: "ann2@example.com", 3: "ann3@example.com"})
    corrected = fake.add_task(pid, {"image": "a"}, ["cat"])
    confirmed = fake.add_task(pid, {"image": "b"}, ["bird"])
    untouched = fake.add_task(pid, {"image": "c"}, ["dog"])
    baseline = max(a["id"] for t in fake.tasks.values() for a in t["annotations"])
    fake.projects[pid]["expert_instruction"] = with_state("", ProjectState(budget=10, baseline_annotation_id=baseline))
    return pid, corrected, confirmed, untouched


def test_reconcile_status_and_export(fake, client_of):
    pid, corrected, confirmed, untouched = build(fake)
    client = client_of(fake)
    push_window(client, pid, task_ids=[corrected, confirmed, untouched], scores=[0.1, 0.2, 0.9],
                priorities=[3.0, 2.0, -1.0], model_version="m1", window=2)
    fake.annotate(corrected, "dog", by=2, lead_time=4.0)
    fake.annotate(confirmed, "bird", by=3, lead_time=1.0)
    fake.annotate(corrected, "dog", by=3, lead_time=2.0)
    fake.tasks[corrected]["overlap"] = 3  # as on_annotation would have set it

    ledger = reconcile(client, pid)
    assert ledger.budget.as_dict() == {"total": 10, "spent": 3, "committed": 0, "held": 0, "remaining": 7,
                                       "exhausted": False}
    assert ledger.settled.tolist() == [True, True, False]
    assert ledger.final_labels == ["dog", "bird", "dog"]
    assert ledger.changed.tolist() == [True, False, False]
    assert [t["spent"] for t in ledger.timeline()] == [1, 2, 3]
    assert [t["labels_changed"] for t in ledger.timeline()] == [0, 0, 1]  # the second 'dog' made the majority

    status = project_status(client, pid)
    json.dumps(status)  # plain JSON data
    assert status["project"] == {"id": pid, "title": "ledger", "url": f"http://ls.test/projects/{pid}"}
    assert status["tasks"] == {"total": 3, "settled": 2, "reannotated": 2, "open": 0, "labels_changed": 1}
    assert status["annotators"] == [
        {"annotator": "ann3@example.com", "annotations": 2, "lead_time": 3.0, "mean_lead_time": 1.5},
        {"annotator": "ann2@example.com", "annotations": 1, "lead_time": 4.0, "mean_lead_time": 4.0},
    ]
    [change] = status["recent_changes"]
    assert (change["task_id"], change["from"], change["to"]) == (corrected, "cat", "dog")
    assert status["model_version"] == "m1"
    assert set(status) >= {"project", "budget", "tasks", "annotators", "timeline", "queue", "recent_changes",
                           "model_version"}

    rows = {r["task_id"]: r for r in export_rows(client, pid)}
    assert rows[corrected]["status"] == "settled" and rows[corrected]["final_label"] == "dog"
    assert rows[corrected]["initial_label"] == "cat" and rows[corrected]["label_changed"]
    assert rows[corrected]["chosen_model_version"] == "m1" and rows[corrected]["chosen_priority"] == 3.0
    assert [a["annotator"] for a in rows[corrected]["annotations"]] == ["admin@example.com", "ann2@example.com",
                                                                          "ann3@example.com"]
    assert rows[untouched]["status"] == "not re-annotated" and rows[untouched]["chosen_model_version"] is None
    parsed = list(csv.DictReader(io.StringIO(to_csv(list(rows.values())))))
    assert list(parsed[0]) == CSV_COLUMNS and len(parsed) == 3
    assert json.loads(parsed[0]["annotations"])[0]["initial"] is True


def test_queue_lists_open_tasks_lowest_score_first(fake, client_of):
    pid, corrected, confirmed, untouched = build(fake)
    client = client_of(fake)
    push_window(client, pid, task_ids=[corrected, confirmed, untouched], scores=[0.3, 0.2, 0.9],
                priorities=[1.0, 2.0, -1.0], model_version="m1", window=2)
    queue = project_status(client, pid)["queue"]
    assert [q["task_id"] for q in queue] == [confirmed, corrected]
    assert queue[0]["priority"] == 2.0 and queue[0]["overlap"] == 2 and queue[0]["annotations"] == 1
    assert queue[0]["url"] == f"http://ls.test/projects/{pid}/data?task={confirmed}"
