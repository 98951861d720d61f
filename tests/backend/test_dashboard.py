"""The project manager's view without a Label Studio: a hand-made project snapshot goes through the
connectors' real ledger and ``project_status``, the backend's status (model estimate, rq registries),
the Flask page and `alc status`. The same page against a real Label Studio in a real browser is in
tests/integration/test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from pydantic import SecretStr
from label_studio_sdk import LabelStudio
from rq import Queue, SimpleWorker
from typer.testing import CliRunner

import backend.dashboard as dashboard
from backend import queue as q
from backend.app import create_app
from backend.cli import app as cli
from backend.model_store import ModelStore, Ranking
from dataclasses import replace

from backend.status import build_status, read_truth
from scoring.estimate import wilson_interval
from scoring.audit import AuditDraw
from scoring.estimate import estimate_accuracy, reannotations_to_reach
from connectors.counts import AnnotationRecord, PredictionRecord, ProjectSnapshot, TaskRecord
from connectors.errors import LabelStudioUnavailable, UnknownProject
from connectors.ledger import ledger_of
from connectors.state import ProjectState

LS_URL = "http://labelstudio.example:8080"
CLASSES = ["cat", "dog", "bird"]
PROJECT = 7
TASKS = [11, 12, 13, 14, 15, 16]
INITIAL = ["cat", "cat", "dog", "bird", "cat", "dog"]
P_INITIAL = [0.1, 0.9, 0.5, 0.8, 0.6, 0.95]  # the model's probability of each initial label
P_LABEL = [0.7, *P_INITIAL[1:]]  # ... and of each current label (task 11's is now dog)
BUDGET = 10
# re-annotations: task 11 corrected cat -> dog by two annotators, task 12 confirmed, task 13 open for one more
REANNOTATIONS = [(11, "dog", "ann@example.com", "2026-11-23T10:00:00Z", 4.0),
                 (11, "dog", "bob@example.com", "2026-11-23T10:05:00Z", 6.0),
                 (12, "cat", "ann@example.com", "2026-11-23T10:20:00Z", 2.0)]

USER_IDS = {"ann@example.com": 2, "bob@example.com": 3}  # Label Studio counts distinct users against overlap
# the order tasks were opened in (alc_seq): 11 the ranking's pick, 12 an audit draw from the untouched 12..16, 13
SEQ = {11: 0, 12: 1, 13: 2}
AUDIT_12 = AuditDraw(task=12, seq=1, pool_size=5, pool_wrong_prob=sum(1 - p for p in P_INITIAL[1:]),
                     wrong_prob=1 - P_INITIAL[1])


def snapshot() -> ProjectSnapshot:
    tasks, counts, initial_counts = [], np.zeros((6, 3), dtype=np.int64), np.zeros((6, 3), dtype=np.int64)
    for row, (task_id, label) in enumerate(zip(TASKS, INITIAL)):
        annotations = [AnnotationRecord(task_id * 10, "admin@example.com", 1, "2026-11-01T00:00:00Z", None, None,
                                        label, cancelled=False, initial=True, valid=True)]
        initial_counts[row, CLASSES.index(label)] = 1
        for i, (tid, again, who, time, lead) in enumerate(REANNOTATIONS):
            if tid == task_id:
                annotations.append(AnnotationRecord(1000 + i, who, USER_IDS[who], time, time, lead, again, False, False, True))
        for a in annotations:
            counts[row, CLASSES.index(a.label)] += 1
        overlap = len(annotations) + (1 if task_id == 13 else 0)
        predictions = [PredictionRecord(1, "alc-linear-v1", -0.69, "dog",
                                        {"priority": 0.693, "noisiness": 0.693, "ambiguity": 0.5}, None)] if task_id == 13 else []
        tasks.append(TaskRecord(task_id, {"image": f"/img/{task_id}.png"}, overlap, annotations, predictions, label,
                                counts=[int(c) for c in counts[row]], initial_counts=[int(c) for c in initial_counts[row]],
                                seq=SEQ.get(task_id), audit=AUDIT_12.to_json() if task_id == 12 else None))
    return ProjectSnapshot(PROJECT, "pets", "<View/>", CLASSES, "label", "annotations", "alc-linear-v1",
                           ProjectState(budget=BUDGET), tasks, counts, initial_counts)


def publish_ranking(store: ModelStore) -> None:
    noisiness = -np.log(np.array(P_INITIAL))
    counts = np.eye(3)[[CLASSES.index(label) for label in INITIAL]]
    ranking = Ranking(task_ids=TASKS, class_names=CLASSES, counts=counts, priority=noisiness, noisiness=noisiness,
                      ambiguity=np.zeros(6), scores=-noisiness, predicted=np.zeros(6, dtype=int),
                      p_label=np.array(P_LABEL), p_initial=np.array(P_INITIAL))
    store.publish(PROJECT, None, ranking, {"selector": "linear"})


@pytest.fixture
def sdk() -> LabelStudio:
    return LabelStudio(base_url=LS_URL, api_key="x" * 40)  # only its base URL is used: no request is made


@pytest.fixture
def store(settings) -> ModelStore:
    return ModelStore(settings.models_path)


@pytest.fixture
def served(settings, store, sdk, conn, monkeypatch):
    """The app (on an empty Redis) whose status is built from the hand-made snapshot (what collect_status would read)."""
    def fake_collect(client, project_id, settings_, store=None, redis_conn=None, target=0.95):
        if project_id != PROJECT:
            raise UnknownProject(f"project {project_id} does not exist in Label Studio at {LS_URL}")
        return build_status(sdk, ledger_of(snapshot()), store=store, redis_conn=redis_conn, target=target,
                            truth=read_truth(settings_.data_home, project_id))

    monkeypatch.setattr(dashboard, "collect_status", fake_collect)
    monkeypatch.setattr(dashboard, "connect", lambda *a, **k: sdk)
    return create_app(settings).test_client()


def expected(target: float = 0.95) -> dict:
    """scoring.estimate called by hand on the snapshot's arrays (rows in task order, the audit's task as a row,
    wrong_prob = 1 - p[label] and initial_wrong_prob = 1 - p[initial label] of the ranking, as the simulation
    passes them): what the status must show."""
    snap = snapshot()
    estimate = estimate_accuracy(counts=snap.counts, initial_labels=snap.initial_counts.argmax(axis=1),
                                 touched_seq=np.array([SEQ.get(t, -1) for t in TASKS]),
                                 audits=[replace(AUDIT_12, task=TASKS.index(12))],
                                 wrong_prob=1 - np.array(P_LABEL), initial_wrong_prob=1 - np.array(P_INITIAL),
                                 confidence=0.9)
    low, high = wilson_interval(1, 3)  # one label changed in three re-annotations
    forecast = reannotations_to_reach(estimate, target, reannotations_per_fix=3.0, fix_rate_low=low,
                                      fix_rate_high=high, remaining_budget=BUDGET - 3 - 2)
    return {"accuracy": estimate.accuracy, "low": estimate.low, "high": estimate.high, "wrong": estimate.wrong_left,
            "forecast": forecast.reannotations, "suggested": 3 + forecast.reannotations, "basis": estimate.basis}


def text_of(html: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', html, re.S)
    assert match, f"no #{element_id} on the page"
    return match.group(1).strip()


def test_status_adds_the_estimate_and_the_job_queue(sdk, store, conn):
    publish_ranking(store)
    status = build_status(sdk, ledger_of(snapshot()), store=store, redis_conn=conn, target=0.95)
    # task 13 is open on one label: it holds two opinions (one slot open in Label Studio)
    assert status["budget"] == {"total": BUDGET, "spent": 3, "committed": 1, "held": 2, "remaining": 5,
                                "exhausted": False}
    assert (status["tasks"]["settled"], status["tasks"]["labels_changed"]) == (2, 1)
    estimate, want = status["estimate"], expected()
    assert estimate["available"] and math.isclose(estimate["accuracy"], round(want["accuracy"], 4))
    assert estimate["accuracy_interval"] == [round(want["low"], 4), round(want["high"], 4)]
    assert estimate["labels_wrong"] == want["wrong"] and isinstance(estimate["labels_wrong"], int)
    assert estimate["basis"] == want["basis"] and estimate["basis"].startswith("from 1 audited and 1 cleaned tasks")
    assert estimate["forecast_spend"] == want["forecast"]
    assert estimate["suggested_budget"] == want["suggested"] == 3 + estimate["forecast_spend"], "one source: they agree"
    assert status["model"]["version"] == store.current_version(PROJECT) and status["model"]["selector"] == "linear"
    assert set(status["jobs"]["queues"]) == set(q.QUEUES)
    assert status["queue"][0]["url"] == f"{LS_URL}/projects/{PROJECT}/data?task=13"
    json.dumps(status)  # plain JSON data all the way down


def test_no_estimate_is_shown_before_an_audit_draw_settled(sdk, store):
    publish_ranking(store)
    untouched = snapshot()
    for task in untouched.tasks:
        task.annotations[:] = task.annotations[:1]
        task.overlap, task.seq, task.audit = 1, None, None
    untouched.counts[:] = untouched.initial_counts
    estimate = build_status(sdk, ledger_of(untouched), store=store)["estimate"]
    assert estimate["available"] is False and "no audit draw yet" in estimate["reason"]
    assert "accuracy" not in estimate and "suggested_budget" not in estimate
    waiting = snapshot()
    waiting.tasks[1].annotations[:] = waiting.tasks[1].annotations[:1]  # the audit draw opened, its opinion not in
    waiting.counts[1] = waiting.initial_counts[1]
    estimate = build_status(sdk, ledger_of(waiting), store=store)["estimate"]
    assert estimate["available"] is False and "no audit draw has settled yet (1 open)" in estimate["reason"]
    off = build_status(sdk, ledger_of(untouched), store=store, audit_share=0.0)["estimate"]
    assert "ALC_AUDIT_SHARE=0" in off["reason"]


def test_dashboard_shows_the_key_numbers_and_links(served, store):
    publish_ranking(store)
    response = served.get(f"/dashboard?project={PROJECT}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert text_of(html, "budget-total") == str(BUDGET)
    assert text_of(html, "budget-spent") == "3"
    assert text_of(html, "budget-committed") == "2"
    assert text_of(html, "budget-remaining") == "5"
    assert text_of(html, "labels-changed") == "1"
    assert text_of(html, "tasks-settled") == "2"
    assert text_of(html, "accuracy") == f"{100 * expected()['accuracy']:.1f}%"
    assert text_of(html, "labels-wrong") == str(expected()["wrong"]), "a count is an integer"
    assert text_of(html, "forecast") == str(expected()["forecast"])
    assert text_of(html, "suggested-budget") == str(expected()["suggested"])
    assert f"alc connect --project {PROJECT} --budget {expected()['suggested']}" in html
    assert html.count("<svg") == 3  # burn-down, corrected vs spend, accuracy
    assert f'href="{LS_URL}/projects/{PROJECT}/data?task=13"' in html  # the queue links into Label Studio
    assert f'href="{LS_URL}/projects/{PROJECT}/data?task=11"' in html  # so do the recent changes
    assert "bob@example.com" in html and "alc-fast" in html


def test_api_status_is_the_same_as_json(served, store):
    publish_ranking(store)
    status = served.get(f"/api/status?project={PROJECT}&target=0.9").json
    assert status["budget"]["spent"] == 3 and status["estimate"]["target"] == 0.9
    assert [c["task_id"] for c in status["recent_changes"]] == [11]


def test_reloads_share_one_read_of_label_studio(served, monkeypatch):
    reads = []
    real = dashboard.collect_status
    monkeypatch.setattr(dashboard, "collect_status", lambda *a, **k: reads.append(a[1]) or real(*a, **k))
    for _ in range(3):
        assert served.get(f"/dashboard?project={PROJECT}").status_code == 200
    assert served.get(f"/api/status?project={PROJECT}").json["budget"]["spent"] == 3
    assert reads == [PROJECT]  # within CACHE_SECONDS the page and the JSON reuse the first read
    served.get(f"/api/status?project={PROJECT}&target=0.9")
    assert reads == [PROJECT, PROJECT]  # another target is another status


def test_without_a_model_the_audit_still_gives_the_estimate_and_says_so(served):
    response = served.get(f"/dashboard?project={PROJECT}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "none trained yet" in html and "no model yet" in text_of(html, "estimate-basis")
    assert text_of(html, "budget-spent") == "3"


def test_before_an_audit_settled_the_page_says_why_there_is_no_number(settings, sdk, monkeypatch):
    untouched = snapshot()
    for task in untouched.tasks:
        task.seq, task.audit = None, None
    monkeypatch.setattr(dashboard, "collect_status", lambda *a, **k: build_status(sdk, ledger_of(untouched)))
    monkeypatch.setattr(dashboard, "connect", lambda *a, **k: sdk)
    html = create_app(settings).test_client().get(f"/dashboard?project={PROJECT}").get_data(as_text=True)
    assert text_of(html, "accuracy") == "-" and "No accuracy estimate yet: no audit draw" in html


@pytest.mark.parametrize("query, code, message", [
    ("project=abc", 400, "positive integer"),
    ("project=7&target=2", 400, "between 0 and 1"),
    ("project=99", 404, "project 99 does not exist"),
    ("", 400, "which project?"),
    ("project=²", 400, "positive integer"),  # str.isdigit says yes, int() says no
    ("project=" + "9" * 5000, 400, "positive integer"),
    ("project=7&target=%ED%A0%80", 400, "between 0 and 1"),  # a lone surrogate, UTF-8-encoded
])
def test_bad_requests_get_a_clear_page_and_json(served, query, code, message):
    page = served.get(f"/dashboard?{query}")
    assert page.status_code == code and message in page.get_data(as_text=True)
    api = served.get(f"/api/status?{query}")
    assert api.status_code == code and message in api.json["error"]


def test_label_studio_down_or_not_configured_is_said_not_a_500(settings, monkeypatch):
    def down(*args, **kwargs):
        raise LabelStudioUnavailable("Label Studio did not answer GET http://127.0.0.1:9/api/current-user/whoami")

    monkeypatch.setattr(dashboard, "connect", down)
    page = create_app(settings).test_client().get(f"/dashboard?project={PROJECT}")
    assert page.status_code == 502 and "Label Studio could not be read" in page.get_data(as_text=True)
    unconfigured = settings.model_copy(update={"label_studio_url": None})
    api = create_app(unconfigured).test_client().get(f"/api/status?project={PROJECT}")
    assert api.status_code == 503 and "LABEL_STUDIO_URL" in api.json["error"]


def test_label_studio_really_down(settings):
    dead = settings.model_copy(update={"label_studio_url": "http://127.0.0.1:9"})  # nothing listens on port 9
    page = create_app(dead).test_client().get(f"/dashboard?project={PROJECT}")
    assert page.status_code == 502 and "127.0.0.1:9" in page.get_data(as_text=True)


def failing_job() -> None:
    raise RuntimeError("the selector ran out of memory")


def test_alc_status_prints_the_tables_and_the_failed_jobs(settings, store, sdk, conn, monkeypatch):
    publish_ranking(store)
    Queue(q.TRAIN_QUEUE, connection=conn).enqueue(failing_job, description="retrain project 7")
    SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
    monkeypatch.setattr("backend.settings.load_settings", lambda: settings)
    monkeypatch.setattr("connectors.client.connect", lambda *a, **k: sdk)
    monkeypatch.setattr("connectors.ledger.reconcile", lambda *a, **k: ledger_of(snapshot()))
    runner = CliRunner()
    result = runner.invoke(cli, ["status", "--project", str(PROJECT)], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    out = result.output
    for needle in ("pets", "spent", "3", "remaining", "5", f"{100 * expected()['accuracy']:.1f}%",
                   "from 1 audited and 1 cleaned tasks",
                   "task 13", "retrain project 7", "ran out of memory", "bob@example.com", "labels changed",
                   "estimate basis", "agreement"):
        assert needle in out, needle
    [line] = [line for line in out.splitlines() if "suggested budget" in line]
    assert f"│ {expected()['suggested']} (" in line, line
    as_json = runner.invoke(cli, ["status", "--project", str(PROJECT), "--json"])
    assert as_json.exit_code == 0
    data = json.loads(as_json.output)
    assert data["budget"]["remaining"] == 5 and data["jobs"]["failed_jobs"][0]["description"] == "retrain project 7"


def test_alc_status_without_label_studio_fails_clearly(settings, monkeypatch):
    monkeypatch.setattr("backend.settings.load_settings", lambda: settings.model_copy(update={"label_studio_url": None}))
    result = CliRunner().invoke(cli, ["status", "--project", str(PROJECT)])
    assert result.exit_code == 2 and "LABEL_STUDIO_URL" in result.output


def test_alc_status_without_a_project_shows_the_jobs_and_never_starts_redis(settings, tmp_path, monkeypatch):
    alone = settings.model_copy(update={"redis_url": None, "data_home": tmp_path / "nothing-runs-here"})
    monkeypatch.setattr("backend.settings.load_settings", lambda: alone)
    result = CliRunner().invoke(cli, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "no Redis: REDIS_URL is not set" in result.output
    assert not (tmp_path / "nothing-runs-here" / "redis").exists()


def test_alc_status_without_a_project_lists_queues_and_projects(settings, conn, monkeypatch):
    conn.sadd(q.PROJECTS_KEY, 3, 7)
    monkeypatch.setattr("backend.settings.load_settings", lambda: settings)
    result = CliRunner().invoke(cli, ["status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "alc-train" in result.output and "Projects that sent webhooks here: 3, 7" in result.output


# --- honest estimates, the cleaning view, annotators, the truth where it is known -------------------------


def test_before_any_label_changed_the_forecast_costs_two_per_fix_and_its_upper_end_is_unknown(sdk, store):
    publish_ranking(store)
    unchanged = snapshot()
    task = unchanged.tasks[0]  # task 11: its two re-annotations agree with the initial label now
    for a in task.annotations[1:]:
        object.__setattr__(a, "label", "cat")
    unchanged.counts[0] = [3, 0, 0]
    task.counts = [3, 0, 0]
    e = build_status(sdk, ledger_of(unchanged), store=store, target=0.99)["estimate"]
    assert "2 re-annotations per fix" in e["cost_basis"]
    if e["forecast_spend"]:
        assert e["suggested_budget_range"][1] is None and e["suggested_budget"] == 3 + e["forecast_spend"]


def test_cleaning_view_shows_why_each_open_and_next_task_is_there(sdk, store):
    publish_ranking(store)
    cleaning = build_status(sdk, ledger_of(snapshot()), store=store)["cleaning"]
    assert [c["task_id"] for c in cleaning["open"]] == [13]
    # the ranking's next unsettled tasks, most suspicious first (11 and 12 are settled, 13 is open)
    assert [c["task_id"] for c in cleaning["next"]] == [15, 14, 16]
    first = cleaning["next"][0]
    assert first["label"] == "cat" and first["model_label"] == "cat" and first["p_label"] == 0.6
    assert first["thumbnail"] == f"/dashboard/thumbnail/{PROJECT}/15"
    assert "p = 0.60" in first["why"]


def test_annotators_by_email_with_agreement_with_the_final_majority(sdk, store):
    people = {a["annotator"]: a for a in build_status(sdk, ledger_of(snapshot()), store=store)["annotators"]}
    assert set(people) == {"ann@example.com", "bob@example.com"}
    assert people["ann@example.com"]["annotations"] == 2 and people["ann@example.com"]["agreement_with_final"] == 1.0
    assert people["bob@example.com"]["on_settled_tasks"] == 1


def test_labels_corrected_only_where_the_truth_is_known(served, settings, store):
    from backend.status import write_truth

    publish_ranking(store)
    html = served.get(f"/dashboard?project={PROJECT}").get_data(as_text=True)
    assert 'id="labels-corrected"' not in html and "labels changed" in html
    write_truth(settings.data_home, PROJECT, {11: "bird", 12: "cat", 13: "dog", 14: "bird", 15: "cat", 16: "dog"})
    fresh = create_app(settings).test_client()  # the status cache is per app
    html = fresh.get(f"/dashboard?project={PROJECT}").get_data(as_text=True)
    assert text_of(html, "labels-corrected") == "0"  # task 11 changed cat -> dog, but the truth is bird
    assert "1 broken" not in html and "0 broken" in html
    assert 'id="cleaning-open"' in html and f'src="/dashboard/thumbnail/{PROJECT}/13?size=96"' in html


class _Task:
    def __init__(self, project: int, image: str) -> None:
        self.project, self.data = project, {"image": image}


class _FakeClient:
    """The two Label Studio reads the thumbnail route makes: the task, and its project's label config."""

    def __init__(self, label_config: str) -> None:
        from types import SimpleNamespace

        self.tasks = SimpleNamespace(get=lambda task_id, **_: _Task(PROJECT, f"/data/upload/1/{int(task_id) % 80}.png"))
        self.projects = SimpleNamespace(get=lambda project_id: SimpleNamespace(label_config=label_config))


