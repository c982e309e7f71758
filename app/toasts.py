"""A notification that appeared while the window was in the background goes away once the user is back.

napari starts a toast's dismiss timer only if its window is the active one when the toast appears, and
nothing starts it later: a toast raised while the radiologist worked in another program (a job that
finished while the PACS viewer had the focus, a PACS that went away) stayed over the canvas until it was
clicked. Keeping it until the user comes back is right; keeping it for good is not. When the AnomaLens
window becomes active again, each such toast gets the timer napari would have given it, and only the newest
counts down, as napari does for toasts stacked while the window is active (closing one starts the one
below it).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QEvent, QObject


def start_waiting_toasts(qt_window: Any) -> int:
    """Give every toast shown over ``qt_window`` that never got its dismiss timer that timer; start the newest.

    napari keeps its toasts in one list for the process: one over a window closed meanwhile (its Qt objects
    deleted) is skipped, as is one over another window. Returns how many toasts were given a timer.
    """
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # another napari layout: its toasts are left as they are
        return 0
    waiting = []
    for toast in list(getattr(NapariQtNotification, "_instances", [])):
        try:
            over = toast.parentWidget()
            if not toast.isVisible() or over is None or not (over is qt_window or qt_window.isAncestorOf(over)):
                continue
            timer = toast.timer
            dismiss = int(getattr(toast, "DISMISS_AFTER", 0))
            if dismiss <= 0 or timer.interval() != 0:  # napari set this one up (its interval is set)
                continue
            timer.setInterval(dismiss)
            timer.setSingleShot(True)
            timer.timeout.connect(toast.close_with_fade)
        except (RuntimeError, AttributeError):  # its Qt object is gone, or napari's toast changed shape
            continue
        waiting.append(toast)
    if waiting and not waiting[-1].underMouse():  # a hovered toast starts its timer when the pointer leaves
        waiting[-1].timer.start()
    return len(waiting)


class _OnActivate(QObject):
    """Starts the waiting toasts' timers whenever the watched window becomes the active one."""

    def eventFilter(self, obj: Any, event: Any) -> bool:
        if event.type() == QEvent.Type.WindowActivate:
            start_waiting_toasts(obj)
        return False


def install(qt_window: Any) -> QObject:
    """Watch ``qt_window`` (the AnomaLens main window) for activation; returns the watcher (owned by it)."""
    watcher = _OnActivate(qt_window)
    qt_window.installEventFilter(watcher)
    return watcher
