"""The `alc` subcommands, one module each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer


@contextmanager
def exit_on_user_errors(command: str) -> Iterator[None]:
    """Bad settings exit with code 2, Label Studio refusing or unreachable with 1: one line each, no traceback."""
    from backend.profile import ProfileError
    from backend.settings import SettingsError
    from connectors.errors import ConnectorError

    try:
        yield
    except (SettingsError, ProfileError) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except ConnectorError as exc:
        typer.echo(f"alc {command}: {exc}", err=True)
        raise typer.Exit(1) from None
