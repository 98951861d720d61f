"""Every `alc` subcommand given malformed input answers with one line on standard error and a non-zero exit
code, before any slow work, and never with a traceback (`--debug` shows it on request).

Each case runs the real command line in a subprocess (``python -m backend.cli``, what the `alc` script
runs) with no deployment around: no profile, no Label Studio, no Redis settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (arguments, expected exit code, a fragment the one line must contain). {tmp} is a fresh folder,
# {file} a file in it, {garbage} a file that is not a .npy array.
CASES: list[tuple[str, int, str]] = [
    ("no-such-command", 2, "No such command"),
    ("--no-such-option", 2, "No such option"),
    # demo
    ("demo --ls-port 80801", 2, "80801 is not a TCP port"),
    ("demo --port -5", 2, "-5 is not a TCP port"),
    ("demo --budget 0", 2, "--budget"),
    ("demo --images 5", 2, "--images"),
    ("demo --noise-rate 1.5", 2, "--noise-rate"),
    ("demo --pace -1", 2, "--pace"),
    ("demo --timeout 0", 2, "--timeout"),
    ("demo --order best", 2, "--order"),
    ("demo --data-dir {tmp}/missing", 2, "does not exist"),
    ("demo --report {tmp}/missing/report.json", 2, "does not exist"),
    ("demo --out {file}", 2, "is a file, not a folder"),
    ("demo --home {file}/sub", 2, "is a file, not a folder"),
    ("demo --label-studio-url http://127.0.0.1:8080", 2, "go together"),
    ("demo --label-studio-url not-a-url --label-studio-api-key x", 2, "not an http(s) URL"),
    ("demo --selector no-such-selector", 2, "unknown selector"),
    # serve
    ("serve --port 70000", 2, "70000 is not a TCP port"),
    ("serve --port abc", 2, "--port"),
    ("serve --threads 0", 2, "--threads"),
    ("serve --host 0.0.0.0", 2, "refusing to listen on 0.0.0.0 without credentials"),
    # worker
    ("worker --supervise --burst", 2, "does not combine with --burst"),
    ("worker --no-such-option", 2, "No such option"),
    # connect
    ("connect", 2, "Missing option '--project'"),
    ("connect --project 0", 2, "--project"),
    ("connect --project abc", 2, "--project"),
    ("connect --project 1 --backend-url ftp://example.org", 2, "not an http(s) URL"),
    ("connect --project 1 --backend-url http://127.0.0.1:99999", 2, "not a URL"),
    ("connect --project 1 --window 0", 2, "--window"),
    ("connect --project 1 --budget -1", 2, "--budget"),
    ("connect --project 1", 2, "LABEL_STUDIO_URL"),
    # status
    ("status --project 0", 2, "--project"),
    ("status --target 2", 2, "between 0 and 1"),
    ("status --project 1", 2, "LABEL_STUDIO_URL"),
    # export
    ("export --project 1 --out {tmp}/missing/dir/cleaned.csv", 2, "does not exist"),
    ("export --project 1 --out {tmp}", 2, "is a folder"),
    ("export --project 1 --format xml", 2, "--format"),
    ("export --project -3", 2, "--project"),
    ("export --project 1", 2, "LABEL_STUDIO_URL"),
    # simulate
    ("simulate --data-dir {tmp}/wrong", 2, "does not exist"),
    ("simulate --dataset foo", 2, "--dataset"),
    ("simulate --dataset arrays", 2, "needs --true-dist"),
    ("simulate --dataset arrays --true-dist {tmp}/missing.npy", 2, "does not exist"),
    ("simulate --selectors no-such-selector", 2, "unknown selector"),
    ("simulate --selectors random:no-such-rule", 2, "unknown priority rule"),
    ("simulate --seeds 1,x", 2, "comma-separated list of integers"),
    ("simulate --selector-options {{bad", 2, "not valid JSON"),
    ('simulate --selector-options {{"linear":{{"nope":1}}}}', 2, "has no option"),
    ("simulate --budget-factor 0", 2, "is not above 0"),
    ("simulate --batch-size 0", 2, "--batch-size"),
    ("simulate --out {file}", 2, "is a file, not a folder"),
    # rank
    ("rank {tmp}/missing.csv --out {tmp}/r.csv --images {tmp}", 2, "no such file"),
    ("rank {file} --out {tmp}/r.csv", 2, "exactly one of"),
    ("rank {file} --out {tmp}/r.csv --images {tmp}/nowhere", 2, "no such folder"),
    ("rank {file} --out {tmp}/r.csv --images {tmp}", 2, "no item column"),
    # an error only the work itself finds: the top-level handler's one line (exit 1)
    ("simulate --dataset arrays --true-dist {garbage}", 1, "--debug"),
]


def run_alc(args: list[str], folder: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LABEL_STUDIO_", "REDIS_URL", "BASIC_AUTH_", "ALC_"))}
    env.update(PYTHONPATH=str(ROOT), ALC_PROFILE="none", ALC_DATA_DIR=str(folder / "no-data"),
               HOME=str(folder), XDG_DATA_HOME=str(folder / "share"), COLUMNS="80", **extra_env)
    return subprocess.run([sys.executable, "-m", "backend.cli", *args], capture_output=True, text=True, env=env,
                          cwd=folder, timeout=300)


def _args(spec: str, folder: Path) -> list[str]:
    (folder / "a-file").write_text("x")
    (folder / "garbage.npy").write_bytes(b"not an array")
    return [a.format(tmp=folder, file=folder / "a-file", garbage=folder / "garbage.npy") for a in spec.split(" ")]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """Every case's run, a few at a time (each is a fresh interpreter: about a second of CPU)."""
    folders = {spec: tmp_path_factory.mktemp("alc") for spec, _, _ in CASES}
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {spec: pool.submit(run_alc, _args(spec, folder), folder) for spec, folder in folders.items()}
        return {spec: run.result() for spec, run in runs.items()}


@pytest.mark.parametrize(("spec", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(spec: str, code: int, fragment: str, outcomes: dict) -> None:
    result = outcomes[spec]
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


def test_every_subcommand_has_a_case() -> None:
    from backend.cli import COMMANDS

    covered = {spec.split(" ")[0] for spec, _, _ in CASES}
    assert set(COMMANDS) <= covered


@pytest.mark.parametrize("how", ["--debug", "ALC_DEBUG"])
def test_debug_shows_the_traceback(how: str, tmp_path: Path) -> None:
    args = _args("simulate --dataset arrays --true-dist {garbage}", tmp_path)
    result = run_alc(["--debug", *args] if how == "--debug" else args, tmp_path,
                     **({"ALC_DEBUG": "1"} if how == "ALC_DEBUG" else {}))
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr


@pytest.mark.parametrize("field", ["label_config", "description"])
def test_a_webhook_with_a_lone_surrogate_is_a_400_and_queues_nothing(settings, conn, field: str) -> None:
    """JSON may escape a lone surrogate (\\ud800), which no UTF-8 text holds: a 400 naming the field, never
    a 500 from hashing or storing it, and nothing is queued (Label Studio's project is left as it is)."""
    from rq import Queue

    from backend import queue as q
    from backend.app import create_app

    client = create_app(settings).test_client()
    body = ('{"action": "PROJECT_UPDATED", "project": {"id": 1, "%s": "<View>\\ud800</View>"}}' % field).encode()
    response = client.post("/webhook", data=body, content_type="application/json")
    assert response.status_code == 400, response.data
    assert field in response.json["error"] and "surrogate" in response.json["error"]
    assert all(Queue(n, connection=conn).count == 0 for n in q.QUEUES)
