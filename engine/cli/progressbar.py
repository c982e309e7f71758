"""Progress of long commands on stderr: a tqdm bar on a terminal, plain lines in a log.

A job started from cron, a batch script or ``anomalens train … > log 2>&1`` has no terminal to draw a bar
on, yet is exactly the job someone watches with ``tail -f`` for twenty minutes. So off a TTY progress is
written as lines such as::

    anomalens: self-test:  40% training patchcore

one per stage (the engine's message, its counts aside) and per 10 % of the work, never the same stage twice
within a second. ``ANOMALENS_PROGRESS=0`` silences progress, ``=1`` forces the bar even off a terminal.
Progress never goes to stdout, so ``--json`` output stays clean.

Logs outlive terminals and are mailed to support: the engine reports stage names and counts, never file
paths (keep it so), and every line is passed through :func:`~anomalens.engine.logredact.redact_paths` as
a second guard.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..logredact import redact_paths
from ..progress import ProgressCallback

#: ``0`` no progress, ``1`` the tqdm bar even off a terminal; anything else: bar on a TTY, lines otherwise.
PROGRESS_ENV = "ANOMALENS_PROGRESS"
#: Work that ends sooner writes no progress line: a two-second ``info`` or a failing option check leaves a
#: log with its result or its one-line error only. Past it, the stage at that moment is written at once.
QUIET_START_S = 2.0
#: The same stage is not repeated sooner than this, unless another 10 % of the work was done.
REPEAT_AFTER_S = 1.0

_COUNTS = re.compile(r"\d+")


@contextmanager
def terminal_progress(description: str, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """Yield a ``progress(fraction, message)`` callback reporting on stderr, or None when silenced.

    Args:
        description: What the command does ("training patchcore"); starts each line and labels the bar.
            It and the engine's messages must not hold file paths.
        enabled: False yields None, whatever the environment says.
    """
    mode = os.environ.get(PROGRESS_ENV, "").strip()
    if not enabled or mode == "0":
        yield None
    elif mode == "1" or sys.stderr.isatty():
        with _tqdm_bar(description) as progress:
            yield progress
    else:
        lines = ProgressLines(description)
        try:
            yield lines
        finally:
            lines.close()


@contextmanager
def _tqdm_bar(description: str) -> Iterator[ProgressCallback]:
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=description, unit="‰", file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction: float, message: str) -> None:
        bar.n = round(1000 * fraction)
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


class ProgressLines:
    """A progress callback that writes ``anomalens: DESCRIPTION: PCT% MESSAGE`` lines to stderr.

    A stage is the message with its numbers blanked: ``scored 3/40 slices`` and ``scored 4/40 slices`` are one
    stage (written again only when another tenth of the work is done), ``scoring`` after ``training`` is a new
    one. Thread-safe: the engine may report from worker threads, and a timer writes the stage reached when
    the quiet start ends, so that a stage reported in the first seconds and then busy for minutes still
    shows in the log.
    """

    def __init__(self, description: str, quiet_start_s: float | None = None, repeat_after_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Start the quiet-start timer.

        Args:
            description: Starts every line.
            quiet_start_s: Seconds without output at the start (default ``QUIET_START_S``).
            repeat_after_s: Least seconds between two lines of one stage within one tenth (``REPEAT_AFTER_S``).
            clock: Seconds, monotonic; tests pass a fake one.
        """
        self.description = description
        self._clock = clock
        self._quiet = QUIET_START_S if quiet_start_s is None else quiet_start_s
        self._repeat = REPEAT_AFTER_S if repeat_after_s is None else repeat_after_s
        self._lock = threading.Lock()
        self._start = clock()
        self._latest: tuple[float, str] | None = None
        self._message = ""  # the last non-empty message: an empty one means "same stage, further on"
        self._stage: str | None = None  # the stage of the last line written
        self._tenth = -1  # the 10 % step of the last line written
        self._written_at: dict[str, float] = {}
        self._closed = False
        self._timer: threading.Timer | None = None
        if self._quiet > 0:
            self._timer = threading.Timer(self._quiet, self._end_quiet_start)
            self._timer.daemon = True
            self._timer.start()

    def __call__(self, fraction: float, message: str = "") -> None:
        with self._lock:
            if self._closed:
                return
            if message:
                self._message = message
            self._latest = (float(fraction), self._message)
            now = self._clock()
            if now - self._start < self._quiet:
                return
            self._consider(*self._latest, now)

    def close(self) -> None:
        """Stop writing (the command is over); the pending quiet-start line, if any, is dropped."""
        with self._lock:
            self._closed = True
        if self._timer is not None:
            self._timer.cancel()

    def _end_quiet_start(self) -> None:
        with self._lock:
            if not self._closed and self._latest is not None:
                self._consider(*self._latest, self._clock())

    def _consider(self, fraction: float, message: str, now: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        tenth = int(fraction * 10 + 1e-9)
        stage = _COUNTS.sub("#", message)
        if tenth > self._tenth or (stage != self._stage and now - self._written_at.get(stage, -1e9) >= self._repeat):
            self._write(fraction, message)
            self._tenth, self._stage, self._written_at[stage] = tenth, stage, now
        elif tenth < self._tenth:
            self._tenth = tenth  # a stage restarted from a lower fraction: count its tenths afresh

    def _write(self, fraction: float, message: str) -> None:
        line = f"anomalens: {self.description}: {int(fraction * 100 + 1e-9):3d}% {message}".rstrip()
        try:
            print(redact_paths(line), file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # stderr closed or gone (a log rotated away): progress is not worth failing the job for