def test_thumbnails_come_through_the_image_loader_behind_the_same_auth(settings, label_config, monkeypatch):
    from PIL import Image
    import io

    monkeypatch.setattr(dashboard, "connect", lambda *a, **k: _FakeClient(label_config))
    client = create_app(settings).test_client()
    response = client.get(f"/dashboard/thumbnail/{PROJECT}/3?size=48")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert "max-age" in response.headers["Cache-Control"]
    assert Image.open(io.BytesIO(response.data)).size == (32, 32)  # CIFAR images: fitted into 48 px, never enlarged
    assert client.get(f"/dashboard/thumbnail/{PROJECT + 1}/3").status_code == 404  # not that project's task
    assert client.get(f"/dashboard/thumbnail/{PROJECT}/3?size=5000").status_code == 400
    assert client.get(f"/dashboard/thumbnail/{PROJECT}/3?size=²").status_code == 400
    assert client.get(f"/dashboard/thumbnail/{PROJECT}/{'9' * 5000}").status_code == 404
    locked = create_app(settings.model_copy(update={"basic_auth_user": "u", "basic_auth_pass": SecretStr("p")})).test_client()
    assert locked.get(f"/dashboard/thumbnail/{PROJECT}/3").status_code == 401


def test_the_page_reads_the_working_state_without_label_studio(settings, store, conn, sdk, monkeypatch):
    """With a working state in Redis (the pipeline's, contract 5) the status needs no Label Studio read."""
    from backend.status import collect_status
    from backend.working_state import WorkingState
    from connectors.project import ProjectConfig
    from connectors.state import ProjectState

    snap = snapshot()
    snap.config = ProjectConfig(PROJECT, "pets", "<View/>", "label", "image", "image", CLASSES, "annotations",
                                ProjectState(budget=BUDGET), "alc-linear-v1")
    WorkingState(conn, PROJECT).rebuild(snap)
    publish_ranking(store)
    monkeypatch.setattr("connectors.ledger.reconcile", lambda *a, **k: pytest.fail("read Label Studio"))
    status = collect_status(sdk, PROJECT, settings, store=store, redis_conn=conn)
    assert "working state" in status["source"]
    assert status["budget"]["spent"] == 3 and status["tasks"]["settled"] == 2
    assert [c["task_id"] for c in status["cleaning"]["open"]] == [13]


