"""The `alc` command itself: bare `alc` is help (exit 0); every subcommand is registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backend.cli import app as cli

ROOT = Path(__file__).resolve().parents[2]


def test_bare_alc_shows_help_and_exits_0():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0, result.output
    for command in ("demo", "serve", "worker", "connect", "status", "export", "simulate"):
        assert command in result.output


def test_an_unknown_command_is_a_usage_error():
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2


HEAVY = ("torch", "sklearn", "cleanlab", "matplotlib", "scipy", "label_studio_sdk", "flask", "numpy")


@pytest.mark.parametrize("argv", [None, ["--help"], ["status", "--help"], ["simulate", "--help"]],
                         ids=["import", "alc --help", "alc status --help", "alc simulate --help"])
def test_the_cli_imports_no_heavy_library_for_help(argv):
    """`alc --help` and `alc status --help` must start fast: none of the scientific stack is imported for
    them (simulate's help lists the selectors, which needs numpy and nothing heavier)."""
    run = "" if argv is None else f"\ntry:\n    app({argv!r})\nexcept SystemExit:\n    pass"
    code = (f"import sys\nfrom backend.cli import app{run}\n"
            f"print('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stdout.splitlines()[-1].split()[1:])
    allowed = {"numpy"} if argv == ["simulate", "--help"] else set()
    assert loaded <= allowed, f"{argv}: imported {sorted(loaded)}"
