"""Work that can wait one event-loop turn, so the canvas answers a key before the docks redraw.

Qt paints everything a turn made dirty in one go. When N marks a slice, the canvas' label and frame, the
score curve's band and the Poincaré disk's rings were all repainted in the key's own turn; under software
OpenGL at 1,920×1,080 that turn held the UI thread ~130 ms (bench_reading_room). With the docks' redraws a
turn later the canvas is painted first and input is handled in between (~95 ms, the cost of any slice step).
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QObject, QTimer


def next_turn(owner: QObject, fn: Callable[[], object]) -> QTimer:
    """A timer that runs ``fn`` in the next event-loop turn each time it is ``start()``-ed.

    Started again before it fired, it fires once (a burst of marks redraws once). Owned by ``owner``, it is
    deleted with it, so it never calls into a closed dock.
    """
    timer = QTimer(owner)
    timer.setSingleShot(True)
    timer.setInterval(0)
    timer.timeout.connect(fn)
    return timer
