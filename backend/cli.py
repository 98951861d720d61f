"""The `alc` command line. Each subcommand lives in backend/commands/ and is registered here."""

from __future__ import annotations

import typer

from backend.commands import serve, simulate, worker

app = typer.Typer(
    help="Active label cleaning for Label Studio: decide which labelled tasks to re-annotate first.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main() -> None:
    """Keeps `alc <command>` a group even while it has a single subcommand."""


app.command("simulate")(simulate.simulate)
app.command("serve")(serve.serve)
app.command("worker")(worker.worker)
app.command("demo")(__import__("backend.commands.demo", fromlist=["demo"]).demo)
app.command("connect")(__import__("backend.commands.connect", fromlist=["connect"]).connect)
app.command("export")(__import__("backend.commands.export", fromlist=["export"]).export)
app.command("status")(__import__("backend.commands.status", fromlist=["status"]).status)

if __name__ == "__main__":
    app()
