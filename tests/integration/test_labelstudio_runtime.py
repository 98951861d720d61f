"""The session's real Label Studio: the admin token works, annotators get accounts and tokens of their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from backend.labelstudio_runtime import GUNICORN_VERSION, LABEL_STUDIO_VERSION, LabelStudioRuntimeError, LabelStudioServer, _missing
from connectors.client import connect, get_task, update_task


def whoami(url: str, token: str) -> dict:
    response = requests.get(f"{url}/api/current-user/whoami", headers={"Authorization": f"Token {token}"}, timeout=10)
    response.raise_for_status()
    return response.json()


@pytest.mark.integration
def test_admin_and_two_annotators_have_their_own_tokens(label_studio):
    assert whoami(label_studio.url, label_studio.api_key)["email"] == label_studio.email
    first, second = label_studio.create_user("ann"), label_studio.create_user("ann")
    assert len({first.token, second.token, label_studio.token}) == 3
    assert whoami(label_studio.url, first.token)["email"] == first.email
    assert whoami(label_studio.url, second.token)["email"] == second.email


@pytest.mark.integration
def test_a_wrong_token_is_refused(label_studio):
    response = requests.get(f"{label_studio.url}/api/projects", headers={"Authorization": "Token " + "0" * 40}, timeout=10)
    assert response.status_code == 401


CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          '<Choice value="cat"/><Choice value="dog"/></Choices></View>')


@pytest.mark.integration
def test_label_studio_served_by_several_worker_processes(label_studio, tmp_path):
    """``workers=2`` on a copy of the session's migrated data dir: gunicorn's master and two worker processes
    (as the Docker image serves Label Studio with uwsgi processes), the same admin token, and the task view
    through which the backend opens tasks stores what it is sent."""
    shutil.copytree(label_studio.data_dir, tmp_path / "data", ignore=shutil.ignore_patterns("*.log", "export", "media"))
    with LabelStudioServer(tmp_path / "data", workers=2) as server:
        assert server.token == label_studio.token and whoami(server.url, server.token)["email"] == label_studio.email
        children = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2, children
        client = connect(server.url, server.token)
        project = client.projects.create(title="workers", label_config=CONFIG)
        client.projects.import_tasks(project.id, request=[{"image": "/static/x.png"}])
        task_id = client.tasks.list(project=project.id).items[0].id
        update_task(client, task_id, {"overlap": 3, "is_labeled": False, "data": {"image": "/static/x.png", "alc_status": "open"}})
        task = get_task(client, task_id)
        assert (task.overlap, task.is_labeled, task.data["alc_status"]) == (3, False, "open")


# --- the server wrapper itself, with a stand-in executable (no Label Studio needed) -------------------

FAKE = """#!{python}
import json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
data = os.environ["LABEL_STUDIO_BASE_DATA_DIR"]
open(os.path.join(data, os.path.basename(sys.argv[0]) + ".json"), "w").write(json.dumps(sys.argv[1:]))  # who ran, how
bind = sys.argv[sys.argv.index("--bind") + 1] if "--bind" in sys.argv else ""  # gunicorn's form
port = int(bind.rsplit(":", 1)[1]) if bind else int(sys.argv[sys.argv.index("--port") + 1])
child = subprocess.Popen(["sleep", "300"])  # Label Studio forks too: stop() must reach children
open(data + "/child.pid", "w").write(str(child.pid))
if os.environ.get("FAKE_MODE") == "crash":
    sys.exit(3)
class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"{{}}")
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", port), Ok).serve_forever()
"""


def fake_executable(directory: Path, name: str = "label-studio") -> Path:
    """The stand-in server as ``directory/name``: label-studio (``--port``) or gunicorn (``--bind``)."""
    exe = directory / name
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    return exe


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waits for its parent's wait(); it no longer runs
        return f.read().split()[2] != "Z"


def test_stop_ends_the_whole_process_group(tmp_path):
    server = LabelStudioServer(tmp_path / "data", executable=fake_executable(tmp_path), start_timeout=30)
    with server:
        assert requests.get(f"{server.url}/health", timeout=5).ok
        child = int((tmp_path / "data" / "child.pid").read_text())
        assert alive(child)
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(child)
    # the admin account is kept for the next start on the same data dir
    again = LabelStudioServer(tmp_path / "data", executable=fake_executable(tmp_path))
    assert (again.username, again.password, again.token) == (server.username, server.password, server.token)


def test_several_workers_on_a_new_data_dir_migrate_first_then_serve_with_gunicorn(tmp_path):
    """A stand-in label-studio and gunicorn in a stand-in venv."""
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    exe = fake_executable(bin_dir)
    fake_executable(bin_dir, "gunicorn")
    (tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "label_studio").mkdir(parents=True)
    data = tmp_path / "data"
    with LabelStudioServer(data, executable=exe, workers=3, start_timeout=30) as server:
        argv = json.loads((data / "gunicorn.json").read_text())
        assert (data / "label-studio.json").is_file(), "label-studio start ran first (the migrations, the admin account)"
        assert argv[argv.index("--workers") + 1] == "3" and argv[-1] == "label_studio.core.wsgi:application"
        assert argv[argv.index("--bind") + 1] == f"127.0.0.1:{server.port}"
        assert requests.get(f"{server.url}/health", timeout=5).ok
    (data / "label-studio.json").unlink()
    (data / "label_studio.sqlite3").touch()  # a migrated data dir: gunicorn at once
    with LabelStudioServer(data, executable=exe, workers=2, start_timeout=30):
        assert not (data / "label-studio.json").exists()


def test_a_server_that_dies_at_start_names_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    server = LabelStudioServer(tmp_path / "data", executable=fake_executable(tmp_path), start_timeout=30)
    with pytest.raises(LabelStudioRuntimeError, match="exited with code 3.*label-studio.log"):
        server.start()
    child = int((tmp_path / "data" / "child.pid").read_text())
    assert not alive(child), "a crashed start must not leave its children behind"


def test_a_bad_admin_token_is_refused_before_starting(tmp_path):
    with pytest.raises(ValueError, match="40 lowercase hex"):
        LabelStudioServer(tmp_path / "data", token="not-a-token")
    with pytest.raises(ValueError, match="workers must be at least 1"):
        LabelStudioServer(tmp_path / "data", workers=0)


@pytest.mark.parametrize("answer, missing", [
    (f"label-studio {LABEL_STUDIO_VERSION}\ngunicorn {GUNICORN_VERSION}", []),
    (f"label-studio {LABEL_STUDIO_VERSION}\ngunicorn -", [f"gunicorn=={GUNICORN_VERSION}"]),  # a venv from before
    (f"label-studio 1.22.0\ngunicorn {GUNICORN_VERSION}", [f"label-studio=={LABEL_STUDIO_VERSION}"]),
    ("1.23.2", [f"label-studio=={LABEL_STUDIO_VERSION}", f"gunicorn=={GUNICORN_VERSION}"]),  # not an answer
])
def test_what_the_label_studio_venv_lacks(tmp_path, answer, missing):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text("#!/bin/sh\nprintf '" + answer.replace("\n", "\\n") + "\\n'\n")
    python.chmod(0o755)
    assert _missing(tmp_path) == missing
    assert len(_missing(tmp_path / "nothing-here")) == 2