def test_tasks_the_retrain_skipped_are_listed(served, store):
    """Contract 4: the version's meta['skipped'] ({task id: reason}) is shown, task by task."""
    noisiness = -np.log(np.array(P_INITIAL))
    counts = np.eye(3)[[CLASSES.index(label) for label in INITIAL]]
    ranking = Ranking(task_ids=TASKS, class_names=CLASSES, counts=counts, priority=noisiness, noisiness=noisiness,
                      ambiguity=np.zeros(6), scores=-noisiness, predicted=np.zeros(6, dtype=int))
    store.publish(PROJECT, None, ranking, {"selector": "linear", "skipped": {"16": "image request returned HTTP 404"}})
    status = served.get(f"/api/status?project={PROJECT}").json
    assert status["skipped"] == [{"task_id": 16, "reason": "image request returned HTTP 404"}]
    html = served.get(f"/dashboard?project={PROJECT}").get_data(as_text=True)
    assert 'id="skipped"' in html and "image request returned HTTP 404" in html


def test_a_time_that_is_not_iso_is_skipped_by_the_charts_not_a_500():
    """Label Studio's times are data: one that does not parse costs its point on the burn-down, not the page."""
    budget = {"total": 10, "spent": 2, "committed": 1, "held": 2, "remaining": 6, "exhausted": False}
    timeline = [{"time": "2026-01-01T00:00:05Z", "spent": 1, "labels_changed": 0},
                {"time": "2026-01-01T00:335:52Z", "spent": 2, "labels_changed": 1}]
    svg = dashboard.burndown_chart({"budget": budget, "timeline": timeline, "generated_at": "not a time"})
    assert svg.startswith("<svg") or "<svg" in svg[:400]
    assert dashboard._parse_time("2026-01-01T00:335:52Z") is None
    assert dashboard.when("yesterday") == "yesterday"
    assert dashboard.when("2026-01-01T00:00:05Z") == "2026-01-01 00:00:05 UTC"


