"""Label Studio 1.23.2 in its own virtual environment, started headless on 127.0.0.1.

Label Studio pins redis and rq versions our own environment cannot share, so it lives in a venv of its
own (``ALC_LS_VENV``, default ``~/.cache/alc/label-studio-1.23.2``), installed on first use and reused.
:class:`LabelStudioServer` runs one server on a data directory with an admin account whose legacy
API token we choose (40 hex), logs to ``<data_dir>/label-studio.log``, and stops its whole process group.
``workers=1`` (the default) is ``label-studio start``: Django's development server, one process. With
``workers=N`` Label Studio is served as its Docker image serves it (uwsgi, 4 processes by default): N
gunicorn worker processes on the same data dir, after one ``label-studio start`` when the dir is new
(it migrates the database and makes the admin account).
Used by `alc demo` and the integration tests. The process helpers (spawn, wait_until_up, stop_group) are the
one way the demo starts and stops every process of its own too (backend.demo.services).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import requests

LABEL_STUDIO_VERSION = "1.23.2"
GUNICORN_VERSION = "27.0.1"  # installed beside it: serves Label Studio with several processes (``workers``)
REQUIREMENTS = {"label-studio": LABEL_STUDIO_VERSION, "gunicorn": GUNICORN_VERSION}


class ServiceError(RuntimeError):
    """A process did not come up (or died); the message names its log file."""


class LabelStudioRuntimeError(ServiceError):
    """Label Studio could not be installed or started; the message says why and where the log is."""


# --- processes: one way to start, wait for and stop them (Label Studio here, the demo's others too) ---------


PREDICTIONS_IMPORT_FLAG = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start a process in its own session (Ctrl-C reaches us first, and we stop it in order), logging to a file."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_until_up(process: subprocess.Popen | None, ready, what: str, log_path: Path, timeout: float,
                  error: type[ServiceError] = ServiceError, where: str = "") -> None:
    """Poll ``ready()`` (connection errors count as not yet) until it is true, the process dies, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise error(f"{what} exited with code {process.returncode}; see {log_path}")
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise error(f"{what} did not answer{f' at {where}' if where else ''} within {timeout:.0f} s; see {log_path}")


