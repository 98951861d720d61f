"""The HTTP API: protocol answers, bad input (4xx or per-task errors, never a 500), auth, Redis down, metrics."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
import redis
from rq import Queue, SimpleWorker

from backend import jobs
from backend import queue as q
from backend.app import SECRET_HEADER, UNTRAINED, create_app
from backend.queue import EmbeddedRedis
from backend.protocol import score_from_priority

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image">' + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>"
)


@pytest.fixture(autouse=True)
def same_config_as_fixtures(label_config):
    assert label_config == LABEL_CONFIG


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


@pytest.fixture
def trained(settings, fake_ls, conn):
    """Project 1 with a published model (one real retrain of the linear selector)."""
    q.request_retrain(conn, 1, q.Cadence.from_settings(settings), force=True)
    jobs.configure(settings)
    SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert len(fake_ls.pushes) == 1
    return fake_ls


def task(task_id: int, image: str | None = "/data/upload/1/0.png", labels: list[str] = ("cat",)) -> dict:
    data = {"image": image} if image is not None else {}
    annotations = [
        {"id": 1, "result": [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [lab]}}]}
        for lab in labels
    ]
    return {"id": task_id, "data": data, "annotations": annotations, "project": 1}


def predict(client, tasks, project="1.1700000000", config=LABEL_CONFIG):
    return client.post("/predict", json={"tasks": tasks, "project": project, "label_config": config})


def test_health_and_setup(client, conn):
    health = client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "UP" and health.json["redis"] == "up"
    setup = client.post("/setup", json={"project": "1.1700000000", "schema": LABEL_CONFIG})
    assert setup.json == {"model_version": UNTRAINED}
    assert Queue(q.TRAIN_QUEUE, connection=conn).count == 1  # first contact queues the first training


def test_predict_serves_the_ranking_lowest_score_first(client, trained, settings):
    project = trained.projects[1]
    response = predict(client, [task(t) for t in project.task_ids])
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == len(project.task_ids)
    version = results[0]["model_version"]
    assert version == client.post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG}).json["model_version"]
    priorities = np.array([r["explanation"]["priority"] for r in results])
    scores = np.array([r["score"] for r in results])
    assert np.all((scores > 0) & (scores < 1))
    # lowest score <=> highest priority, and the order equals the order pushed to Label Studio
    assert np.argmin(scores) == np.argmax(priorities)
    window = trained.pushes[0]["window"]
    audits = [t for t in window if "alc_audit" in trained.ls.tasks[t]["data"]]  # drawn at random, served first
    ranked = [project.task_ids[i] for i in np.argsort(scores, kind="stable") if project.task_ids[i] not in audits]
    assert audits + ranked[: settings.window - len(audits)] == window
    first = results[0]
    assert first["result"][0]["from_name"] == "label" and first["result"][0]["value"]["choices"][0] in CLASSES
    assert set(first["explanation"]) >= {"priority", "noisiness", "ambiguity", "label_counts", "selector_version"}
    initial = CLASSES[int(np.argmax(project.counts[0]))]
    assert first["explanation"]["label_counts"] == {initial: 1}
    assert first["score"] == pytest.approx(score_from_priority(first["explanation"]["priority"]))


def test_predict_scores_new_tasks_live_and_reports_per_task_errors(client, trained, image_server):
    _, handler = image_server
    response = predict(
        client,
        [
            task(1, "/data/upload/1/3.png", ["dog", "dog"]),  # new task: scored by the serving selector
            task(2, None),  # no image
            task(3, "/data/upload/1/9999.png"),  # image does not load (404)
            task(4, "/data/upload/1/3.png", ["unicorn"]),  # label outside the config's classes
            task(5, "/data/upload/1/3.png", []),  # no label to check
            {"no": "id"},
            task(6, "file:///etc/passwd"),
            task(7, "http://169.254.169.254/latest/meta-data"),
        ],
    )
    assert response.status_code == 200
    r = response.json["results"]
    assert len(r) == 8
    assert r[0]["explanation"]["label_counts"] == {"dog": 2} and 0 < r[0]["score"] < 1
    assert "no image" in r[1]["error"]
    assert "HTTP 404" in r[2]["error"]
    assert "'unicorn' is not one of the config's classes" in r[3]["error"]
    assert "no label" in r[4]["error"]
    assert "integer 'id'" in r[5]["error"]
    assert "scheme 'file'" in r[6]["error"]
    assert "not on ALC_IMAGE_ALLOWED_HOSTS" in r[7]["error"]
    assert all("result" not in x for x in r[1:])  # Label Studio skips entries without 'result'
    assert not any("169.254" in seen["path"] for seen in handler.requests_seen)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "JSON object"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"tasks": "x", "project": "1.1", "label_config": "<View/>"}', 400, "'tasks' must be a list"),
        (b'{"tasks": [], "project": "abc", "label_config": "<View/>"}', 400, "bad project"),
        (b'{"tasks": [], "project": "1.1", "label_config": "<View><Image name=\\"i\\" value=\\"$i\\"/></View>"}', 422, "no <Choices>"),
        (b'{"tasks": [], "project": "1.1", "label_config": "<View><broken"}', 422, "does not parse"),
        (b'{"tasks": [], "project": "1.1"}', 422, "label_config is missing"),
        (b'{"tasks": [], "project": "77.1", "label_config": "LABEL"}', 404, "no model for project 77"),
    ],
)
def test_predict_bad_input_is_a_4xx_with_a_message(client, body, status, message):
    response = client.post("/predict", data=body.replace(b"LABEL", LABEL_CONFIG.replace('"', '\\"').encode()), content_type="application/json")
    assert response.status_code == status
    assert message in response.json["error"]


def test_predict_with_changed_classes_is_a_conflict(client, trained, conn):
    config = LABEL_CONFIG.replace('<Choice value="truck"/>', "")
    response = predict(client, [task(1000)], config=config)
    assert response.status_code == 409 and "differ" in response.json["error"]
    assert conn.get(q.project_key(1, "pending")) is not None  # the retrain on the new classes is queued


@pytest.mark.parametrize(
    "body, message",
    [
        ({"no": "action"}, "no 'action'"),
        ({"action": "ANNOTATION_CREATED", "project": {"id": 1}}, "without an 'annotation'"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1}, "project": {"id": 1}}, "no task id"),
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": 3}}, "names no project"),
        ({"action": "ANNOTATIONS_DELETED", "project": {"id": 1}}, "'annotations' list"),
        ({"action": "START_TRAINING", "project": {"id": "x"}}, "bad project"),
    ],
)
def test_webhook_bad_input_is_a_400_and_queues_nothing(client, conn, body, message):
    response = client.post("/webhook", json=body)
    assert response.status_code == 400 and message in response.json["error"]
    assert all(Queue(n, connection=conn).count == 0 for n in q.QUEUES)


def test_webhook_ignores_actions_it_does_not_need(client, conn):
    response = client.post("/webhook", json={"action": "TASKS_CREATED", "tasks": [{"id": 1}]})
    assert response.status_code == 200 and response.json["status"] == "ignored"


def test_annotations_deleted_counts_and_queues_a_reconcile(client, conn):
    body = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 4}, {"id": 5}], "project": {"id": 3}}
    assert client.post("/webhook", json=body).json["retrain"] == "scheduled"
    assert int(conn.get(q.project_key(3, "new"))) == 2


def test_redis_down_webhook_answers_503_fast_and_the_next_sync_recovers(settings, fake_ls, tmp_path):
    flaky = EmbeddedRedis(tmp_path / "flaky")
    settings = settings.model_copy(update={"redis_url": flaky.start()})
    client = create_app(settings).test_client()
    flaky.stop()
    project = fake_ls.projects[1]
    started = time.perf_counter()
    for i in range(5):  # annotators keep working: Label Studio stores the annotations, our webhook fails
        project.add_annotation(project.task_ids[i], 3)
        body = {"action": "ANNOTATION_CREATED", "annotation": {"id": i, "task": project.task_ids[i]}, "project": {"id": 1}}
        response = client.post("/webhook", json=body)
        assert response.status_code == 503 and "Redis" in response.json["error"]
    assert (time.perf_counter() - started) / 5 < 0.5
    assert client.get("/health").json["redis"] == "down"
    assert b"alc_redis_up 0.0" in client.get("/metrics").data

    # Redis is back: the next webhook, of any project, also queues the resync of project 1 from Label Studio
    flaky.start()
    try:
        body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 99, "task": 2000}, "project": {"id": 2}}
        assert client.post("/webhook", json=body).status_code == 200
        conn = redis.Redis.from_url(settings.redis_url)
        assert conn.get(q.project_key(1, "pending")) is not None
        jobs.configure(settings)
        SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
        served = predict(client, [task(t) for t in project.task_ids[:5]]).json["results"]
    finally:
        flaky.stop()
    for result in served:  # each task counts its initial label and the annotation whose webhook failed
        assert sum(result["explanation"]["label_counts"].values()) == 2
        assert result["explanation"]["label_counts"].get("cat", 0) >= 1


@pytest.fixture
def locked(settings):
    secured = settings.model_copy(
        update={"basic_auth_user": "ls", "basic_auth_pass": _secret("pw"), "webhook_secret": _secret("hook")}
    )
    return create_app(secured).test_client()


def _secret(value: str):
    from pydantic import SecretStr

    return SecretStr(value)


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_on_every_route_but_health(locked):
    assert locked.get("/health").status_code == 200
    for method, path in [("post", "/setup"), ("post", "/predict"), ("get", "/metrics"), ("post", "/train")]:
        response = getattr(locked, method)(path, json={})
        assert response.status_code == 401, path
        assert "Basic" in response.headers["WWW-Authenticate"]
        assert getattr(locked, method)(path, json={}, headers=_basic("ls", "wrong")).status_code == 401
    assert locked.get("/metrics", headers=_basic("ls", "pw")).status_code == 200


def test_webhook_secret_header(locked):
    body = {"action": "START_TRAINING", "project": {"id": 9}}
    assert locked.post("/webhook", json=body).status_code == 401
    assert locked.post("/webhook", json=body, headers={SECRET_HEADER: "nope"}).status_code == 401
    assert locked.post("/webhook", json=body, headers={SECRET_HEADER: "hook"}).status_code == 200


def test_metrics(client, trained):
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    predict(client, [task(1000)])
    text = client.get("/metrics").data.decode()
    for line in [
        'alc_queue_depth{queue="alc-train"} 1.0',
        'alc_jobs_total{kind="retrain",outcome="ok"} 1.0',
        "alc_predict_latency_seconds_count 1.0",
        'alc_webhooks_total{action="START_TRAINING",outcome="queued"} 1.0',
        "alc_redis_up 1.0",
    ]:
        assert line in text, line
    assert 'alc_job_duration_seconds_total{kind="retrain",outcome="ok"}' in text


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"nope", 400, "JSON object"),
        (b'{"project": "x.1", "schema": "LABEL"}', 400, "bad project"),
        (b'{"project": "3.1", "schema": "<View><Text name=\\"t\\" value=\\"$t\\"/></View>"}', 422, "no <Choices>"),
    ],
)
def test_setup_bad_input_is_a_4xx_with_a_message(client, body, status, message):
    data = body.replace(b"LABEL", LABEL_CONFIG.replace('"', '\\"').encode())
    response = client.post("/setup", data=data, content_type="application/json")
    assert response.status_code == status and message in response.json["error"]


def test_train_legacy_call_queues_a_retrain(client, conn):
    response = client.post("/train", json={"project": "4.1700000000", "annotations": [], "label_config": LABEL_CONFIG})
    assert response.status_code == 200 and response.json["retrain"] == "queued"
    assert Queue(q.TRAIN_QUEUE, connection=conn).count == 1


def test_the_dashboard_blueprint_is_served_behind_the_same_auth(locked, client, conn):
    assert locked.get("/api/status").status_code == 401
    assert locked.get("/dashboard").status_code == 401
    response = client.get("/api/status")  # no project has sent anything yet: a 400 that says what to add
    assert response.status_code == 400 and "project" in response.json["error"]


# --- issue 10: closed by default, bounds, malformed input, a torn model, /health -----------------


@pytest.fixture
def published(settings, tiny300):
    """Two versions of project 1 published straight through the model store (no worker needed)."""
    from backend.model_store import ModelStore, Ranking
    from backend.protocol import scores_from_priorities
    from scoring.selectors import LinearSelector

    n = 20
    counts = np.eye(len(CLASSES))[tiny300["labels"][:n].astype(int)]
    selector = LinearSelector(folds=1, image_size=8, max_iter=100).fit(tiny300["images"][:n], counts)
    store = ModelStore(settings.models_path)
    names = []
    for shift in (0.0, 1.0):
        priority = np.linspace(1, -1, n) + shift
        ranking = Ranking(list(range(1000, 1000 + n)), list(CLASSES), counts, priority, priority, priority,
                          scores_from_priorities(priority), counts.argmax(axis=1))
        names.append(store.publish(1, selector, ranking, {"selector": "linear", "rule": "alc"}))
        time.sleep(0.01)
    return names


def test_a_torn_current_version_serves_the_previous_one(client, settings, published):
    current = settings.models_path / "project-1" / "versions" / published[-1] / "ranking.json"
    current.write_bytes(current.read_bytes()[:100])  # a crash mid-write, as far as any reader can tell
    response = predict(client, [task(1000), task(1001), task(5, "/data/upload/1/3.png", ["dog"])])
    assert response.status_code == 200, response.json
    assert response.json["model_version"] == published[0]
    assert all("score" in r for r in response.json["results"])  # the stored ranking and a live score
    assert client.post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG}).json["model_version"] == published[0]


def test_without_credentials_only_this_machine_is_served(client, locked):
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    response = client.post("/train", json={"project": 424242}, environ_base=remote)
    assert response.status_code == 403 and "BASIC_AUTH_USER" in response.json["error"]
    assert client.get("/metrics", environ_base=remote).status_code == 403
    assert client.get("/health", environ_base=remote).status_code in (200, 503)  # health is open
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "::1"}).status_code == 200
    assert locked.get("/metrics", headers=_basic("ls", "pw"), environ_base=remote).status_code == 200


def test_request_bodies_and_predict_batches_are_bounded(settings):
    small = create_app(settings.model_copy(update={"max_request_bytes": 4096, "max_predict_tasks": 3})).test_client()
    response = small.post("/predict", data=b"{" + b" " * 10_000 + b"}", content_type="application/json")
    assert response.status_code == 413 and "ALC_MAX_REQUEST_BYTES" in response.json["error"]
    response = small.post("/webhook", data=b"[" * 5000, content_type="application/json")
    assert response.status_code == 413
    response = predict(small, [task(i) for i in range(4)])
    assert response.status_code == 413 and "ALC_MAX_PREDICT_TASKS" in response.json["error"]


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/predict", b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
        ("/webhook", b'{"action": "START_TRAINING", "project": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "nested"),
        ("/setup", b'{"project": "\\u00b2", "schema": "x"}', 400, "bad project"),
        ("/train", b'{"project": "' + b"7" * 5000 + b'"}', 400, "bad project"),
        ("/train", b'{"project": ' + b"7" * 5000 + b"}", 400, "not JSON"),
        ("/setup", b'{"project": "\\ud800", "schema": "x"}', 400, "bad project"),
        ("/webhook", b'{"action": "\\udfff"}', 200, "ignored"),
        ("/webhook", b'{"action": "ANNOTATION_CREATED", "annotation": {"task": 5}, "project": {"id": "\\ud800"}}', 400, "bad project"),
        ("/predict", b'{"tasks": 5, "project": "1.1", "label_config": "x"}', 400, "must be a list"),
        ("/predict", b"\xff\xfe{}", 400, "not JSON"),
        ("/webhook", b'{"action": "ANNOTATIONS_DELETED", "annotations": 5, "project": 1}', 400, "'annotations' list"),
    ],
)
def test_malformed_input_is_a_4xx_with_a_message(client, path, body, status, message):
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == status, response.data[:300]
    assert message in (response.json.get("error") or response.json.get("status", ""))


def test_a_number_where_a_list_belongs_is_one_task_error(client, published):
    bad = [
        {"id": 7, "data": {"image": "/data/upload/1/1.png"}, "annotations": 5},
        {"id": 8, "data": {"image": "/data/upload/1/1.png"}, "annotations": [{"result": 5}]},
        {"id": 9, "data": {"image": "/data/upload/1/1.png"}, "annotations": [{"result": [{"from_name": "label", "value": []}]}]},
        {"id": 10, "data": {"image": "/data/upload/1/1.png"},
         "annotations": [{"result": [{"from_name": "label", "value": {"choices": [["cat"]]}}]}]},
        {"id": True, "data": {}},
        task(1000),
    ]
    results = predict(client, bad).json["results"]
    assert [("error" in r) for r in results] == [True] * 5 + [False]


def test_metric_labels_come_from_a_fixed_set(client):
    for i in range(200):
        client.post("/webhook", json={"action": f"FORGED_{i}"})
    client.post("/webhook", data=b'{"action": "\\ud800"}', content_type="application/json")
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.data.decode()
    assert 'alc_webhooks_total{action="other",outcome="ignored"} 201.0' in text
    assert "FORGED" not in text and len(response.data) < 20_000


def test_health_degrades_without_a_worker_and_lists_those_seen(settings, conn):
    from rq import Worker

    app = create_app(settings)
    client = app.test_client()
    assert client.get("/health").status_code == 200  # a server that just started: no verdict yet
    app.extensions["alc"].started_at -= 10 * settings.health_worker_timeout
    response = client.get("/health")
    assert response.status_code == 503 and response.json["status"] == "DEGRADED"
    assert any("no worker" in r for r in response.json["reasons"])

    Queue(q.TRAIN_QUEUE, connection=conn).enqueue("backend.jobs.retrain", 1)
    worker = Worker([Queue(n, connection=conn) for n in q.QUEUES], connection=conn, name="seen-1")
    worker.register_birth()
    try:
        response = client.get("/health")
        assert response.status_code == 200, response.json
        assert [w["name"] for w in response.json["workers"]] == ["seen-1"]
        assert response.json["workers"][0]["last_heartbeat_seconds"] < 5
        assert response.json["oldest_queued_seconds"] >= 0
    finally:
        worker.register_death()


def test_health_says_when_the_supervised_worker_restarts(settings, conn):
    import json

    from backend.worker import SUPERVISOR_KEY

    app = create_app(settings)
    app.extensions["alc"].supervisor = "alc-serve-test"
    client = app.test_client()
    conn.set(SUPERVISOR_KEY.format("alc-serve-test"), json.dumps({"state": "restarting", "restarts": 1, "last_exit": -9, "restart_in": 1}))
    response = client.get("/health")
    assert response.status_code == 503 and "restart #1" in " ".join(response.json["reasons"])
    conn.set(SUPERVISOR_KEY.format("alc-serve-test"), json.dumps({"state": "starting", "restarts": 1, "last_exit": -9}))
    assert "being restarted" in " ".join(client.get("/health").json["reasons"])
    conn.set(SUPERVISOR_KEY.format("alc-serve-test"), json.dumps({"state": "running", "restarts": 1, "pid": 1}))
    assert client.get("/health").status_code == 200
    conn.set(SUPERVISOR_KEY.format("alc-serve-test"), json.dumps({"state": "starting", "restarts": 0}))
    assert client.get("/health").status_code == 200  # the first start is no failure


def test_health_is_503_when_redis_is_down(settings, tmp_path):
    flaky = EmbeddedRedis(tmp_path / "flaky-health")
    client = create_app(settings.model_copy(update={"redis_url": flaky.start()})).test_client()
    flaky.stop()
    response = client.get("/health")
    assert response.status_code == 503 and response.json["redis"] == "down"


def test_hostile_image_urls_leave_the_rest_of_the_project_ranked(settings, fake_ls, conn, image_server):
    """The issue's per-image failures (bad IPv6 literal, port 99999, a climbing path, a backslash trick)
    are per-task skips of the retrain; every other task is ranked and served."""
    from backend.working_state import WorkingState, rebuild_from_label_studio

    url, handler = image_server
    ctx = jobs.configure(settings)
    state = WorkingState(conn, 1)
    rebuild_from_label_studio(state, jobs.client(ctx), settings.initial_label_source)
    snapshot = jobs.training_snapshot(state)
    hostile = {0: "http://[::1/x.png", 1: "http://127.0.0.1:99999/x.png", 2: "/data/upload/../../api/projects",
               3: f"http://127.0.0.1:1\\@{url.removeprefix('http://')}/data/upload/1/3.png", 4: "/data/upload/1/%2e%2e/x"}
    for i, ref in hostile.items():
        snapshot.image_refs[i] = ref
    seen = len(handler.requests_seen)
    selector, ranking, meta = jobs.train_and_score(settings, 1, snapshot, ctx.store, ctx.loader)
    bad_ids = {snapshot.task_ids[i] for i in hostile}
    assert set(ranking.task_ids) == set(snapshot.task_ids) - bad_ids
    assert {int(t) for t in meta["skipped"]} == bad_ids
    assert not any("api" in r["path"] or ".." in r["path"] for r in handler.requests_seen[seen:])
    version = ctx.store.publish(1, selector, ranking, meta)
    served = predict(create_app(settings).test_client(), [task(t) for t in ranking.task_ids[:3]]).json
    assert served["model_version"] == version and all("score" in r for r in served["results"])


@pytest.mark.parametrize("task_id", [0, -3, True, 10**30, "7", 1.5])
def test_a_webhook_with_an_impossible_task_id_is_a_400(client, conn, task_id):
    body = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "task": task_id}, "project": {"id": 1}}
    response = client.post("/webhook", json=body)
    assert response.status_code == 400 and "task id" in response.json["error"]
    assert all(Queue(n, connection=conn).count == 0 for n in q.QUEUES)
