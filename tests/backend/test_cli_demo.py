"""`alc demo`'s own polish: a restarted demo keeps its ports, the commands it prints run as printed,
its secrets are never wrapped, and its files land in its own folder."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from backend.commands import demo as demo_command
from backend.labelstudio_runtime import port_is_free


def _time_wait_port() -> int:
    """A port whose only trace is a connection in TIME-WAIT: a server that closed first (a stopped demo).
    The listener sets SO_REUSEADDR as Label Studio's and the backend's servers do (Linux lets a new bind
    share the port with a TIME-WAIT connection only when both sides set it)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection waits in TIME-WAIT
    listener.close()
    client.recv(1)
    client.close()
    time.sleep(0.2)  # the server side's FIN_WAIT_2 -> TIME-WAIT
    return port


def test_a_port_in_time_wait_is_free_again():
    port = _time_wait_port()
    with socket.socket() as plain:  # what the old check did: without SO_REUSEADDR the bind fails
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert port_is_free(port)
    assert demo_command.port_or_free(port) == port


def test_a_port_someone_listens_on_is_not_free():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert not port_is_free(port)
        assert demo_command.port_or_free(port) != port


def test_the_printed_alc_is_the_running_one(monkeypatch, tmp_path):
    exe = tmp_path / ".venv" / "bin" / "alc"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(sys, "argv", [str(exe), "demo"])
    assert demo_command.alc_command() == ".venv/bin/alc"  # relative to where the user stands, runnable as shown
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert demo_command.alc_command() == str(exe)  # not under the current folder: the absolute path
    monkeypatch.setenv("PATH", str(exe.parent))
    assert demo_command.alc_command() == "alc"
    monkeypatch.setattr(sys, "argv", ["-m", "demo"])  # python -m backend.cli demo
    assert demo_command.alc_command() == f"{sys.executable} -m backend.cli"


def test_secrets_and_commands_are_never_wrapped_at_80_columns(monkeypatch, tmp_path):
    console = Console(width=80, record=True, file=open(Path(tmp_path) / "out", "w"))
    password = "p" * 30 + "-" + "q" * 30
    long_url = "http://127.0.0.1:8080/" + "x" * 60
    demo_command._print_secrets(console, [("Label Studio", long_url), ("  password", password)])
    monkeypatch.setattr(sys, "argv", ["/nowhere/alc"])
    out = tmp_path / ("a-long-folder-name-" * 3)
    demo_command._print_how_to_use(console, 12, None, out)
    lines = console.export_text().splitlines()
    assert any(line.endswith(password) for line in lines) and any(line.endswith(long_url) for line in lines)
    export = next(line for line in lines if " export " in line)
    assert export.strip().endswith(f"--out {out.absolute() / 'cleaned-12.csv'}")  # in the demo's folder, whole
