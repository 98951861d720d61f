"""The rq worker, its supervisor, and what /health says about them.

A worker listens to the per-annotation queue first, then the training queue, with rq's scheduler. Run
one per machine (`alc worker`) against the same Redis to scale out, or one beside the web process
(`alc serve --with-worker`). Abandoned jobs (a worker killed mid-job) are found by rq's maintenance
once their heartbeat expires and rerun, since every job is enqueued with retries.

An rq worker exits when it loses Redis mid-job or is killed; :class:`Supervisor` (`alc worker
--supervise`, which `alc serve --with-worker` runs) starts it again with backoff and reports its state
in Redis, where /health reads it. Workers heartbeat at least every WORKER_TTL - 15 s, so /health can
tell a live worker from a missing one.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timezone
from typing import Any

import redis
from rq import Queue, Worker

from backend import queue as q
from backend.settings import Settings

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL = 60  # seconds between rq's registry clean-ups (abandoned-job recovery)
WORKER_TTL = 60  # rq: the worker's key lives WORKER_TTL + 60 s; idle workers heartbeat every WORKER_TTL - 15 s
SUPERVISOR_KEY = "alc:supervisor:{}"
SUPERVISOR_REPORT_EVERY = 5.0  # seconds between the supervisor's reports (their key expires after 6 of them)
BACKOFF = (1, 2, 4, 8, 16, 30)  # seconds before each successive restart; back to the first after a long run
STABLE_AFTER = 60.0  # a worker that ran this long resets the backoff


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work until stopped (or, with ``burst``, until the queues are empty). Returns whether any job ran."""
    from backend import jobs  # the job code (and what it imports) loads in the worker only

    _configure_logging()
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = q.EmbeddedRedis(settings.data_home)
        url = embedded.start()
    try:
        conn = q.connect(url)
        jobs.configure(settings)
        worker = Worker(
            [Queue(n, connection=conn) for n in q.QUEUES],
            connection=conn,
            name=name,
            maintenance_interval=MAINTENANCE_INTERVAL,
            worker_ttl=WORKER_TTL,
        )
        q.schedule_reconcile(conn, settings.reconcile_seconds)  # the periodic resync, if none is scheduled
        return worker.work(burst=burst, with_scheduler=True, logging_level="INFO",
                           dequeue_strategy=q.DEQUEUE_STRATEGY)  # queues in turn: retrains are never starved
    finally:
        if embedded is not None:
            embedded.stop()


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Label Studio request is noise


# --- supervision ---------------------------------------------------------------------------------


