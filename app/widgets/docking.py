"""Dock bodies that scroll wherever they are docked: in the AnomaLens window and as napari plugin docks.

A dock's content has a natural height (the Detector's curve, the Calibration dock's lists, the Poincaré
disk), and Qt will not make a dock shorter than that: napari stacks plugin docks in one column, so with the
five AnomaLens docks open the window asked for 1,938 px on a 768-px laptop screen, its bottom out of reach.
In a scroll area a dock may be as short as its room. The desktop window wraps each dock when it adds it
(:func:`scrollable`); napari adds plugin docks itself, so a dock body wraps itself on first show
(:class:`ScrollsWhenDocked`) when it finds itself straight in a dock widget.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDockWidget, QFrame, QScrollArea, QWidget

#: The narrowest a dock may become (the sliders, buttons and the curve stay usable).
DOCK_MIN_WIDTH = 300


def scrollable(widget: QWidget) -> QScrollArea:
    """``widget`` in a scroll area, so a dock may be shorter than its content."""
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(widget)
    area.setMinimumWidth(DOCK_MIN_WIDTH)
    return area


def scrolls(widget: QWidget) -> bool:
    """Whether ``widget`` already sits in a scroll area (its parent is the area's viewport)."""
    parent = widget.parentWidget()
    return parent is not None and isinstance(parent.parentWidget(), QScrollArea)


def wrap_docked(widget: QWidget) -> bool:
    """Put ``widget`` in a scroll area inside the dock widget it sits straight in; whether it did."""
    dock = widget.parentWidget()
    if not isinstance(dock, QDockWidget) or dock.widget() is not widget or scrolls(widget):
        return False
    area = scrollable(widget)
    dock.setWidget(area)
    dock.setMinimumHeight(0)  # the dock had taken the bare content's height as its minimum: the layout's again
    widget.show()
    _back_on_screen(dock.window())
    return True


def _back_on_screen(window: QWidget) -> None:
    """Shrink a window the bare docks had made taller than its screen (Qt never shrinks one by itself)."""
    screen = window.screen() if window is not None else None
    if screen is None:
        return
    room = screen.availableGeometry().height() - (window.frameGeometry().height() - window.height())
    if window.height() > room:
        window.resize(window.width(), max(room, window.minimumSizeHint().height()))


class ScrollsWhenDocked:
    """Mixin for a dock body (put before ``QWidget``): on first show in a bare dock, it wraps itself to scroll."""

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)  # type: ignore[misc]
        if not getattr(self, "_dock_checked", False):
            self._dock_checked = True
            QTimer.singleShot(0, lambda: _wrap_if_alive(self))  # type: ignore[arg-type]


def _wrap_if_alive(widget: QWidget) -> None:
    """``wrap_docked``, unless the dock was closed (its C++ object deleted) before the event loop came back."""
    try:
        wrap_docked(widget)
    except RuntimeError:
        pass
