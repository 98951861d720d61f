"""The retraining queue with a real Redis and real rq workers: coalescing, cadence, crash recovery."""

from __future__ import annotations

import multiprocessing
import signal
import time

import psutil
import pytest
import redis
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from backend import jobs
from backend import queue as q
from backend.app import create_app


def annotation_webhook(project: int, task: int, annotation: int, action: str = "ANNOTATION_CREATED") -> dict:
    """The shape Label Studio 1.23 posts (annotation + task + project objects)."""
    return {
        "action": action,
        "annotation": {"id": annotation, "task": task, "project": project, "result": []},
        "task": {"id": task, "project": project, "data": {}},
        "project": {"id": project, "title": f"p{project}"},
    }


def run_burst_worker(conn: redis.Redis, settings) -> None:
    jobs.configure(settings)
    worker = SimpleWorker([Queue(n, connection=conn) for n in q.QUEUES], connection=conn)
    worker.work(burst=True, with_scheduler=True, dequeue_strategy=q.DEQUEUE_STRATEGY)


def scheduled_retrains(conn: redis.Redis) -> list[str]:
    """Scheduled retrain jobs (the periodic reconcile waits in the same registry)."""
    ids = ScheduledJobRegistry(queue=Queue(q.TRAIN_QUEUE, connection=conn)).get_job_ids()
    return [i for i in ids if i.startswith("retrain-")]


def test_burst_of_200_webhooks_gives_one_retrain_per_project_and_counts_every_annotation(settings, fake_ls, conn):
    client = create_app(settings).test_client()
    sent = []
    for i in range(200):
        project = 1 + i % 2
        task = fake_ls.projects[project].task_ids[i % 60]
        response = client.post("/webhook", json=annotation_webhook(project, task, 10_000 + i))
        assert response.status_code == 200, response.json
        sent.append((project, task))

    train = Queue(q.TRAIN_QUEUE, connection=conn)
    assert train.count == 2  # the 50th annotation of each project promoted its scheduled retrain
    assert scheduled_retrains(conn) == []

    run_burst_worker(conn, settings)

    for project in (1, 2):
        records = q.retrain_records(conn, project)
        assert len(records) == 1
        assert records[0]["annotations"] == 100
    status = q.queue_status(conn)
    assert status["projects"][1]["annotations_received"] == 100
    assert status["projects"][2]["new_annotations"] == 0
    assert status["projects"][2]["pending_retrain"] is None
    assert [p["project"] for p in sorted(fake_ls.pushes, key=lambda p: p["project"])] == [1, 2]
    fast = Queue(q.FAST_QUEUE, connection=conn)
    assert fast.finished_job_registry.count == len(sent)  # every annotation reached the per-annotation job
    assert all(v["failed"] == 0 for v in status["queues"].values())


def test_cadence_schedules_then_promotes_at_n(settings, conn):
    cadence = q.Cadence.from_settings(settings.model_copy(update={"retrain_after_annotations": 3}))
    outcomes = []
    for _ in range(4):
        q.record_annotations(conn, 5, 1)
        outcomes.append(q.request_retrain(conn, 5, cadence))
    assert outcomes == ["scheduled", "pending", "promoted", "pending"]
    train = Queue(q.TRAIN_QUEUE, connection=conn)
    assert train.count == 1 and ScheduledJobRegistry(queue=train).count == 0
    assert train.job_ids[0] == conn.get(q.project_key(5, "pending")).decode()


def test_retrain_after_t_seconds_without_reaching_n(settings, fake_ls, conn):
    fast = settings.model_copy(update={"retrain_after_seconds": 1.0})
    cadence = q.Cadence.from_settings(fast)
    q.record_annotations(conn, 1, 2)
    assert q.request_retrain(conn, 1, cadence) == "scheduled"
    run_burst_worker(conn, fast)
    assert q.retrain_records(conn, 1) == []  # not due yet
    time.sleep(1.2)
    run_burst_worker(conn, fast)
    assert [r["annotations"] for r in q.retrain_records(conn, 1)] == [2]


