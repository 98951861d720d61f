"""The `alc` subcommands, one module each.

A command module imports only typer and the standard library at its top: heavy libraries are imported
inside the command's function, after its arguments are checked (backend.cli keeps `alc --help` fast).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
        typer.echo(f"error: alc {command}: {'; '.join(str(exc).split(chr(10)))}", err=True)
        raise typer.Exit(2) from None
    except ConnectorError as exc:
        typer.echo(f"error: alc {command}: {' '.join(str(exc).split())}", err=True)
        raise typer.Exit(1) from None


# --- argument checks (typer callbacks): every argument is checked before any slow work ----------------

def port(value: int | None) -> int | None:
    """A TCP port, 1-65535 (None: the command's default)."""
    if value is not None and not 1 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (1-65535)")
    return value


def port_or_any(value: int | None) -> int | None:
    """A TCP port, or 0 for any free one (None: the command's default)."""
    if value is not None and not 0 <= value <= 65535:
        raise typer.BadParameter(f"{value} is not a TCP port (1-65535, or 0 for any free port)")
    return value


def positive(value: float | None) -> float | None:
    """A number above 0 (None: the command's default)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not above 0")
    return value


def output_file(value: Path | None) -> Path | None:
    """A file to write: its folder exists and is writable, and it is not a folder itself."""
    if value is None:
        return None
    _writable_folder(value.parent if str(value.parent) else Path("."), f"the folder of {value}")
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a folder; give a file name")
    return value


def output_folder(value: Path | None) -> Path | None:
    """A folder to write into: it exists and is writable, or it can be made (its nearest existing parent
    is a writable folder)."""
    if value is None:
        return None
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a folder")
    existing = next(p for p in (value.absolute(), *value.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise typer.BadParameter(f"cannot make {value}: {existing} is a file, not a folder")
    _writable_folder(existing, str(value) if existing == value.absolute() else f"{existing}, to make {value} in,")
    return value


def _writable_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise typer.BadParameter(f"{what} ({folder}) does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{what} ({folder}) is not writable")


def http_url(value: str | None) -> str | None:
    """An http(s) URL with a host (None: the command's default)."""
    from urllib.parse import urlsplit

    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise typer.BadParameter(f"{value!r} is not an http(s) URL such as http://127.0.0.1:8080")
    return value
