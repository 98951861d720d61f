"""One real Label Studio 1.23.2 for the whole test session, on 127.0.0.1.

Installed into its own virtual environment on first use (backend.labelstudio_runtime, the same code
`alc demo` uses) and started headless. The first start on an empty data dir runs ~60-75 s of
migrations; a migrated, never-used data dir is kept as a template under ~/.cache/alc (ALC_LS_TEMPLATE
overrides) and copied for later sessions, which then start in seconds. CI starts from nothing.
If Label Studio cannot be installed or started, every integration test fails with the reason:
integration tests are never skipped. The fixture says on the terminal what it is doing (installing,
copying the template, starting, migrating), so a first run is not minutes of silence.

The browser tests drive a Chromium through Playwright: the ``chromium`` fixture finds one (ALC_CHROMIUM,
Debian's /usr/bin/chromium, one on PATH, or Playwright's own download) or fails saying how to get one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backend.labelstudio_runtime import LABEL_STUDIO_VERSION, LabelStudioServer, create_user, ensure_installed


@dataclass
class Annotator:
    email: str
    password: str
    token: str  # legacy API token: `Authorization: Token <token>`


@dataclass
class LabelStudioSession:
    """A running Label Studio: its URL, the admin's credentials and token, and a way to add annotators."""

    url: str
    email: str
    password: str
    token: str
    data_dir: Path
    annotators: list[Annotator] = field(default_factory=list)

    @property
    def api_key(self) -> str:
        return self.token

    def create_user(self, name: str | None = None, password: str = "annotator-pass-1") -> Annotator:
        """A new annotator account (signed up through Label Studio's sign-up page) with its own token."""
        email = f"{name or 'annotator'}-{uuid.uuid4().hex[:8]}@tests.example"
        annotator = Annotator(email, password, create_user(self.url, email, password))
        self.annotators.append(annotator)
        return annotator


def _template_dir() -> Path:
    default = Path.home() / ".cache" / "alc" / f"ls-{LABEL_STUDIO_VERSION}-migrated-template"
    return Path(os.environ.get("ALC_LS_TEMPLATE") or default)


CHROMIUM_STEPS = ("apt-get install -y chromium (Debian's, as root; what .ci/run does), or "
                  ".venv/bin/python -m playwright install chromium (where its download host is reachable), "
                  "or point ALC_CHROMIUM at a Chromium or Chrome executable")


@pytest.fixture(scope="session")
def chromium() -> str:
    """A Chromium executable for Playwright, or a test failure naming the ways to get one."""
    candidates = [os.environ.get("ALC_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser"), shutil.which("google-chrome")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            own = pw.chromium.executable_path
        if own and os.access(own, os.X_OK):
            return own
    except Exception:
        pass
    pytest.fail(f"no Chromium for the browser tests: {CHROMIUM_STEPS}")


def _on_terminal(config: pytest.Config):
    """Output capture off for a while, so that what is written reaches the terminal now: the fixture's own
    lines and the install's and start's progress (backend.labelstudio_runtime says what it does on stderr)."""
    capture = config.pluginmanager.get_plugin("capturemanager")
    return capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()


def _say(config: pytest.Config, message: str) -> None:
    """A line on the terminal now, even under output capture (the fixture can take minutes)."""
    with _on_terminal(config):
        sys.stderr.write(f"\n[label-studio fixture] {message}\n")
        sys.stderr.flush()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> LabelStudioSession:
    """url, email, password, token (= api_key) of a running Label Studio, plus ``create_user()``."""
    data = tmp_path_factory.mktemp("label-studio-session") / "data"
    template = _template_dir()
    started = time.monotonic()
    _say(pytestconfig, f"checking Label Studio {LABEL_STUDIO_VERSION} (installed on first use, a few minutes)")
    try:
        with _on_terminal(pytestconfig):
            exe = ensure_installed(progress=True)
    except Exception as exc:  # a failed install must fail the tests, with pip's reason
        pytest.fail(f"could not install Label Studio for the integration tests: {exc}")
    fresh = not (template / "account").is_file()
    if not fresh:
        _say(pytestconfig, f"copying the migrated template {template}")
        shutil.copytree(template, data)
    _say(pytestconfig, "starting Label Studio" + (" on an empty data dir: migrations take about a minute" if fresh else ""))
    server = LabelStudioServer(data, executable=exe)
    try:
        with _on_terminal(pytestconfig):
            server.start()
    except Exception as exc:
        pytest.fail(f"Label Studio did not start: {exc}")
    _say(pytestconfig, f"Label Studio up at {server.url} after {time.monotonic() - started:.0f} s (log {server.log_path})")
    try:
        if fresh:  # keep a copy of the migrated, still empty data dir for the next session
            try:
                shutil.copytree(data, template, ignore=shutil.ignore_patterns("*.log", "export", "media"))
            except OSError:
                shutil.rmtree(template, ignore_errors=True)
        yield LabelStudioSession(server.url, server.username, server.password, server.token, data)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def serve_alc():
    """`alc serve --with-worker` on a free loopback port with the environment given, up (Redis too) for the
    block: ``with serve_alc(env, home) as url: ...``; its output goes to ``home/serve.log``."""
    return _serve_alc


@contextlib.contextmanager
def _serve_alc(env: dict[str, str], home: Path):
    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(home / "serve.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--port", str(port), "--with-worker"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        try:
            while True:
                assert process.poll() is None, f"alc serve exited; see {home / 'serve.log'}"
                try:
                    if requests.get(f"{url}/health", timeout=1).json()["redis"] == "up":
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, f"alc serve not up within 60 s; see {home / 'serve.log'}"
                time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for(what: str, check, timeout: float = 120.0, every: float = 0.5):
    """``check()``'s first truthy value, polling every ``every`` s; an AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
