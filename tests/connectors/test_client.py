"""The client's faults: Label Studio down, slow, flaky, a bad token, an unknown project."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from connectors.client import connect, get_project
from connectors.errors import LabelStudioAuthError, LabelStudioUnavailable, UnknownProject


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_down_is_retried_with_backoff_then_a_clear_error():
    url = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(LabelStudioUnavailable, match=r"GET .*whoami \(3 attempt\(s\).*Connect"):
        connect(url, "x" * 40, timeout=2, retries=2, backoff=0.2)
    assert time.monotonic() - started >= 0.2 + 0.4  # two backoffs: 0.2 s then 0.4 s


def test_slow_server_times_out_and_is_retried():
    """A server that accepts the connection and never answers: read timeouts, retried, then a clear error."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(LabelStudioUnavailable, match=r"2 attempt\(s\).*ReadTimeout"):
            connect(f"http://127.0.0.1:{server.getsockname()[1]}", "x" * 40, timeout=0.5, retries=1, backoff=0.0)
        assert 1.0 <= time.monotonic() - started < 5
        assert len(held) == 2
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def test_flaky_5xx_is_retried_until_it_answers(fake, client_of):
    pid = fake.add_project("flaky")
    answers = iter([500, 503])
    real = fake.handle

    def flaky(request: httpx.Request) -> httpx.Response:
        code = next(answers, None) if request.url.path.startswith("/api/projects") else None
        return httpx.Response(code, json={}) if code else real(request)

    fake.handle = flaky  # type: ignore[method-assign]
    assert get_project(client_of(fake), pid).title == "flaky"
    assert fake.calls.count(("GET", f"/api/projects/{pid}")) == 1  # the third try reached the real answer


def test_post_is_not_retried_after_a_500(fake, client_of):
    """An import may have happened before the 500: retrying it could import twice."""
    pid = fake.add_project()
    tid = fake.add_task(pid, {"image": "x"}, ["cat"])
    client = client_of(fake, retries=3)
    fake.fail_after[("POST", f"/api/projects/{pid}/import/predictions")] = 0
    with pytest.raises(LabelStudioUnavailable, match="1 attempt"):
        client.projects.import_predictions(pid, request=[{"task": tid, "score": 0.5, "result": [], "model_version": "m"}])
    assert fake.calls.count(("POST", f"/api/projects/{pid}/import/predictions")) == 1


def test_bad_token_says_so_at_once(fake):
    client = None
    with pytest.raises(LabelStudioAuthError, match="refused the API token.*LABEL_STUDIO_API_KEY"):
        client = connect("http://ls.test", "wrong", retries=3, backoff=0.0, transport=fake.transport())
    assert client is None
    assert len(fake.calls) == 1, "a 401 is not retried"


def test_unknown_project(fake, client_of):
    with pytest.raises(UnknownProject, match="no project 77"):
        get_project(client_of(fake), 77)


def test_bad_url_and_missing_token():
    with pytest.raises(ValueError, match="http"):
        connect("localhost:8080", "x")
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_API_KEY"):
        connect("http://localhost:8080", "")


def test_connectors_never_import_torch():
    """connectors/ runs in the web process and light workers: no torch, no scikit-learn."""
    import subprocess
    import sys

    code = ("import sys, connectors.client, connectors.counts, connectors.queue, connectors.ledger, "
            "connectors.export, connectors.setup; print(sorted(m for m in ('torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
