"""The connectors against a real Label Studio 1.23.2 (the session's shared server): initial labels read back,
`alc connect`, the window opening the top-K, annotators with their own accounts settling tasks by majority
or getting another opinion, the label stream following the priority order, the budget stopping the queue
exactly at B, and the export agreeing with what happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from backend.demo.annotators import LabelStream
from connectors.client import connect
from connectors.counts import read_project
from connectors.ledger import reconcile
from connectors.queue import on_annotation, push_window, set_overlaps
from connectors.state import read_state

pytestmark = pytest.mark.integration

CLASSES = ["cat", "dog", "bird"]
CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")


def choice(label: str) -> list[dict]:
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def client(label_studio):
    return connect(label_studio.url, label_studio.token, timeout=30, retries=2)


@pytest.fixture(scope="module")
def annotators(label_studio) -> list[LabelStream]:
    return [LabelStream(label_studio.url, f"cleaner{k}@connectors.test", "cleaner-password-1").sign_in()
            for k in (1, 2, 3)]


def make_project(client, title: str, initial: list[str]) -> tuple[int, list[int]]:
    project = client.projects.create(title=title, label_config=CONFIG, description="connectors integration test")
    tasks = [{"data": {"image": f"/static/{k}.png", "k": k}, "annotations": [{"result": choice(label)}]}
             for k, label in enumerate(initial)]
    ids = client.projects.import_tasks(project.id, request=tasks, return_task_ids=True).task_ids
    return project.id, sorted(ids)


def alc(label_studio, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token, **env}
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], env=environ, capture_output=True, text=True,
                          timeout=120)


def test_connect_sets_the_project_up_and_initial_labels_are_read_back(label_studio, client):
    initial = ["cat", "dog", "bird", "dog", "cat"]
    pid, ids = make_project(client, "connectors: connect", initial)
    result = alc(label_studio, "connect", "--project", str(pid), "--window", "4", ALC_BUDGET="7")
    assert result.returncode == 0, result.stderr
    assert "Uncertainty sampling" in result.stdout and "budget: 7" in result.stdout

    project = client.projects.get(pid)
    assert project.sampling == "Uncertainty sampling" and project.show_overlap_first
    assert project.description.startswith("connectors integration test")
    state = read_state(client, pid)
    assert (state.budget, state.window) == (7, 4)
    assert any((v.data or {}).get("title") == "Cleaning queue" for v in client.views.list(project=pid))

    # a skipped annotation (made after connect) counts nowhere, in Label Studio's overlap or ours
    client.annotations.create(id=ids[0], result=[], was_cancelled=True)
    snapshot = read_project(client, pid)
    assert snapshot.task(ids[0]).annotations[-1].cancelled and snapshot.task(ids[0]).n_annotations == 1
    assert snapshot.task_ids == ids and snapshot.class_names == CLASSES
    assert [CLASSES[row.argmax()] for row in snapshot.initial_counts] == initial
    assert snapshot.counts.sum() == 5 and all(t.reannotations == 0 for t in snapshot.tasks)
    assert state.baseline_annotation_id == max(a.id for t in snapshot.tasks for a in t.annotations if a.initial)

    # connecting again keeps the baseline and does not duplicate the tab
    assert alc(label_studio, "connect", "--project", str(pid)).returncode == 0
    assert read_state(client, pid).baseline_annotation_id == state.baseline_annotation_id
    assert sum((v.data or {}).get("title") == "Cleaning queue" for v in client.views.list(project=pid)) == 1

    bad = alc(label_studio, "export", "--project", "987654")
    assert bad.returncode == 1 and "no project 987654" in bad.stderr
    bad = alc(label_studio, "export", "--project", str(pid), LABEL_STUDIO_API_KEY="0" * 40)
    assert bad.returncode == 1 and "refused the API token" in bad.stderr


def test_window_opens_top_k_and_the_stream_follows_the_priority_order(label_studio, client, annotators):
    """The window opens exactly the top-K and only they are served; with a window of one, each push opens the
    next task in priority order and that is the task the annotator is served."""
    initial = ["cat", "dog", "bird", "cat", "dog", "bird"]
    pid, ids = make_project(client, "connectors: stream order", initial)
    assert alc(label_studio, "connect", "--project", str(pid), ALC_BUDGET="20").returncode == 0
    priority_order = [ids[k] for k in (4, 1, 5, 0, 2, 3)]
    scores = {tid: 0.1 + 0.1 * rank for rank, tid in enumerate(priority_order)}  # lowest score = first

    def push(version: str, window: int):
        return push_window(client, pid, task_ids=ids, scores=[scores[t] for t in ids], model_version=version,
                           window=window, max_annotations=4)

    def annotate_agreeing(annotator: LabelStream, task: dict) -> None:
        annotator.submit(pid, task["id"], choice(initial[ids.index(task["id"])]), 1.0, "2026-01-01T00:00:00Z")
        assert on_annotation(client, pid, task["id"], max_annotations=4)["action"] == "settled"

    result = push("order-0", window=3)
    assert result.opened == sorted(priority_order[:3])
    overlaps = {t.id: t.overlap for t in read_project(client, pid).tasks}
    assert [tid for tid in ids if overlaps[tid] == 2] == sorted(priority_order[:3])
    assert client.projects.get(pid).model_version == "order-0"
    served = []
    for _ in range(3):
        task = annotators[0].next_task(pid)
        served.append(task["id"])
        annotate_agreeing(annotators[0], task)
    assert sorted(served) == sorted(priority_order[:3]), "only window tasks are served"
    assert annotators[0].next_task(pid) is None

    for step, expected in enumerate(priority_order[3:5]):
        assert push(f"order-{step + 1}", window=1).opened == [expected]
        task = annotators[1].next_task(pid)
        assert task["id"] == expected
        annotate_agreeing(annotators[1], task)


def test_two_or_three_users_settle_by_majority_or_get_another_opinion(label_studio, client, annotators):
    pid, ids = make_project(client, "connectors: majority", ["cat", "dog"])
    assert alc(label_studio, "connect", "--project", str(pid), ALC_BUDGET="10").returncode == 0
    push_window(client, pid, task_ids=ids, scores=[0.2, 0.1], model_version="maj-1", window=2, max_annotations=4)
    by_task: dict[int, list[str]] = {ids[0]: ["dog", "cat"], ids[1]: ["dog"]}  # cat->dog, cat: tie then majority
    labels_left = {tid: list(v) for tid, v in by_task.items()}
    actions = []
    for annotator in annotators:
        while True:
            task = annotator.next_task(pid)
            if task is None:
                break
            label = labels_left[task["id"]].pop(0)
            annotator.submit(pid, task["id"], choice(label), 1.5, "2026-01-01T00:00:00Z")
            actions.append((task["id"], on_annotation(client, pid, task["id"], max_annotations=4)["action"]))
            break  # one task per annotator round: different users on the same task
    for annotator in annotators:  # a second round for the tie
        task = annotator.next_task(pid)
        if task is not None:
            label = labels_left[task["id"]].pop(0)
            annotator.submit(pid, task["id"], choice(label), 1.5, "2026-01-01T00:00:00Z")
            actions.append((task["id"], on_annotation(client, pid, task["id"], max_annotations=4)["action"]))
    outcome = dict(actions)
    assert outcome[ids[1]] == "settled"  # dog + dog
    assert ("no majority: one more opinion asked" in [a for t, a in actions if t == ids[0]])
    assert outcome[ids[0]] == "settled"  # cat, dog, cat
    snapshot = read_project(client, pid)
    assert snapshot.counts.tolist() == [[2, 1, 0], [0, 2, 0]]
    annotators_of = {t.id: {a.annotator for a in t.annotations if not a.initial} for t in snapshot.tasks}
    assert len(annotators_of[ids[0]]) == 2, "two different users re-annotated the tied task"
    assert all(t.open_slots == 0 for t in snapshot.tasks)


def test_budget_stops_the_queue_exactly_at_b_and_the_export_matches(label_studio, client, annotators, tmp_path):
    budget = 5
    initial = ["cat", "dog", "bird", "cat", "dog", "bird", "cat", "dog"]
    truth = ["dog", "dog", "cat", "cat", "bird", "bird", "dog", "cat"]
    pid, ids = make_project(client, "connectors: budget", initial)
    assert alc(label_studio, "connect", "--project", str(pid), "--budget", str(budget)).returncode == 0
    scores = [0.1 * (k + 1) for k in range(len(ids))]
    submitted: list[tuple[str, int, str]] = []
    version = 0
    idle_rounds = 0
    while idle_rounds < 2:
        version += 1
        push_window(client, pid, task_ids=ids, scores=scores, model_version=f"budget-{version}", window=3,
                    max_annotations=3)
        worked = False
        for annotator in annotators:
            task = annotator.next_task(pid)
            if task is None:
                continue
            label = truth[ids.index(task["id"])]
            annotator.submit(pid, task["id"], choice(label), 2.0, "2026-01-01T00:00:00Z")
            submitted.append((annotator.email, task["id"], label))
            on_annotation(client, pid, task["id"], max_annotations=3)
            worked = True
        idle_rounds = 0 if worked else idle_rounds + 1

    ledger = reconcile(client, pid)
    assert len(submitted) == budget
    assert ledger.budget.as_dict() == {"total": budget, "spent": budget, "committed": 0, "held": 0, "remaining": 0,
                                       "exhausted": True}
    assert all(t.open_slots == 0 for t in ledger.snapshot.tasks)
    fresh = LabelStream(label_studio.url, "latecomer@connectors.test", "cleaner-password-1").sign_in()
    assert fresh.next_task(pid) is None, "nothing is served once the budget is spent"

    out = tmp_path / "export.json"
    result = alc(label_studio, "export", "--project", str(pid), "--format", "json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = {row["task_id"]: row for row in json.loads(out.read_text())}
    assert set(rows) == set(ids)
    per_task = Counter(tid for _, tid, _ in submitted)
    for tid in ids:
        row = rows[tid]
        re_annotations = [(a["annotator"], a["label"]) for a in row["annotations"] if not a["initial"]]
        assert sorted(re_annotations) == sorted((who, label) for who, t, label in submitted if t == tid)
        assert row["initial_label"] == initial[ids.index(tid)]
        labels = [initial[ids.index(tid)]] + [label for _, label in re_annotations]
        top = Counter(labels).most_common()
        settled = len(labels) > 1 and (len(top) == 1 or top[0][1] > top[1][1])
        assert row["settled"] == settled
        assert row["final_label"] == (top[0][0] if settled else initial[ids.index(tid)])
        if per_task[tid]:
            assert row["chosen_model_version"].startswith("budget-") and row["chosen_score"] is not None
    csv_out = alc(label_studio, "export", "--project", str(pid), "--format", "csv")
    assert csv_out.returncode == 0 and csv_out.stdout.count("\n") >= len(ids) + 1


def test_updated_and_deleted_annotations_are_honoured_by_reconcile(label_studio, client, annotators):
    """Nothing is cached: an annotation changed or deleted in Label Studio changes counts, spend and settled."""
    pid, ids = make_project(client, "connectors: update and delete", ["cat", "dog"])
    assert alc(label_studio, "connect", "--project", str(pid), ALC_BUDGET="5").returncode == 0
    push_window(client, pid, task_ids=ids, scores=[0.1, 0.2], model_version="ud-1", window=1)
    task = annotators[2].next_task(pid)
    assert task["id"] == ids[0]
    created = annotators[2].submit(pid, ids[0], choice("cat"), 1.0, "2026-01-01T00:00:00Z")
    assert on_annotation(client, pid, ids[0])["action"] == "settled"
    ledger = reconcile(client, pid)
    assert (ledger.budget.spent, ledger.settled.tolist(), ledger.final_labels) == (1, [True, False], ["cat", "dog"])

    client.annotations.update(id=created["id"], result=choice("bird"))  # the annotator changed their mind
    ledger = reconcile(client, pid)
    assert ledger.snapshot.counts[0].tolist() == [1, 0, 1] and ledger.settled.tolist() == [False, False]
    assert ledger.final_labels[0] == "cat", "a tie changes nothing"

    client.annotations.delete(id=created["id"])
    ledger = reconcile(client, pid)
    assert ledger.budget.spent == 0 and ledger.snapshot.counts[0].tolist() == [1, 0, 0]
    assert [row["time"] for row in ledger.timeline()] == []


def test_an_open_slot_is_served_to_one_annotator_only(label_studio, client, annotators):
    """Imported annotations carry Label Studio's ground-truth star, which its task lock ignores: a task opened
    with its star on serves its one open slot to two annotators at once (and both are paid). `alc connect`
    leaves the stars on (one PATCH each: the backend's background job takes them off); whatever opens a task
    takes its star off first, and then the slot is locked by the first annotator."""
    starred, [kept] = make_project(client, "connectors: a slot opened with the star on", ["cat"])
    pid, ids = make_project(client, "connectors: one slot, one annotator", ["cat"])
    for project in (starred, pid):
        assert read_project(client, project).tasks[0].ground_truth_ids, "Label Studio stars imported annotations"
        assert alc(label_studio, "connect", "--project", str(project), ALC_BUDGET="3").returncode == 0
        assert read_project(client, project).tasks[0].ground_truth_ids, "connect leaves the star on"
    set_overlaps(client, {kept: (2, 1)})  # one slot open, as a push sets it, the star still on
    assert annotators[0].next_task(starred)["id"] == kept
    assert (annotators[1].next_task(starred) or {}).get("id") == kept, "the star leaves the slot unlocked"

    push_window(client, pid, task_ids=ids, scores=[0.1], model_version="lock-1", window=1)
    assert read_project(client, pid).tasks[0].ground_truth_ids == [], "the push took the star off first"
    first = annotators[0].next_task(pid)
    assert first["id"] == ids[0]
    assert annotators[1].next_task(pid) is None, "the slot is locked by the first annotator"


def test_the_incremental_state_equals_a_fresh_reconcile_after_a_mixed_sequence(label_studio, client, annotators,
                                                                                tmp_path):
    """Real webhooks from Label Studio into the app, per-annotation jobs on the working state in a real
    Redis: creates, an update, a skip, a delete, a task imported later and one lost webhook. The working
    state then differs from a fresh full read in the lost task only, and the reconcile job puts it right."""
    import threading

    import numpy as np
    from rq import Queue, SimpleWorker
    from werkzeug.serving import make_server

    from backend import jobs, task_window
    from backend import queue as q
    from backend.app import create_app
    from backend.queue import EmbeddedRedis
    from backend.settings import load_settings
    from backend.working_state import WorkingState, compare, ensure_state, reconcile_records
    from connectors.setup import configure_project
    from scoring.ranked import Ranking

    redis_server = EmbeddedRedis(tmp_path / "redis")
    settings = load_settings(redis_url=redis_server.start(), data_home=tmp_path / "home", model_dir=tmp_path / "m",
                             label_studio_url=label_studio.url, label_studio_api_key=label_studio.token,
                             window=3, budget=None, max_annotations_per_task=4, retrain_after_annotations=1000,
                             retrain_after_seconds=3600, reconcile_seconds=0, basic_auth_user=None,
                             basic_auth_pass=None, webhook_secret=None,
                             audit_share=0.0)  # the ranking's three: no task drawn at random
    conn = q.connect(settings.redis_url)
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        initial = ["cat", "dog", "bird", "cat", "dog", "bird", "cat", "dog"]
        pid, ids = make_project(client, "connectors: incremental = reconcile", initial)
        configure_project(client, pid, budget=10, window=3, backend_url=f"http://127.0.0.1:{server.server_port}")
        jobs.configure(settings)
        ls = jobs.client(jobs.context())
        state = ensure_state(conn, ls, pid)

        def work() -> None:
            SimpleWorker([Queue(q.FAST_QUEUE, connection=conn)], connection=conn).work(burst=True)

        scores = np.linspace(0.1, 0.8, len(ids))
        ranking = Ranking(task_ids=ids, class_names=CLASSES, counts=np.ones((len(ids), 3)), priority=-scores,
                          noisiness=-scores, ambiguity=np.zeros(len(ids)), scores=scores,
                          predicted=np.zeros(len(ids), dtype=int))
        pushed = task_window.push_ranking(settings, ls, state, ranking, "mix-1")
        assert pushed.opened == ids[:3] and client.projects.get(pid).model_version == "mix-1"

        def submit(annotator: LabelStream, label_of) -> tuple[int, dict]:
            task = annotator.next_task(pid)
            assert task is not None, "the window is open"
            created = annotator.submit(pid, task["id"], choice(label_of(task["id"])), 1.0, "2026-01-01T00:00:00Z")
            work()
            return task["id"], created

        agree, _ = submit(annotators[0], lambda t: initial[ids.index(t)])  # create: settled, place refilled
        assert client.tasks.get(str(agree)).data["alc_status"] == "settled"
        tie, tie_annotation = submit(annotators[1], lambda t: "bird" if initial[ids.index(t)] != "bird" else "cat")
        assert state.task(tie).open_slots == 1, "a tie asks one more opinion"
        client.annotations.update(id=tie_annotation["id"], result=choice(initial[ids.index(tie)]))  # update
        work()
        assert state.task(tie).settled
        skipped = state.open_tasks()[0]
        client.annotations.create(id=skipped, result=[], was_cancelled=True)  # a skip counts nowhere
        work()
        doomed, doomed_annotation = submit(annotators[2], lambda t: "dog")
        client.annotations.delete(id=doomed_annotation["id"])  # a delete: the task is read again
        work()
        assert state.task(doomed).reannotations == 0
        late = client.projects.import_tasks(pid, request=[{"data": {"image": "/static/late.png"}}],
                                            return_task_ids=True).task_ids[0]
        client.annotations.create(id=late, result=choice("cat"))  # a task imported after connect, labelled
        work()
        assert state.task(late) is not None and state.task(late).initial_label == "cat"
        hook = next(h for h in client.webhooks.list(project=str(pid)))
        client.webhooks.update(hook.id, is_active=False)  # the next webhook is lost
        lost, _ = submit(annotators[0], lambda t: "bird")
        client.webhooks.update(hook.id, is_active=True)

        fresh = read_project(client, pid)
        differences = compare(state, fresh)
        assert differences and all(line.startswith((f"task {lost}:", "ledger:")) for line in differences), differences
        Queue(q.TRAIN_QUEUE, connection=conn).empty()  # the retrains Label Studio's /setup asked for: not this test's
        assert q.enqueue_reconcile(conn, pid, "test")
        SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
        [record] = reconcile_records(conn, pid)
        assert record["n_differences"] == len(differences)
        assert compare(WorkingState(conn, pid), read_project(client, pid)) == []
        budget = WorkingState(conn, pid).budget()
        assert budget.spent + budget.committed <= 10
    finally:
        server.shutdown()
        redis_server.stop()
