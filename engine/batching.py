"""The batched loop every detector runs over slices (or patches): cancel between batches, progress after each.

A model sees slices a batch at a time to bound memory; the user must be able to cancel between batches and
see the bar move. Written once here so every detector cancels and reports the same way, and progress is
always monotone within the sub-range a caller gives it.
"""

from __future__ import annotations

from collections.abc import Iterator

from .progress import CancelToken, ProgressCallback, check, report, stage


def batches(n: int, batch_size: int, progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
            message: str = "", start: float = 0.0, stop: float = 1.0) -> Iterator[slice]:
    """Yield ``slice(i, i + batch_size)`` over ``range(n)``, checking ``cancel`` before each batch.

    After the caller has processed a batch, ``progress`` gets ``start + (stop − start) · done / n`` (done =
    items finished so far) with ``message``, which may name ``{done}`` and ``{total}``, e.g.
    ``"scored {done}/{total} slices"``.

    Args:
        n: how many items (slices, patches) there are.
        batch_size: items per batch (≥ 1); the last batch may be smaller.
        progress: the caller's callback, or ``None``.
        cancel: raises ``Cancelled`` before the next batch once set.
        message: progress message, formatted with ``done`` and ``total``.
        start: fraction reported before the first batch would have finished.
        stop: fraction reported after the last batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    total = int(n)
    for i in range(0, total, batch_size):
        check(cancel)
        sl = slice(i, min(total, i + batch_size))
        yield sl
        report(progress, start + (stop - start) * sl.stop / total, message.format(done=sl.stop, total=total))


def batch_stage(progress: ProgressCallback | None, batch: slice, n: int, start: float = 0.0,
                stop: float = 1.0) -> ProgressCallback:
    """A callback for progress *within* one batch of :func:`batches`, mapped onto that batch's share.

    For loops whose batches take long enough to report inside (InvDetect's DDIM inversion steps).
    """
    total = max(int(n), 1)
    return stage(progress, start + (stop - start) * batch.start / total, start + (stop - start) * batch.stop / total)
