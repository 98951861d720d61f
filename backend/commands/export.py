"""`alc export --project ID --format csv|json`: final labels and the audit trail, one row per task."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from backend.commands import exit_on_user_errors, output_file


class Format(str, Enum):
    csv = "csv"
    json = "json"


def export(
    project: Annotated[int, typer.Option("--project", min=1, help="Label Studio project id")],
    format: Annotated[Format, typer.Option("--format", help="csv or json")] = Format.json,
    out: Annotated[Optional[Path], typer.Option("--out", callback=output_file, help="file to write (default: standard output)")] = None,
) -> None:
    """Read every task from Label Studio and write its final label with the audit trail."""
    from backend.settings import load_settings
    from connectors.client import connect
    from connectors.export import export_rows, to_csv, to_json

    with exit_on_user_errors("export"):
        settings = load_settings()
        url, key = settings.require_label_studio()
        client = connect(url, key, timeout=settings.label_studio_timeout, retries=3)
        rows = export_rows(client, project, settings.initial_label_source, settings.budget)
    text = to_csv(rows) if format is Format.csv else to_json(rows)
    if out is None:
        typer.echo(text)
    else:
        out.write_text(text)
        settled = sum(bool(r["settled"]) for r in rows)
        typer.echo(f"{len(rows)} tasks ({settled} settled) written to {out}", err=True)
