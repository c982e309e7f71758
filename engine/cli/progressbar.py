"""A terminal progress bar adapter: the engine reports fractions, tqdm draws them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ..progress import ProgressCallback


@contextmanager
def terminal_progress(description: str, enabled: bool = True) -> Iterator[ProgressCallback | None]:
    """Yield a ``progress(fraction, message)`` callback drawing a tqdm bar on stderr (or None)."""
    if not enabled or (not sys.stderr.isatty() and not _force()):
        yield None
        return
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


def _force() -> bool:
    import os

    return os.environ.get("ANOMALENS_PROGRESS", "") == "1"
