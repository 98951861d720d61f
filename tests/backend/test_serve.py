"""`alc serve`: closed by default, and a worker that dies is restarted while /health says so."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import redis
import requests
from typer.testing import CliRunner

from backend.cli import app
from backend.commands.serve import is_loopback
from backend.worker import workers_seen


def test_a_non_loopback_bind_without_credentials_is_refused(tmp_path, monkeypatch):
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALC_DATA_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--port", "1"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "BASIC_AUTH_USER and BASIC_AUTH_PASS" in lines[0] and "0.0.0.0" in lines[0]
    assert not (tmp_path / "redis").exists()  # refused before anything started


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.2", False),
                                            ("example.org", False)])
def test_which_addresses_count_as_loopback(host, loopback):
    assert is_loopback(host) is loopback


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = 90.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_health_says_so_meanwhile(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "MODEL_DIR")}
    env.update({"ALC_DATA_HOME": str(tmp_path), "ALC_PROFILE": "none", "ALC_SELECTOR": "linear"})
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--port", str(port), "--with-worker"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/health"

    def health() -> requests.Response | None:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
        try:
            return requests.get(url, timeout=2)
        except requests.RequestException:
            return None

    try:
        first = _wait("a worker", lambda: (h := health()) is not None and h.status_code == 200 and h.json()["workers"] and h)
        conn = redis.Redis.from_url(f"unix://{_socket(tmp_path)}")
        [worker] = [w for w in _workers(conn)]
        killed_at = time.monotonic()
        os.kill(worker.pid, signal.SIGKILL)
        degraded = _wait("/health to report the restart", lambda: (h := health()) is not None and h.status_code == 503 and h.json())
        assert "restart #1" in " ".join(degraded["reasons"]), degraded  # (a 503 Response is falsy: keep its JSON)
        back = _wait("a new worker", lambda: [w for w in workers_seen(conn) if w["name"] != worker.name])
        restarted_in = time.monotonic() - killed_at
        healthy = _wait("/health to be UP again", lambda: (h := health()) is not None and h.status_code == 200 and h)
        assert healthy.json()["supervisor"]["restarts"] == 1 and healthy.json()["supervisor"]["state"] == "running"
        print(f"worker killed -> new worker registered in {restarted_in:.1f} s ({back[0]['name']}); first {first.json()['workers'][0]['name']}")
        assert restarted_in < 30
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
    assert "restart #1" in (tmp_path / "serve.log").read_text()


def _socket(data_home) -> str:
    from backend.queue import EmbeddedRedis

    return str(EmbeddedRedis(data_home).socket)


def _workers(conn):
    from rq import Worker

    return [w for w in Worker.all(connection=conn) if w.death_date is None]


@pytest.mark.integration  # a real Redis stopped and started again; about 30 s, so not in the unit run
def test_a_worker_that_loses_redis_mid_job_comes_back(tmp_path):
    """rq's worker quits when Redis vanishes under a running job; the supervisor starts it again (with
    backoff while Redis is down) and a worker is registered once Redis is back."""
    from rq import Queue

    from backend.queue import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis-home")
    url = server.start()
    env = {k: v for k, v in os.environ.items() if k not in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS")}
    env.update({"REDIS_URL": url, "ALC_DATA_HOME": str(tmp_path), "ALC_PROFILE": "none"})
    log = open(tmp_path / "worker.log", "w")
    supervisor = subprocess.Popen([sys.executable, "-m", "backend.cli", "worker", "--supervise", "--name", "sup"],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        conn = redis.Redis.from_url(url)
        _wait("the first worker", lambda: [w for w in workers_seen(conn) if w["name"] == "sup-0"], timeout=60)
        job = Queue("alc-train", connection=conn).enqueue("time.sleep", 20, job_timeout=60)
        _wait("the job to start", lambda: job.get_status(refresh=True) == "started", timeout=30)
        server.stop()  # Redis goes away under the running job
        _wait("the worker to quit and be restarted", lambda: "restart #" in (tmp_path / "worker.log").read_text(), timeout=60)
        time.sleep(3)  # restarts fail while Redis is down: backoff
        server.start()
        conn = redis.Redis.from_url(url)
        back = _wait("a worker after Redis came back",
                     lambda: [w for w in workers_seen(conn) if w["name"] != "sup-0"], timeout=90, every=0.5)
        assert back[0]["name"].startswith("sup-")
    finally:
        supervisor.send_signal(signal.SIGTERM)
        try:
            supervisor.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        log.close()
        server.stop()