class Supervisor:
    """Runs `alc worker` as a child process and starts it again whenever it exits, with backoff.

    Its state ({state: starting | running | restarting, pid, restarts, last_exit, ...}; running once the
    worker has registered with rq) is kept in Redis under
    ``SUPERVISOR_KEY.format(name)`` and refreshed every few seconds, so /health can say that the worker
    is being restarted, or that nobody supervises it any more. SIGTERM / SIGINT stop it: the worker
    gets SIGTERM (rq's warm shutdown: the current job finishes) and is not restarted.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.restarts = 0
        self.last_exit: int | None = None
        self.child: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._conn = q.connect(settings.redis_url, fast_fail=True) if settings.redis_url else None

    @property
    def worker_name(self) -> str:
        """Unique per start: rq refuses a name whose key is still alive (a killed worker's lingers)."""
        return f"{self.name}-{self.restarts}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "backend.cli", "worker", "--name", self.worker_name]

    def run(self) -> None:
        _configure_logging()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        env = {**os.environ, "REDIS_URL": self.settings.redis_url or ""}
        backoff = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self.child = subprocess.Popen(self.command(), env=env)
            code = self._wait_for_child()
            if self._stop.is_set():
                break
            backoff = 0 if time.monotonic() - started >= STABLE_AFTER else min(backoff + 1, len(BACKOFF))
            delay = BACKOFF[max(backoff - 1, 0)]
            log.warning("worker %s exited with code %s after %.0f s; restart #%d in %d s",
                        self.worker_name, code, time.monotonic() - started, self.restarts + 1, delay)
            self.restarts += 1
            self.last_exit = code
            self._report("restarting", restart_in=delay)
            self._stop.wait(delay)
        self._report("stopped")

    def _wait_for_child(self) -> int:
        """Report 'starting' until the worker registered with rq, then 'running'; return its exit code."""
        assert self.child is not None
        state = "starting"
        while True:
            self._report(state, pid=self.child.pid)
            try:
                return self.child.wait(timeout=0.2 if state == "starting" else SUPERVISOR_REPORT_EVERY)
            except subprocess.TimeoutExpired:
                if state == "starting" and self._registered():
                    state = "running"
                    log.info("worker %s is up (pid %d)", self.worker_name, self.child.pid)

    def _registered(self) -> bool:
        try:
            return self._conn is None or bool(self._conn.exists(f"{Worker.redis_worker_namespace_prefix}{self.worker_name}"))
        except redis.RedisError:
            return False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            child.terminate()
            threading.Thread(target=self._kill_if_stuck, args=(child,), daemon=True).start()

    @staticmethod
    def _kill_if_stuck(child: subprocess.Popen, grace: float = 60.0) -> None:
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            child.kill()

    def _report(self, state: str, **details: Any) -> None:
        if self._conn is None:
            return
        record = {"state": state, "restarts": self.restarts, "last_exit": self.last_exit, "at": time.time(), **details}
        try:
            self._conn.set(SUPERVISOR_KEY.format(self.name), json.dumps(record), ex=int(SUPERVISOR_REPORT_EVERY * 6))
        except redis.RedisError:
            pass  # Redis is down: /health says so anyway


# --- what /health reports ------------------------------------------------------------------------


def health_report(conn: redis.Redis, *, timeout: float, started_at: float, supervisor: str | None = None) -> dict:
    """{status: UP | DEGRADED, reasons, redis, workers, oldest_queued_seconds, supervisor}.

    DEGRADED when Redis does not answer, when no worker has heartbeaten for ``timeout`` seconds (counting
    from ``started_at`` for a server that just started), or when the supervised worker is restarting.
    """
    report: dict[str, Any] = {"status": "UP", "reasons": [], "redis": "up", "workers": [],
                              "oldest_queued_seconds": None, "supervisor": None}
    now = time.time()
    try:
        conn.ping()
        report["workers"] = workers_seen(conn, now)
        report["oldest_queued_seconds"] = oldest_queued_seconds(conn, now)
        if supervisor is not None:
            raw = conn.get(SUPERVISOR_KEY.format(supervisor))
            report["supervisor"] = json.loads(raw) if raw else None
    except redis.RedisError as exc:
        report.update(status="DEGRADED", redis="down", reasons=[f"Redis does not answer ({type(exc).__name__})"])
        return report
    reasons = report["reasons"]
    fresh = [w for w in report["workers"] if w["last_heartbeat_seconds"] is not None
             and w["last_heartbeat_seconds"] <= timeout]
    if not fresh and now - started_at > timeout:
        reasons.append(f"no worker has been seen for over {timeout:.0f} s: start one "
                       "(`alc worker`, or `alc serve --with-worker`); webhooks are queued meanwhile")
    sup = report["supervisor"]
    if supervisor is not None:
        if sup is None and now - started_at > SUPERVISOR_REPORT_EVERY * 6:
            reasons.append("the worker supervisor of `alc serve --with-worker` stopped reporting")
        elif sup is not None and sup.get("state") != "running" and sup.get("restarts"):
            reasons.append(f"the worker beside this server exited (code {sup.get('last_exit')}) and is "
                           f"{'being restarted' if sup.get('state') == 'starting' else 'waiting to restart'} "
                           f"(restart #{sup['restarts']})")
    if reasons:
        report["status"] = "DEGRADED"
    return report


def workers_seen(conn: redis.Redis, now: float | None = None) -> list[dict]:
    """rq's worker registry: name, state, queues and seconds since each live worker's last heartbeat."""
    now = time.time() if now is None else now
    seen = []
    for worker in Worker.all(connection=conn):
        if getattr(worker, "death_date", None) is not None:
            continue
        beat = worker.last_heartbeat
        if beat is not None and beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        seen.append({
            "name": worker.name,
            "state": str(worker.get_state()),
            "queues": worker.queue_names(),
            "last_heartbeat_seconds": round(now - beat.timestamp(), 1) if beat is not None else None,
        })
    return seen


def oldest_queued_seconds(conn: redis.Redis, now: float | None = None) -> float | None:
    """How long the oldest job waiting in any queue has waited (None when every queue is empty)."""
    now = time.time() if now is None else now
    oldest = None
    for queue in q.queues(conn).values():
        for job in queue.get_jobs(0, 1):
            if job.enqueued_at is None:
                continue
            at = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=timezone.utc)
            age = now - at.timestamp()
            oldest = age if oldest is None else max(oldest, age)
    return round(oldest, 1) if oldest is not None else None