def test_each_annotator_has_one_name_their_email_even_when_the_record_knew_only_their_id(sdk, store):
    snap = snapshot()
    for task in snap.tasks:  # records made before these users were listed: "user <id>"
        task.annotations[:] = [replace(a, annotator=f"user {a.annotator_id}") if not a.initial else a
                               for a in task.annotations]
    snap.users = {2: "ann@example.com", 3: "bob@example.com"}  # Label Studio's list, read now
    people = {a["annotator"]: a for a in build_status(sdk, ledger_of(snap), store=store)["annotators"]}
    assert set(people) == {"ann@example.com", "bob@example.com"}
    assert people["ann@example.com"]["annotations"] == 2 and people["ann@example.com"]["agreement_with_final"] == 1.0


def test_the_retrain_count_is_the_model_versions_published(conn):
    from backend.status import jobs_status

    conn.sadd(q.PROJECTS_KEY, PROJECT)
    cadence = q.Cadence(10, 30.0, 600, 1)
    for record in ({"model_version": "v1"}, {"model_version": "v2"}, {"skipped": "budget spent or held"}):
        q.finish(conn, PROJECT, "job", 0, cadence, record, follow_up=False)
    assert jobs_status(conn, PROJECT)["project"]["retrains"] == 2


def test_the_why_line_reads_the_rules_normalised_ambiguity_and_the_out_of_fold_p_label(sdk, store):
    """The rules divide entropy by log C (0..1): a task above half of it is ambiguous; p(label) is the ranking's
    own out-of-fold probability, not recomputed from the (normalised) noisiness."""
    noisiness = -np.log(np.array(P_INITIAL)) / np.log(3)
    counts = np.eye(3)[[CLASSES.index(label) for label in INITIAL]]
    ambiguity = np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.9])  # task 16 looks ambiguous
    ranking = Ranking(task_ids=TASKS, class_names=CLASSES, counts=counts, priority=noisiness - ambiguity,
                      noisiness=noisiness, ambiguity=ambiguity, scores=-noisiness, predicted=np.zeros(6, dtype=int),
                      p_label=np.array(P_INITIAL))
    store.publish(PROJECT, None, ranking, {"selector": "linear"})
    cards = {c["task_id"]: c for c in build_status(sdk, ledger_of(snapshot()), store=store)["cleaning"]["next"]}
    assert cards[16]["why"].endswith("the task looks ambiguous to it")
    assert not cards[15]["why"].endswith("ambiguous to it")
    assert cards[15]["p_label"] == P_INITIAL[TASKS.index(15)]
