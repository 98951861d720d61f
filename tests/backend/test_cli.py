"""The `alc` command itself: bare `alc` is help (exit 0); every subcommand is registered."""

from __future__ import annotations

from typer.testing import CliRunner

from backend.cli import app as cli


def test_bare_alc_shows_help_and_exits_0():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0, result.output
    for command in ("demo", "serve", "worker", "connect", "status", "export", "simulate"):
        assert command in result.output


def test_an_unknown_command_is_a_usage_error():
    assert CliRunner().invoke(cli, ["no-such-command"]).exit_code == 2
