"""`alc demo`'s processes: everything it starts answers, and everything it started is stopped (Ctrl-C too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from backend.demo.services import Services, ServiceError, free_port
from backend.labelstudio_runtime import GUNICORN_VERSION, LABEL_STUDIO_VERSION
from backend.queue import EmbeddedRedis


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by a parent that is itself gone) counts as stopped
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_backend_and_worker_come_up_on_the_embedded_redis_and_all_stop(tmp_path):
    services = Services(tmp_path / "home")
    with services:
        redis_url = services.start_redis()
        env = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x" * 40, "REDIS_URL": redis_url,
               "ALC_DATA_HOME": str(tmp_path / "backend")}
        url = services.start_backend(free_port(), env)
        worker = services.start_worker(env)
        health = requests.get(f"{url}/health", timeout=5).json()
        assert health["status"] == "UP" and health["redis"] == "up"
        services.check_alive()
        pids = [p.pid for _, p in services.processes]
        socket = services.redis.socket
        assert worker.poll() is None and socket.exists()
    assert services.processes == [] and services.redis is None
    assert not any(alive(pid) for pid in pids)
    assert not socket.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=2)


def test_a_dead_service_is_reported_with_its_log(tmp_path):
    with Services(tmp_path) as services:
        services.spawn("broken", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], {})
        time.sleep(1.0)
        with pytest.raises(ServiceError, match=r"broken exited with code 3; see .*broken\.log"):
            services.check_alive()
        assert "boom" in services.log_path("broken").read_text()


def test_ctrl_c_stops_everything_the_demo_started(tmp_path):
    """A stand-in label-studio that never answers: the demo waits for it; Ctrl-C must stop it and Redis."""
    venv = tmp_path / "fake-ls"
    (venv / "bin").mkdir(parents=True)
    pid_file = tmp_path / "ls.pid"
    exe = venv / "bin" / "label-studio"
    exe.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 300\n")
    python = venv / "bin" / "python"  # answers the runtime's installed-versions check
    python.write_text(f"#!/bin/sh\necho label-studio {LABEL_STUDIO_VERSION}; echo gunicorn {GUNICORN_VERSION}\n")
    for script in (exe, python):
        script.chmod(0o755)
    home = tmp_path / "home"
    demo = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "demo", "--headless", "--home", str(home), "--ls-port", "0", "--port", "0"],
        env={**os.environ, "ALC_LS_VENV": str(venv)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid_file.exists(), demo.stdout.read().decode() if demo.poll() is not None else "label-studio not started"
        time.sleep(0.5)
        ls_pid = int(pid_file.read_text())
        redis_socket = EmbeddedRedis(home / "redis-home").socket
        assert alive(ls_pid) and redis_socket.exists()
        demo.send_signal(signal.SIGINT)
        demo.wait(30)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert not alive(ls_pid)
    assert not redis_socket.exists()
    assert "stopping" in demo.stdout.read().decode()
