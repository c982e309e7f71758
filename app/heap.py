"""Keep Python's full garbage collections out of the reading room's clicks.

A full (generation-2) collection walks every tracked object; with napari, Qt, torch and the engine
imported that is over half a million objects and 250–300 ms on this CPU, started by whichever allocation
tips the count: measured in ``bench/bench_reading_room.py`` as a 300-ms stall inside a three-plane build
step that itself took 50 ms. The objects alive once the window is built (modules, classes, functions,
napari's and Qt's own) live as long as the process, so after one collection they are moved to the
permanent generation (``gc.freeze``) and later full collections walk only what was made since: the scans,
layers and models, which stay collectable as before. Done once, when the desktop window is set up (a
start-up pause, not a click); a napari session that only loads the plugin keeps napari's own settings.
"""

from __future__ import annotations

import gc

_state = {"frozen": False}


def freeze_startup_heap() -> int:
    """Collect once, then exempt what is alive now from later full collections; returns objects frozen."""
    if _state["frozen"]:
        return 0
    gc.collect()
    gc.freeze()
    _state["frozen"] = True
    return gc.get_freeze_count()


class CollectionHold:
    """Automatic collections held off during a staged build (about a second), after a young one of its own.

    A staged build keeps each event-loop turn short, but a full collection falling due inside one of its
    steps added 40–60 ms to it (``bench/bench_reading_room.py``). Holding the automatic ones until the build
    ends keeps every turn to its step; the build allocates a few megabytes meanwhile. The hold starts with a
    collection of the young generations only (under a millisecond): a full one there was itself a 35–65-ms
    turn at 1,920×1,080, and one that is due comes after the build as it would have without it. Only a hold
    that turned collection off turns it back on.
    """

    def __init__(self) -> None:
        self._held = False

    def start(self) -> None:
        gc.collect(1)
        if gc.isenabled():
            gc.disable()
            self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            gc.enable()
