"""`alc connect` builds the backend's working state from its own full read, so the first retrain reads nothing again."""

from __future__ import annotations

from backend.commands.connect import _working_state
from backend.settings import load_settings
from backend.working_state import WorkingState, compare
from connectors.client import connect
from connectors.counts import read_project
from connectors.ledger import reconcile
from connectors.setup import configure_project



def _unconnected_project(ls, label_config: str, classes: list[str]) -> int:
    """Starred initial labels (as imported), a task opened outside the queue, a task with two labels."""
    pid = ls.add_project(label_config=label_config)
    ids = [ls.add_task(pid, {"image": f"/data/upload/1/{i}.png"}, [classes[i % 10]]) for i in range(12)]
    ls.tasks[ids[0]]["overlap"] = 3  # open outside the queue: connect closes it
    ls.annotate(ids[1], classes[5], by=2)  # a second label before connect: both count as initial
    return pid


def test_connect_leaves_a_working_state_equal_to_a_fresh_read(conn, settings, fake_ls, label_config, classes):
    ls = fake_ls.ls
    pid = _unconnected_project(ls, label_config, classes)
    client = connect("http://ls.test", ls.token, transport=ls.transport())
    said: list[str] = []
    configure_project(client, pid, budget=10, window=3,
                      on_read=lambda snapshot, started: said.append(_working_state(settings, client, snapshot, started)))
    assert said == ["built in Redis from this read (12 tasks)"]
    state = WorkingState(conn, pid)
    fresh = read_project(client, pid)
    assert compare(state, fresh) == []  # closed stray, the new baseline: as Label Studio now holds them
    assert state.ledger(None).budget == reconcile(client, pid).budget
    # the stars stay on (one PATCH each is left to the backend's background job); the state knows each one
    assert not [c for c in ls.calls if c[1].startswith("/api/annotations/")]
    stars = sorted(a for t in fresh.tasks for a in t.ground_truth_ids)
    assert len(stars) == 12 and sorted(state.starred(a.id for t in fresh.tasks for a in t.annotations)) == stars
    assert state.config().state.budget == 10 and state.config().state.baseline_annotation_id is not None


def test_connect_without_a_reachable_redis_says_the_retrain_reads_instead(settings, fake_ls, label_config, classes):
    ls = fake_ls.ls
    pid = _unconnected_project(ls, label_config, classes)
    client = connect("http://ls.test", ls.token, transport=ls.transport())
    offline = load_settings(**{**settings.model_dump(), "redis_url": "redis://127.0.0.1:1/0"})
    said: list[str] = []
    configure_project(client, pid, on_read=lambda snapshot, started: said.append(_working_state(offline, client, snapshot, started)))
    assert said and said[0].startswith("not built: Redis unreachable")
