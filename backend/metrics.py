"""Prometheus metrics (prometheus-client).

Web-process figures (predict and webhook latency, webhooks by outcome) live in this process's registry.
Queue figures (depth, jobs per state, retrains and their durations) are read from Redis at scrape time,
because workers run in other processes, maybe on other machines; jobs write their figures to Redis.

Label values come from fixed sets only (a webhook's action is one of the handled ones or "other"), so
no request can grow /metrics or put text into it that the exposition format cannot carry.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from backend.webhooks import HANDLED

STATS_KEY = "alc:stats"
OTHER_ACTION = "other"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def record_job(conn: redis.Redis, kind: str, outcome: str, seconds: float) -> None:
    """Called by jobs in the worker: one more job of ``kind`` ended with ``outcome`` after ``seconds``."""
    pipe = conn.pipeline()
    pipe.hincrby(STATS_KEY, f"jobs:{kind}:{outcome}", 1)
    pipe.hincrbyfloat(STATS_KEY, f"seconds:{kind}:{outcome}", seconds)
    pipe.execute()


class QueueCollector(Collector):
    """Reads the queue's state from Redis on each scrape; reports redis_up 0 rather than failing."""

    def __init__(self, conn_factory: Callable[[], redis.Redis]) -> None:
        self.conn_factory = conn_factory

    def collect(self) -> Iterable[Any]:
        from backend.queue import queue_status

        up = GaugeMetricFamily("alc_redis_up", "1 if Redis answered this scrape")
        try:
            conn = self.conn_factory()
            status = queue_status(conn, failed_limit=0)
            stats = {k.decode(): float(v) for k, v in conn.hgetall(STATS_KEY).items()}
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("alc_queue_depth", "jobs waiting in each rq queue", labels=["queue"])
        jobs = GaugeMetricFamily("alc_queue_jobs", "jobs per rq registry", labels=["queue", "state"])
        for name, q in status["queues"].items():
            depth.add_metric([name], q["depth"])
            for state in ("scheduled", "started", "failed", "finished"):
                jobs.add_metric([name, state], q[state])
        yield depth
        yield jobs
        workers = GaugeMetricFamily("alc_workers", "rq workers registered")
        workers.add_metric([], len(status["workers"]))
        yield workers
        done = CounterMetricFamily("alc_jobs", "jobs ended, by kind and outcome", labels=["kind", "outcome"])
        seconds = CounterMetricFamily(
            "alc_job_duration_seconds", "total seconds spent in jobs (retrain durations: kind='retrain')",
            labels=["kind", "outcome"],
        )
        for key, value in sorted(stats.items()):
            what, kind, outcome = key.split(":", 2)
            (done if what == "jobs" else seconds).add_metric([kind, outcome], value)
        yield done
        yield seconds
        received = CounterMetricFamily("alc_annotations_received", "annotation events per project", labels=["project"])
        pending = GaugeMetricFamily("alc_annotations_pending", "annotations not yet retrained on", labels=["project"])
        for project, p in status["projects"].items():
            received.add_metric([str(project)], p["annotations_received"])
            pending.add_metric([str(project)], p["new_annotations"])
        yield received
        yield pending


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self, conn_factory: Callable[[], redis.Redis]) -> None:
        self.registry = CollectorRegistry()
        self.predict_latency = Histogram(
            "alc_predict_latency_seconds", "time to answer /predict", registry=self.registry, buckets=LATENCY_BUCKETS
        )
        self.predict_tasks = Counter(
            "alc_predict_tasks", "tasks answered by /predict", ["outcome"], registry=self.registry
        )
        self.webhook_latency = Histogram(
            "alc_webhook_latency_seconds", "time to answer /webhook", registry=self.registry, buckets=LATENCY_BUCKETS
        )
        self.webhooks = Counter(
            "alc_webhooks", "webhooks received, by action and outcome", ["action", "outcome"], registry=self.registry
        )
        self.registry.register(QueueCollector(conn_factory))

    @staticmethod
    def action_label(action: str) -> str:
        """A webhook action as a label value: handled actions by name, everything else 'other'."""
        return action if action in HANDLED else OTHER_ACTION
