"""Progress of a long loop (a fold's training steps, an explain pass, preprocessing), with rate and ETA.

    with Progress(total=len(images), description="explain cv") as progress:
        for batch in batches:
            ...
            progress.advance(len(batch))

On a terminal (stderr is a TTY) it is a tqdm bar. Otherwise (a log file, a batch job) it is an INFO line through absl
logging at most every `interval_s` seconds, and one at the end:

    explain cv: 960/4,800 images (20%), 41.3 images/s, ETA 1m 33s
    explain cv: 4,800/4,800 images (100%), 40.8 images/s, done in 1m 58s

In a multi-host run only process 0 shows it. A Progress never starts a JAX backend: a process that has not started
JAX's distributed runtime counts as process 0.
"""

import sys
import time
from collections.abc import Callable

from absl import logging


class Progress:
    """Counts units done out of `total` and shows the count, rate and ETA (see the module docstring)."""

    def __init__(self, total: int, description: str, unit: str = "images", *, interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, stream=None):
        """
        Args:
          total: units expected; the ETA assumes the rate so far for the rest.
          description: what is counted, at the start of each line (e.g. "fold A000").
          unit: the name of one unit, plural ("images", "steps").
          interval_s: without a terminal, the least seconds between two log lines (the last line is always written).
          clock: seconds, monotonic (tests pass a fake one).
          stream: where the bar is drawn and whose TTY-ness decides bar or log lines; default sys.stderr.
        """
        self.total, self.description, self.unit = int(total), description, unit
        self.interval_s, self._clock = interval_s, clock
        self._stream = sys.stderr if stream is None else stream
        self.done = 0
        self._bar = None
        self._shown = _is_process_zero()
        self._started = self._last_line = 0.0

    def __enter__(self) -> "Progress":
        if self._shown and _is_terminal(self._stream):
            import tqdm

            self._bar = tqdm.tqdm(total=self.total, desc=self.description, unit=self.unit,
                                  file=self._stream, dynamic_ncols=True)
        self._started = self._last_line = self._clock()
        return self

    def advance(self, n: int = 1) -> None:
        """`n` more units done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._shown and self._clock() - self._last_line >= self.interval_s:
            self._log(final=False)

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._shown:
            self._log(final=True)

    def _log(self, final: bool) -> None:
        now = self._clock()
        self._last_line = now
        logging.info("%s", self._line(now - self._started, final))

    def _line(self, elapsed: float, final: bool) -> str:
        """The log line after `elapsed` seconds: done/total, share, rate per second, and the ETA (or, when `final`,
        the time taken)."""
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        if final:
            when = f"done in {format_duration(elapsed)}"
        elif rate > 0:
            when = f"ETA {format_duration(max(self.total - self.done, 0) / rate)}"
        else:
            when = "ETA unknown"
        return f"{self.description}: {self.done:,}/{self.total:,} {self.unit}{share}, {rate:.1f} {self.unit}/s, {when}"


def format_duration(seconds: float) -> str:
    """'42s', '3m 05s', '2h 07m'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _is_process_zero() -> bool:
    """False only on processes other than 0 of a multi-host run (JAX's distributed runtime started)."""
    jax = sys.modules.get("jax")
    if jax is None or not jax.distributed.is_initialized():
        return True
    return jax.process_index() == 0