def test_annotations_during_a_retrain_get_one_follow_up(settings, fake_ls, conn, monkeypatch):
    client = create_app(settings).test_client()
    real_train = jobs.train_and_score

    def train_while_annotators_work(s, project_id, *args):
        for i in range(3):  # three annotations arrive while this retrain runs
            task = fake_ls.projects[project_id].task_ids[i]
            assert client.post("/webhook", json=annotation_webhook(project_id, task, 900 + i)).status_code == 200
        return real_train(s, project_id, *args)

    monkeypatch.setattr(jobs, "train_and_score", train_while_annotators_work)
    q.record_annotations(conn, 1, 50)
    q.request_retrain(conn, 1, q.Cadence.from_settings(settings))
    jobs.configure(settings)
    SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert [r["annotations"] for r in q.retrain_records(conn, 1)] == [50]
    assert int(conn.get(q.project_key(1, "new"))) == 3
    pending = conn.get(q.project_key(1, "pending")).decode()
    assert pending in scheduled_retrains(conn)


def test_failed_retrain_retries_with_backoff_then_frees_the_project(settings, fake_ls, conn, monkeypatch):
    monkeypatch.setattr(q, "RETRY_INTERVALS", [0, 0, 0])
    fake_ls.fail()  # Label Studio stays down (every request answers 500)
    q.record_annotations(conn, 1, 1)
    q.request_retrain(conn, 1, q.Cadence.from_settings(settings), force=True)
    run_burst_worker(conn, settings)
    train = Queue(q.TRAIN_QUEUE, connection=conn)
    failed = FailedJobRegistry(queue=train)
    assert failed.count == 1
    # first try plus every rq retry, each the client's first request with its own 3 retries
    assert fake_ls.ls.calls.count(("GET", "/api/projects/1")) == (settings.job_retries + 1) * 4
    assert conn.get(q.project_key(1, "pending")) is None  # the next annotation can schedule again
    assert int(conn.get(q.project_key(1, "new"))) == 1  # nothing forgotten
    status = q.queue_status(conn)
    assert status["failed_jobs"][0]["error"].startswith("connectors.errors.LabelStudioUnavailable")
    # Label Studio is back: the next request retrains on everything
    fake_ls.recover()
    q.request_retrain(conn, 1, q.Cadence.from_settings(settings), force=True)
    run_burst_worker(conn, settings)
    assert [r["annotations"] for r in q.retrain_records(conn, 1)] == [1]


def _worker_process(redis_url: str, settings) -> None:
    jobs.configure(settings)
    conn = redis.Redis.from_url(redis_url)
    Worker([Queue(n, connection=conn) for n in q.QUEUES], connection=conn).work(logging_level="WARNING")


def test_killing_the_worker_mid_job_loses_nothing(settings, fake_ls, conn, monkeypatch):
    settings = settings.model_copy(update={"selector": "random", "selector_options": {}})
    monkeypatch.setattr(q, "RETRY_INTERVALS", [1, 1])
    real_snapshot = jobs.training_snapshot

    def slow_first_read(state):
        r = redis.Redis.from_url(settings.redis_url)
        if r.incr("test:reads") == 1:
            r.set("test:started", 1)
            time.sleep(120)  # killed here
        return real_snapshot(state)

    monkeypatch.setattr(jobs, "training_snapshot", slow_first_read)
    q.record_annotations(conn, 1, 7)
    assert q.request_retrain(conn, 1, q.Cadence.from_settings(settings), force=True) == "queued"
    job_id = conn.get(q.project_key(1, "pending")).decode()

    process = multiprocessing.get_context("fork").Process(target=_worker_process, args=(settings.redis_url, settings))
    process.start()
    deadline = time.monotonic() + 30
    while not conn.get("test:started"):
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.05)
    # the machine dies: the worker and its work horse (rq puts the horse in its own process group)
    for victim in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]:
        victim.send_signal(signal.SIGKILL)
    process.join(10)
    assert not process.is_alive()

    train = Queue(q.TRAIN_QUEUE, connection=conn)
    started = StartedJobRegistry(queue=train)
    assert [e.decode().split(":")[0] for e in conn.zrange(started.key, 0, -1)] == [job_id]
    assert Job.fetch(job_id, connection=conn).get_status() == "started"
    # rq's maintenance treats a job whose heartbeat expired (job monitoring interval + 60 s) as abandoned
    # and retries it; run that clean-up as it will run then, rather than waiting 90 s.
    started.cleanup(timestamp=time.time() + 3600)
    assert job_id in scheduled_retrains(conn)
    time.sleep(1.1)
    run_burst_worker(conn, settings)

    assert int(conn.get("test:reads")) == 2  # the job ran again
    records = q.retrain_records(conn, 1)
    assert [(r["job_id"], r["annotations"]) for r in records] == [(job_id, 7)]
    assert conn.get(q.project_key(1, "pending")) is None
    assert FailedJobRegistry(queue=train).count == 0


