"""Progress reporting and cancellation without any UI toolkit.

Long engine functions take a ``progress`` callback and a ``cancel`` token. The CLI wires them to a
terminal bar, the app to a napari ``thread_worker`` and its Cancel button; the engine never knows which.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from .errors import Cancelled

T = TypeVar("T")

#: ``progress(fraction, message)``; fraction in [0, 1].
ProgressCallback = Callable[[float, str], None]


class CancelToken:
    """A flag that the UI thread sets and the worker polls between small steps (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def check(cancel: CancelToken | None) -> None:
    """Raise ``Cancelled`` if ``cancel`` was set; a no-op for ``None``."""
    if cancel is not None:
        cancel.raise_if_cancelled()


def report(progress: ProgressCallback | None, fraction: float, message: str = "") -> None:
    """Call ``progress`` if given, with the fraction clipped to [0, 1]."""
    if progress is not None:
        progress(min(max(float(fraction), 0.0), 1.0), message)


def stage(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback:
    """A callback that maps a sub-task's 0–1 onto ``start``–``stop`` of ``progress`` (a no-op for ``None``)."""
    return lambda f, m="": report(progress, start + (stop - start) * f, m)


def track(
    items: Iterable[T],
    total: int,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    message: str = "",
    start: float = 0.0,
    stop: float = 1.0,
) -> Iterator[T]:
    """Iterate, checking ``cancel`` before each item and reporting progress mapped into [start, stop]."""
    total = max(int(total), 1)
    for i, item in enumerate(items):
        check(cancel)
        yield item
        report(progress, start + (stop - start) * (i + 1) / total, message)
