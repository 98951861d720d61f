"""The rq worker: listens to the per-annotation queue first, then the training queue, with rq's scheduler.

Run one per machine (`alc worker`) against the same Redis to scale out, or one beside the web process
(`alc serve --with-worker`). Abandoned jobs (a worker killed mid-job) are found by rq's maintenance once
their heartbeat expires and rerun, since every job is enqueued with retries.
"""

from __future__ import annotations

import logging

from rq import Queue, Worker

from backend import jobs
from backend import queue as q
from backend.settings import Settings

MAINTENANCE_INTERVAL = 60  # seconds between rq's registry clean-ups (abandoned-job recovery)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work until stopped (or, with ``burst``, until the queues are empty). Returns whether any job ran."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Label Studio request is noise
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
        )
        return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
    finally:
        if embedded is not None:
            embedded.stop()