@pytest.mark.parametrize("action", ["START_TRAINING", "PROJECT_UPDATED"])
def test_project_level_webhooks(settings, fake_ls, conn, action):
    client = create_app(settings).test_client()
    body = {"action": action, "project": {"id": 1, "label_config": "<View/>"}}
    response = client.post("/webhook", json=body)
    assert response.status_code == 200
    if action == "START_TRAINING":
        assert response.json["retrain"] == "queued"
        return
    # no model yet: nothing known to compare with, so no retrain (our own model_version switches fire this too)
    assert response.json["retrain"] == "unchanged"
    conn.set(q.project_key(1, "config"), "something-else")
    assert client.post("/webhook", json=body).json["retrain"] == "queued"


def test_a_job_waiting_for_its_retry_keeps_its_backoff(settings, fake_ls, conn):
    fake_ls.fail(after=0)
    cadence = q.Cadence.from_settings(settings)
    assert q.request_retrain(conn, 1, cadence, force=True) == "queued"
    jobs.configure(settings)
    SimpleWorker([Queue(q.TRAIN_QUEUE, connection=conn)], connection=conn).work(burst=True)
    train = Queue(q.TRAIN_QUEUE, connection=conn)
    assert len(scheduled_retrains(conn)) == 1  # retry in 5 s
    assert q.request_retrain(conn, 1, cadence, force=True) == "pending"  # e.g. Label Studio calling /setup again
    assert train.count == 0 and len(scheduled_retrains(conn)) == 1


def test_a_permanent_error_is_not_retried(settings, fake_ls, conn):
    """A project Label Studio does not know (its 404): failed at once, the project freed, no backoff wasted."""
    cadence = q.Cadence.from_settings(settings)
    q.request_retrain(conn, 404, cadence, force=True)
    run_burst_worker(conn, settings)
    train = Queue(q.TRAIN_QUEUE, connection=conn)
    assert FailedJobRegistry(queue=train).count == 1
    assert scheduled_retrains(conn) == []
    assert conn.get(q.project_key(404, "pending")) is None
    assert fake_ls.ls.calls.count(("GET", "/api/projects/404")) == 1  # neither rq nor the client retried it


def test_a_burst_of_annotations_does_not_starve_a_due_retrain(settings, fake_ls, conn):
    """300 per-annotation jobs queued ahead of a due retrain: the worker takes the queues in turn."""
    cadence = q.Cadence.from_settings(settings)
    project = fake_ls.projects[1]
    for i in range(300):
        q.enqueue_annotation_job(conn, 1, project.task_ids[i % 60], cadence)
    q.record_annotations(conn, 1, 300)
    assert q.request_retrain(conn, 1, cadence) == "queued"
    started = time.perf_counter()
    run_burst_worker(conn, settings)
    seconds = time.perf_counter() - started
    [record] = q.retrain_records(conn, 1)
    fast = Queue(q.FAST_QUEUE, connection=conn)
    ended = sorted(Job.fetch(j, connection=conn).ended_at for j in fast.finished_job_registry.get_job_ids())
    before_retrain = sum(1 for t in ended if t.timestamp() < record["finished_at"] - record["seconds"])
    print(f"300 annotation jobs + 1 retrain on one worker: {seconds:.1f} s; {before_retrain} annotation job(s) "
          "ran before the retrain")
    assert len(ended) == 300 and before_retrain <= 2
