"""The `alc` command line. Each subcommand lives in backend/commands/ and is registered here.

`alc demo` / `alc serve` write the deployment profile (backend.profile) that the other commands read,
so `alc status`, `alc export` and `alc connect` reach the running deployment with no settings.
"""

from __future__ import annotations

import typer

from backend.commands import connect, demo, export, rank, serve, simulate, status, worker

app = typer.Typer(
    help="Active label cleaning for Label Studio: decide which labelled tasks to re-annotate first.",
    pretty_exceptions_show_locals=False,
)


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """Bare `alc` shows this help and exits 0 (asking for help is not an error)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


app.command("demo")(demo.demo)
app.command("serve")(serve.serve)
app.command("worker")(worker.worker)
app.command("connect")(connect.connect)
app.command("status")(status.status)
app.command("export")(export.export)
app.command("simulate")(simulate.simulate)
app.command("rank")(rank.rank)

if __name__ == "__main__":
    app()
