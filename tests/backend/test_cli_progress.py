"""Long work tells its progress in plain timestamped lines when standard error is not a terminal
(a log file, nohup, CI): scoring.progress, used by the embedding and training bars, `alc simulate`,
the demo's cleaning, `alc connect` and Label Studio's install and start."""

from __future__ import annotations

import io
import re
import time

from scoring.progress import ProgressLines, heartbeat, progress

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_tenth_or_every_ten_seconds_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines("embedding", 1000, stream=out, clock=clock)
    for done in range(0, 1001, 10):  # 10 items a step, 2 s per step: a tenth every 20 s, 10 s comes first
        clock.now = done / 5
        lines.update(done)
    lines.finish()
    text = out.getvalue().splitlines()
    assert all(LINE.match(t) for t in text)
    assert text[0].endswith("embedding: 0/1000")
    assert text[1].endswith("embedding: 50/1000 (5%), 10 s")  # the 10 s rule
    assert text[-1].endswith("embedding: done, 1000/1000 in 200 s")
    assert len(text) == 2 + 19  # start, end, and every 10 s in between (the end's own step has the end's line)


def test_quick_work_writes_a_line_per_tenth_at_most_once_a_second():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines("fitting", 100, stream=out, clock=clock)
    for done in range(1, 101):
        clock.now = done * 0.05  # 5 s in all: a tenth every 0.5 s
        lines.update(done)
    assert 4 <= len(out.getvalue().splitlines()) - 1 <= 5


def test_every_fraction_zero_writes_every_step_with_its_note():
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines("simulating", 4, every_fraction=0, stream=out, clock=clock)
    for k in range(3):
        lines.advance(1, f"random seed {k} done")
    assert [t.split(" ", 2)[2] for t in out.getvalue().splitlines()[1:]] == [
        "simulating: 1/4 (25%), 0 s; random seed 0 done", "simulating: 2/4 (50%), 0 s; random seed 1 done",
        "simulating: 3/4 (75%), 0 s; random seed 2 done"]


def test_off_a_terminal_the_bar_becomes_lines(capsys):
    with progress("embedding", 3) as advance:  # pytest's captured stderr is not a terminal
        advance(3)
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("embedding: 0/3") and err[-1].endswith("embedding: done, 3/3 in 0 s")


def test_the_heartbeat_beats_while_the_work_blocks(capsys):
    with heartbeat("migrating", every_seconds=0.2) as update:
        update("step 2")
        time.sleep(0.7)
    err = capsys.readouterr().err.splitlines()
    assert err[0].endswith("migrating ...") and "done in" in err[-1]
    assert any(t.endswith("still working, 0 s; step 2") for t in err[1:-1]) and len(err) >= 4


def test_a_big_image_fetch_tells_its_progress_and_a_small_one_does_not(tmp_path, capsys, monkeypatch):
    """Refs that fail at once (no URL) keep it offline; the threshold is lowered to keep it small."""
    from backend import images

    loader = images.ImageLoader("http://127.0.0.1:9", "k" * 40, size=8, cache_dir=tmp_path)
    monkeypatch.setattr(images, "SHOW_PROGRESS_FROM", 5)
    loader.load_many([None] * 4)
    assert capsys.readouterr().err == ""
    _, errors = loader.load_many([None] * 5)
    err = capsys.readouterr().err.splitlines()
    assert len(errors) == 5
    assert err[0].endswith("fetching 5 images: 0/5") and err[-1].endswith("fetching 5 images: done, 5/5 in 0 s")
