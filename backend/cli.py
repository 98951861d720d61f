"""The `alc` command line. Each subcommand lives in backend/commands/ and is registered here.

`alc demo` / `alc serve` write the deployment profile (backend.profile) that the other commands read,
so `alc status`, `alc export` and `alc connect` reach the running deployment with no settings.

Two promises are kept here for every subcommand:

- **Fast start.** A subcommand's module is imported only when that subcommand runs (or its help is
  shown), and the modules import their heavy libraries (numpy, torch, scikit-learn, the Label Studio SDK,
  flask) inside the function that needs them, so `alc --help` and `alc status --help` load none of them.
- **One line for bad input.** Usage errors and anything a command raises end as one line,
  ``error: ...`` on standard error, with exit code 2 (bad input or settings) or 1 (the work failed);
  ``alc --debug ...`` or ``ALC_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup
from typer.exceptions import Abort

# name -> (module, function): imported when the command runs, so one command's imports never slow another.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("backend.commands.demo", "demo"),
    "serve": ("backend.commands.serve", "serve"),
    "worker": ("backend.commands.worker", "worker"),
    "connect": ("backend.commands.connect", "connect"),
    "status": ("backend.commands.status", "status"),
    "export": ("backend.commands.export", "export"),
    "simulate": ("backend.commands.simulate", "simulate"),
    "rank": ("backend.commands.rank", "rank"),
}


def _function(name: str) -> Any:
    module, attr = COMMANDS[name]
    return getattr(importlib.import_module(module), attr)


class LazyCommands(TyperGroup):
    """A command group that builds a subcommand only when it is invoked.

    The group's own help lists every command with the first paragraph of its docstring, without building
    its options (an option's help may need a heavy import: `alc simulate` lists the selectors it knows)."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in COMMANDS if name not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        if self._listing:
            return TyperCommand(cmd_name, help=inspect.getdoc(_function(cmd_name)))
        single = typer.Typer()
        single.command(cmd_name)(_function(cmd_name))
        return typer.main.get_command(single)

    def format_help(self, ctx: click.Context, formatter: Any) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


class Alc(typer.Typer):
    """The `alc` application: `alc(...)` runs it the way the console script does, with one line per error."""

    def __call__(self, args: list[str] | None = None) -> None:
        args = list(sys.argv[1:] if args is None else args)
        debug = os.environ.get("ALC_DEBUG", "") not in ("", "0") or "--debug" in args[:_first_command(args)]
        try:
            code = typer.main.get_command(self).main(args=args, prog_name="alc", standalone_mode=False)
        except click.exceptions.UsageError as exc:  # BadParameter included: the command line itself is wrong
            if debug:
                raise
            sys.exit(_fail(exc.format_message(), 2, exc.ctx))
        except click.exceptions.ClickException as exc:
            sys.exit(_fail(exc.format_message(), exc.exit_code))
        except Abort:
            sys.exit(_fail("aborted", 130))
        except KeyboardInterrupt:
            sys.exit(_fail("interrupted", 130))
        except Exception as exc:  # noqa: BLE001 - the promise: one line, the traceback only on request
            if debug:
                raise
            where = args[_first_command(args)] if _first_command(args) < len(args) else ""
            sys.exit(_fail(f"{f'alc {where}: ' if where else ''}{one_line(exc)}", 1,
                           hint="add --debug (alc --debug ...) for the traceback"))
        sys.exit(code if isinstance(code, int) else 0)


def _first_command(args: list[str]) -> int:
    """Index of the subcommand in ``args`` (global options come before it)."""
    return next((i for i, a in enumerate(args) if a in COMMANDS), len(args))


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type when the message does not say much, newlines folded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, (OSError, LookupError, ArithmeticError, AssertionError)) or len(text) < 12:
        text = f"{type(exc).__name__}: {text}"
    return text


def _fail(message: str, code: int, ctx: click.Context | None = None, hint: str = "") -> int:
    where = f"{ctx.command_path}: " if ctx is not None and ctx.command_path and ctx.command_path != "alc" else ""
    tail = f" (see `{ctx.command_path} --help`)" if ctx is not None and code == 2 else (f" ({hint})" if hint else "")
    sys.stderr.write(f"error: {where}{' '.join(message.split())}{tail}\n")
    return code


app = Alc(
    cls=LazyCommands,
    help="Active label cleaning for Label Studio: decide which labelled tasks to re-annotate first.",
    pretty_exceptions_show_locals=False,
)


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of an error (also ALC_DEBUG=1)")] = False,
) -> None:
    """Bare `alc` shows this help and exits 0 (asking for help is not an error)."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


if __name__ == "__main__":
    app()