def stop_group(process: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM the process's whole group (Label Studio and gunicorn fork), SIGKILL it after ``grace`` seconds.

    Also when the main process already died: its children may still hold the port."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        process.poll()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def default_venv() -> Path:
    return Path(os.environ.get("ALC_LS_VENV") or Path.home() / ".cache" / "alc" / f"label-studio-{LABEL_STUDIO_VERSION}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now. With SO_REUSEADDR, as the servers themselves bind
    (Django, gunicorn): a port whose last connections are in TIME-WAIT (a demo stopped a minute ago) is free."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
    except OSError:  # in use, or an address this machine does not have (socket.gaierror included)
        return False
    return True


def _missing(venv: Path) -> list[str]:
    """The requirements not installed in ``venv`` at their versions (read from its metadata: `label-studio
    --version` starts a server); all of them when the venv has no Python."""
    wanted = [f"{name}=={version}" for name, version in REQUIREMENTS.items()]
    python = venv / "bin" / "python"
    if not python.is_file():
        return wanted
    script = ("import importlib.metadata as m, sys\n"
              "for name in sys.argv[1:]:\n"
              "    try: print(name, m.version(name))\n"
              "    except m.PackageNotFoundError: print(name, '-')")
    result = subprocess.run([str(python), "-c", script, *REQUIREMENTS], capture_output=True, text=True, timeout=60)
    pairs = [line.split() for line in result.stdout.splitlines()] if result.returncode == 0 else []
    found = dict(pair for pair in pairs if len(pair) == 2)
    return [req for req, (name, version) in zip(wanted, REQUIREMENTS.items()) if found.get(name) != version]


def _wait_for_other_install(venv: Path, timeout: float, progress: bool = True) -> None:
    """Another process holds the install lock: wait for it to finish rather than installing twice, showing
    who holds it, for how long, and the last line of its pip log (a silent wait looks like a hang)."""
    lock = venv.with_name(venv.name + ".lock")
    log = venv.with_name(venv.name + ".install.log")
    if not lock.exists():
        return
    started = time.monotonic()
    deadline = started + timeout
    with _activity(progress, f"waiting for another process installing Label Studio into {venv} (lock {lock})") as update:
        while lock.exists() and time.monotonic() < deadline:
            holder = _read(lock) or "?"
            if holder.isdigit() and not _alive(int(holder)):
                _tell(progress, f"removing a stale install lock {lock} (pid {holder} is gone)")
                lock.unlink(missing_ok=True)
                break
            update(f"pid {holder}: {(_read(log).splitlines() or [''])[-1][:90]}")
            time.sleep(1)


def _activity(progress: bool, description: str) -> contextlib.AbstractContextManager[Callable[[str], None]]:
    """scoring.progress.heartbeat (a spinner on a terminal, a line every 10 s in a log), or silence."""
    from scoring.progress import heartbeat

    return heartbeat(description) if progress else contextlib.nullcontext(lambda text: None)


def _tell(progress: bool, message: str) -> None:
    if progress:
        from scoring.progress import say

        say(message)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def ensure_installed(venv_dir: Path | None = None, progress: bool = True, timeout: float = 1800) -> Path:
    """The ``label-studio`` executable of a venv holding Label Studio 1.23.2 (and gunicorn), installing what is
    missing: the whole venv when Label Studio is, only gunicorn into a venv made before it was a requirement.

    Concurrent callers (tests, demo) serialise on ``<venv>.lock``; a failed install removes the half-made venv.
    """
    venv = Path(venv_dir) if venv_dir else default_venv()
    exe = venv / "bin" / "label-studio"
    _wait_for_other_install(venv, timeout, progress)
    if not _missing(venv):
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock = venv.with_name(venv.name + ".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        _wait_for_other_install(venv, timeout, progress)
        if not _missing(venv):
            return exe
        raise LabelStudioRuntimeError(f"another process is installing Label Studio into {venv} (lock {lock})")
    os.write(fd, str(os.getpid()).encode())  # who holds the lock, for whoever waits on it
    os.close(fd)
    log = venv.with_name(venv.name + ".install.log")
    try:
        missing = _missing(venv)
        whole = any(req.startswith("label-studio==") for req in missing)
        if whole:
            shutil.rmtree(venv, ignore_errors=True)
            _tell(progress, f"installing Label Studio {LABEL_STUDIO_VERSION} into {venv} (first use only, a few minutes)")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            missing = _missing(venv)
        argv = [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", *missing]
        with open(log, "w") as out, _activity(progress, f"pip install {' '.join(missing)} (log {log})") as update:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                out.write(line)
                if line.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
                    update(f"pip: {line.strip()[:100]}")
            code = process.wait(timeout)
        if code != 0 or _missing(venv):
            if whole:
                shutil.rmtree(venv, ignore_errors=True)
            raise LabelStudioRuntimeError(f"installing {' '.join(missing)} into {venv} failed (pip exit {code}); "
                                          f"see {log}")
    finally:
        lock.unlink(missing_ok=True)
    return exe


class LabelStudioServer:
    """One headless Label Studio on 127.0.0.1; a context manager that always stops what it started.

    The admin's email, password and token are kept in ``<data_dir>/account`` on the first start, so a
    restart on the same (already migrated) data dir takes seconds and keeps the same credentials.
    """

    def __init__(self, data_dir: Path, port: int | None = None, username: str = "admin@example.com",
                 password: str | None = None, token: str | None = None, executable: Path | None = None,
                 start_timeout: float = 400.0, workers: int = 1, progress: bool = True) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.workers = int(workers)
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        account = self.data_dir / "account"
        if account.is_file():
            username, password, token = account.read_text().split()
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.token = token or secrets.token_hex(20)
        if len(self.token) != 40 or any(c not in "0123456789abcdef" for c in self.token):
            raise ValueError("the admin token must be 40 lowercase hex characters")
        if not account.is_file():
            account.write_text(f"{self.username} {self.password} {self.token}\n")
            account.chmod(0o600)
        self.port = port or free_port()
        self.executable = executable
        self.start_timeout = start_timeout
        self.log_path = self.data_dir / "label-studio.log"
        self.progress = progress  # say on standard error what the start is doing (it can take minutes)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_key(self) -> str:
        return self.token

    def env(self) -> dict[str, str]:
        return {
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.username,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "SSRF_PROTECTION_ENABLED": "false",  # the ML backend and webhooks live on 127.0.0.1
            "ML_BLOCK_LOCAL_IP": "false",
            # no telemetry: Label Studio posts a usage record (a new thread and a DNS lookup) for every request
            # and reports errors to Sentry; offline each lookup waits for its timeout (docs/development/
            # label-studio-runtime.md)
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            # Label Studio's own flag for its predictions import: recount only the imported tasks, not every task
            # of the project (without it each re-rank's import costs O(N) inside Label Studio: 5.6 s at 10,000 tasks)
            PREDICTIONS_IMPORT_FLAG: "true",
        }

    def start(self) -> "LabelStudioServer":
        exe = self.executable or ensure_installed()
        if self.workers > 1 and not self.database.is_file():
            self._run(self._dev_server_argv(exe))  # migrates the new data dir and makes the admin account
            self.stop()
        self._run(self._dev_server_argv(exe) if self.workers == 1 else self._gunicorn_argv(exe))
        return self

    @property
    def database(self) -> Path:
        return self.data_dir / "label_studio.sqlite3"

    def _dev_server_argv(self, exe: Path) -> list[str]:
        return [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
                "--data-dir", str(self.data_dir)]

    def _gunicorn_argv(self, exe: Path) -> list[str]:
        """Label Studio's WSGI application in ``workers`` processes, as `label-studio start` sets it up (its
        code on sys.path, its settings module); long requests (an export of a big project) are not killed."""
        code = next(exe.parent.parent.glob("lib/python*/site-packages/label_studio"))
        return [str(exe.parent / "gunicorn"), "--chdir", str(code), "--pythonpath", str(code),
                "--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}", "--timeout", "600",
                "--env", "DJANGO_SETTINGS_MODULE=label_studio.core.settings.label_studio",
                "label_studio.core.wsgi:application"]

    def _run(self, argv: list[str]) -> None:
        migrating = " (the first start on a new data dir migrates its database: about a minute)" if not self.database.is_file() else ""
        self.process = spawn(argv, self.env(), self.log_path)
        try:
            with _activity(self.progress, f"starting Label Studio at {self.url}{migrating}"):
                wait_until_up(self.process, self._healthy, "Label Studio", self.log_path, self.start_timeout,
                              LabelStudioRuntimeError, self.url)
        except BaseException:
            self.stop()
            raise

    def _healthy(self) -> bool:
        """/health answers and the admin token works (the account is created after the migrations)."""
        return requests.get(f"{self.url}/health", timeout=3).ok and requests.get(
            f"{self.url}/api/current-user/whoami", headers={"Authorization": f"Token {self.token}"}, timeout=5).ok

    def stop(self, grace: float = 15.0) -> None:
        """Stop Label Studio's whole process group (see stop_group)."""
        process, self.process = self.process, None
        stop_group(process, grace)

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_user(url: str, email: str, password: str, timeout: float = 30.0) -> str:
    """Sign a new annotator up through Label Studio's sign-up page (or sign in if it exists); its legacy API token.

    Open-source Label Studio has no admin API to create users; the sign-up form is what a person uses.
    """
    url = url.rstrip("/")
    session = requests.Session()
    for path in ("/user/signup/", "/user/login/"):
        session.get(url + path, timeout=timeout)
        response = session.post(
            url + path, allow_redirects=False, timeout=timeout, headers={"Referer": url + path},
            data={"email": email, "password": password, "csrfmiddlewaretoken": session.cookies.get("csrftoken", "")},
        )
        if response.status_code == 302:
            break
    else:
        raise LabelStudioRuntimeError(f"could not sign up or sign in {email} at {url}")
    response = session.get(url + "/api/current-user/token", timeout=timeout)
    if not response.ok or "token" not in response.json():
        raise LabelStudioRuntimeError(f"no legacy API token for {email}: {response.status_code} {response.text[:200]}")
    return response.json()["token"]
