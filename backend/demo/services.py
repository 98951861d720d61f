"""The processes `alc demo` brings up on 127.0.0.1, and stops again: Redis, Label Studio, backend, worker.

Every process is started here, owned here, and stopped here with the one set of process helpers of
backend.labelstudio_runtime (spawn, wait_until_up, stop_group: terminate the group, then kill after a grace
period), in reverse order, whatever happened in between (Ctrl-C included). Logs go to
``<home>/logs/<name>.log`` so a failure can be read afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import requests

from backend.labelstudio_runtime import (  # noqa: F401 (free_port, ServiceError re-exported)
    LabelStudioServer,
    ServiceError,
    ensure_installed,
    free_port,
    spawn,
    stop_group,
    wait_until_up,
)
from backend.queue import EmbeddedRedis


@dataclass
class LabelStudioAccount:
    url: str
    email: str
    password: str
    token: str


@dataclass
class Services:
    """The demo's processes; use as a context manager so everything started is stopped."""

    home: Path
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    logs: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        (self.home / "logs").mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        return self.logs.get(name, self.home / "logs" / f"{name}.log")

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        process = spawn(argv, env, self.log_path(name))
        self.processes.append((name, process))
        return process

    def start_redis(self) -> str:
        self.redis = EmbeddedRedis(self.home / "redis-home")
        return self.redis.start()

    def start_label_studio(self, executable: Path | None = None, port: int | None = None,
                           timeout: float = 400.0) -> LabelStudioAccount:
        """Label Studio 1.23.2 headless (backend.labelstudio_runtime); the admin account is kept in its data
        dir, so later runs reuse the migrated database and start in seconds."""
        server = LabelStudioServer(self.home / "label-studio", port=port, executable=executable or ensure_installed(),
                                   start_timeout=timeout)
        self.logs["label-studio"] = server.log_path
        server.start()
        self.processes.append(("label-studio", server.process))
        return LabelStudioAccount(server.url, server.username, server.password, server.token)

    def start_backend(self, port: int, env: dict[str, str], timeout: float = 60.0) -> str:
        argv = [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = self.spawn("backend", argv, env)
        url = f"http://127.0.0.1:{port}"
        wait_until_up(process, lambda: requests.get(f"{url}/health", timeout=2).status_code < 500, "the backend",
                      self.log_path("backend"), timeout, where=url)
        return url

    def start_worker(self, env: dict[str, str], name: str = "worker") -> subprocess.Popen:
        return self.spawn(name, [sys.executable, "-m", "backend.cli", "worker", "--name", f"demo-{name}-{os.getpid()}"], env)

    def stop(self, grace: float = 15.0) -> None:
        """Stop every process started here, newest first, then the embedded Redis."""
        self.stop_processes(grace)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def stop_processes(self, grace: float = 15.0) -> None:
        """Stop every process started here, newest first (Redis stays up)."""
        while self.processes:
            stop_group(self.processes.pop()[1], grace)

    def check_alive(self) -> None:
        """Raise if a service died while the demo runs."""
        for name, process in self.processes:
            if process.poll() is not None:
                raise ServiceError(f"{name} exited with code {process.returncode}; see {self.log_path(name)}")
