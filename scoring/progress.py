"""Progress of long work: a rich bar on a terminal, plain timestamped lines anywhere else.

A transient bar written to a log file, ``nohup`` or CI leaves nothing readable (or nothing at all), so
when standard error is not a terminal the same progress is told in lines: one when the work starts, one
every tenth of it or every 10 seconds (whichever comes first), one when it ends::

    2026-12-07 01:50:03 embedding: 0/10000
    2026-12-07 01:50:13 embedding: 1024/10000 (10%), 10 s
    2026-12-07 01:51:31 embedding: done, 10000/10000 in 88 s

Only the standard library and rich: scoring and backend both use it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable, Iterator, TextIO

EVERY_FRACTION = 0.1
EVERY_SECONDS = 10.0


def stderr_is_terminal() -> bool:
    """Whether progress goes to a person watching (rich's own test: honours FORCE_COLOR / TTY_COMPATIBLE)."""
    from rich.console import Console

    return Console(stderr=True).is_terminal


def say(message: str, stream: TextIO | None = None) -> None:
    """One timestamped line on standard error (the stream as it is now: pytest may have replaced it)."""
    out = stream or sys.stderr
    out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    out.flush()


class ProgressLines:
    """Progress told in plain lines (see the module's docstring).

    ``every_fraction=0`` writes a line on every update (few, slow steps: a simulation's runs). Lines for a
    share of the work come at most every ``min_seconds`` (quick work is not a screenful)."""

    min_seconds = 1.0

    def __init__(self, description: str, total: int | None, *, every_fraction: float = EVERY_FRACTION,
                 every_seconds: float = EVERY_SECONDS, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.description, self.total = description, total
        self.every_fraction, self.every_seconds = every_fraction, every_seconds
        self.stream, self.clock = stream, clock
        self.completed = 0
        self.started = self.last_time = clock()
        self.last_completed = 0
        say(f"{description}: {self._count()}", stream)

    def _count(self) -> str:
        return f"{self.completed}/{self.total}" if self.total else str(self.completed)

    def advance(self, n: int = 1, note: str = "") -> None:
        self.update(self.completed + n, note)

    def update(self, completed: int, note: str = "") -> None:
        self.completed = completed
        now = self.clock()
        step = self.every_fraction * self.total if self.total else None
        by_share = (step is not None and completed - self.last_completed >= step
                    and (not step or now - self.last_time >= self.min_seconds))
        due = now - self.last_time >= self.every_seconds or by_share
        if due and completed != self.last_completed and completed != self.total:  # the end has its own line
            share = f" ({100 * completed / self.total:.0f}%)" if self.total else ""
            say(f"{self.description}: {self._count()}{share}, {now - self.started:.0f} s{f'; {note}' if note else ''}",
                self.stream)
            self.last_time, self.last_completed = now, completed

    def finish(self, note: str = "") -> None:
        say(f"{self.description}: done, {self._count()} in {self.clock() - self.started:.0f} s"
            f"{f'; {note}' if note else ''}", self.stream)


@contextlib.contextmanager
def progress(description: str, total: int | None, *, transient: bool = True,
             every_fraction: float = EVERY_FRACTION) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, note="")``: a rich bar on a terminal (``note`` becomes its description; it nests
    under a caller's own live display), else :class:`ProgressLines`."""
    if not stderr_is_terminal():
        lines = ProgressLines(description, total, every_fraction=every_fraction)
        yield lines.advance
        lines.finish()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), transient=transient, console=Console(stderr=True))
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, note: str = "") -> None:
            bar.update(task, advance=n, **({"description": note} if note else {}))

        yield advance


@contextlib.contextmanager
def heartbeat(description: str, *, every_seconds: float = EVERY_SECONDS) -> Iterator[Callable[[str], None]]:
    """Work with no count to show (an install, a database migration, a long read). Yields ``update(text)``.

    On a terminal a rich spinner with the latest text; elsewhere a line at the start, the latest text with
    the time so far every ``every_seconds`` (from a background thread: the work itself may block), and a
    line at the end."""
    if stderr_is_terminal():
        from rich.console import Console

        began = time.monotonic()
        with Console(stderr=True).status(description) as status:
            yield lambda text: status.update(f"{description}: {text} ({time.monotonic() - began:.0f} s)")
        return
    stream, started, latest = sys.stderr, time.monotonic(), [""]
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_seconds):
            say(f"{description}: still working, {time.monotonic() - started:.0f} s{f'; {latest[0]}' if latest[0] else ''}",
                stream)

    say(f"{description} ...", stream)
    thread = threading.Thread(target=beat, name="progress-heartbeat", daemon=True)
    thread.start()
    try:
        yield lambda text: latest.__setitem__(0, text)
    finally:
        stop.set()
        thread.join()
    say(f"{description}: done in {time.monotonic() - started:.0f} s", stream)
