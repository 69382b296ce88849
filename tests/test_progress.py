import io
import logging

import jax
import pytest

from aujax import progress
from aujax.progress import Progress


class _Clock:
    """A fake monotonic clock, moved by hand."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def info_lines(caplog):
    caplog.set_level(logging.INFO, logger="absl")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "absl"]


def test_without_a_terminal_it_logs_done_total_rate_and_eta_at_most_once_an_interval_and_at_the_end(info_lines):
    clock = _Clock()
    with Progress(100, "fold A000", "images", interval_s=30, clock=clock, stream=io.StringIO()) as p:
        clock.now += 10
        p.advance(10)  # 10 s: no line yet
        clock.now += 30
        p.advance(30)  # 40 s, 40 done: 1 image/s, 60 to go
        clock.now += 5
        p.advance(10)  # 5 s after the last line: none
        clock.now += 35
        p.advance(30)  # 80 s, 80 done
        clock.now += 20
        p.advance(20)
    assert info_lines() == [
        "fold A000: 40/100 images (40%), 1.0 images/s, ETA 1m 00s",
        "fold A000: 80/100 images (80%), 1.0 images/s, ETA 20s",
        "fold A000: 100/100 images (100%), 1.0 images/s, done in 1m 40s",
    ]


def test_on_a_terminal_it_draws_a_tqdm_bar_and_logs_nothing(info_lines):
    terminal = _Terminal()
    with Progress(4, "explain cv", "images", stream=terminal) as p:
        assert type(p._bar).__module__.startswith("tqdm")
        p.advance(4)
    assert "explain cv" in terminal.getvalue() and "4/4" in terminal.getvalue()
    assert info_lines() == []


def test_processes_other_than_0_of_a_multi_host_run_show_nothing(monkeypatch, info_lines):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    terminal = _Terminal()
    with Progress(3, "fold A000", stream=terminal) as p:
        p.advance(3)
    with Progress(3, "fold A000", stream=io.StringIO(), interval_s=0) as p:
        p.advance(3)
    assert terminal.getvalue() == "" and info_lines() == []


def test_an_interval_without_progress_says_the_eta_is_unknown(info_lines):
    clock = _Clock()
    with Progress(10, "preprocess ck_plus", "faces", interval_s=0, clock=clock, stream=io.StringIO()) as p:
        clock.now += 3
        p.advance(0)
    assert info_lines()[0] == "preprocess ck_plus: 0/10 faces (0%), 0.0 faces/s, ETA unknown"


def test_durations_read_as_seconds_minutes_or_hours():
    assert [progress.format_duration(s) for s in (0, 42.4, 65, 3599, 3600 * 2 + 7 * 60 + 30)] == \
        ["0s", "42s", "1m 05s", "59m 59s", "2h 07m"]
