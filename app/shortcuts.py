"""Keyboard shortcuts of the reading room, and the Help dialog that lists them (one table for both).

``SHORTCUTS`` is the only place a key is chosen: ``register_shortcuts`` binds each entry on the napari
viewer (``viewer.bind_key``: active while the canvas has the keyboard, like napari's own keys) and
``ShortcutsDialog`` (Help → Keyboard shortcuts) shows the same rows, so the dialog cannot drift from the
bindings. Keys were picked free of napari's defaults for the viewer and for every layer type (napari's
``default_shortcuts`` and its menu key bindings; a test checks it): an active layer's keys win in napari,
so a clash would silently lose our action whenever, say, the mask layer is selected. napari's own
Left/Right (previous/next slice) stay; Up/Down add the PACS habit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QDialog, QDialogButtonBox, QHeaderView, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout

from .messages import say
from .results import current_index, find_layer, goto_index
from .state import get_state
from .windowlevel import cycle, target_layer

if TYPE_CHECKING:
    import napari

log = logging.getLogger("anomalens.app")


@dataclass(frozen=True)
class Shortcut:
    """One key of the table: its name for code, napari's key name, what it does (the Help text), its handler."""

    action: str
    key: str
    text: str
    handler: Callable[[Any], Any]


@dataclass(frozen=True)
class MouseGesture:
    """A mouse action listed in the Help dialog beside the keys (not a key binding)."""

    gesture: str
    text: str


# -- handlers (called with the viewer) ---------------------------------------------------------------

def scan_of(viewer: napari.Viewer) -> Any:
    """The scan layer the keys move through: the current result's, else the scan the window follows."""
    res = get_state(viewer).results
    if res is not None:
        layer = find_layer(viewer, res.layer_name)
        if layer is not None:
            return layer
    return target_layer(viewer)


def step_slice(viewer: napari.Viewer, step: int) -> int | None:
    """Show the slice ``step`` away from the current one (stops at the ends); returns the new z."""
    layer = scan_of(viewer)
    if layer is None or layer.ndim < 3:
        return None
    n = int(layer.data.shape[-3])
    z = min(max(current_index(viewer, layer) + int(step), 0), n - 1)
    goto_index(viewer, layer, z)
    return z


def flagged_slices(viewer: napari.Viewer) -> list[int]:
    """The z indices of the current result's flagged slices (``SliceScore.flagged``), ascending."""
    res = get_state(viewer).results
    if res is None:
        return []
    return sorted(int(z) for z, s in res.slices.items() if getattr(s, "flagged", False))


def step_flagged(viewer: napari.Viewer, step: int) -> int | None:
    """Show the next (``step`` 1) or previous (-1) flagged slice, wrapping around; returns its z."""
    flagged = flagged_slices(viewer)
    if not flagged:
        say(viewer, "no flagged slice in the current result")
        return None
    layer = scan_of(viewer)
    z = current_index(viewer, layer)
    after = [f for f in flagged if (f > z if step > 0 else f < z)]
    wrapped = not after
    target = (after[0] if step > 0 else after[-1]) if after else (flagged[0] if step > 0 else flagged[-1])
    goto_index(viewer, layer, target)
    k = flagged.index(target) + 1
    say(viewer, f"flagged slice {target} ({k} of {len(flagged)}){' — wrapped around' if wrapped else ''}")
    return target


def toggle_result_layer(viewer: napari.Viewer, role: str) -> bool | None:
    """Show/hide the current result's heatmap (``role`` "heatmap") or mask; returns the new visibility."""
    res = get_state(viewer).results
    layer = None if res is None else find_layer(viewer, res.heatmap_name if role == "heatmap" else res.mask_name)
    if layer is None:
        say(viewer, f"no {role} to show: score the scan first" if res is None or role == "heatmap"
            else "this result has no mask (the model is not calibrated)")
        return None
    layer.visible = not layer.visible
    return bool(layer.visible)


def calibration_dock(viewer: napari.Viewer) -> Any:
    """The window's Calibration dock: the desktop window's, or one opened from napari's Plugins menu; else None.

    A plain napari viewer keeps no list of AnomaLens docks: N, Shift+N and Ctrl+Shift+N did nothing there while
    the dock's buttons worked, so the dock is looked for among the window's widgets.
    """
    dock = getattr(viewer.window, "anomalens_docks", {}).get("Calibration")
    if dock is not None:
        return dock
    from .widgets.calibration import CalibrationWidget

    qt_window = getattr(viewer.window, "_qt_window", None)
    found = qt_window.findChildren(CalibrationWidget) if qt_window is not None else []
    shown = [w for w in found if w.isVisible()]
    return (shown or found or [None])[0]


def _through_calibration(viewer: napari.Viewer, act: Callable[[Any], Any]) -> Any:
    """Do ``act(dock)`` on the Calibration dock (its checks, its status line), and say the line in the window."""
    dock = calibration_dock(viewer)
    if dock is None:
        say(viewer, "the Calibration dock is not open")
        return None
    done = act(dock)
    say(viewer, dock.status.text() if hasattr(dock, "status") else "")
    return done


def mark_normal(viewer: napari.Viewer) -> list[int] | None:
    """Mark the shown slice normal through the Calibration dock."""
    return _through_calibration(viewer, lambda dock: dock.mark_current_slice())


def undo_mark(viewer: napari.Viewer) -> bool | None:
    """Undo the shown study's latest mark or unmark (the Calibration dock's Undo)."""
    return _through_calibration(viewer, lambda dock: dock.undo())


def redo_mark(viewer: napari.Viewer) -> bool | None:
    """Apply again the mark or unmark undone last (the Calibration dock's Redo)."""
    return _through_calibration(viewer, lambda dock: dock.redo())


def toggle_three_plane(viewer: napari.Viewer) -> bool | None:
    """The linked axial/coronal/sagittal view (``app.threeplane``), on or off."""
    try:
        from . import threeplane
    except ImportError as exc:
        log.warning("the three-plane view is not available: %s", exc)
        say(viewer, "the three-plane view is not available in this version")
        return None
    return threeplane.toggle_three_plane(viewer)


def toggle_docks(viewer: napari.Viewer) -> bool:
    """Hide or show every AnomaLens dock at once (the canvas takes the room)."""
    from .desktop import toggle_docks as toggle

    return toggle(viewer)


#: The reading room's keys: (napari key, Help text, handler). Registered and documented from here only.
SHORTCUTS: tuple[Shortcut, ...] = (
    Shortcut("next_slice", "Down", "Next slice", lambda v: step_slice(v, 1)),
    Shortcut("previous_slice", "Up", "Previous slice", lambda v: step_slice(v, -1)),
    Shortcut("next_flagged", "PageDown", "Next flagged slice (wraps around)", lambda v: step_flagged(v, 1)),
    Shortcut("previous_flagged", "PageUp", "Previous flagged slice (wraps around)", lambda v: step_flagged(v, -1)),
    Shortcut("toggle_heatmap", "H", "Show/hide the heatmap", lambda v: toggle_result_layer(v, "heatmap")),
    Shortcut("toggle_mask", "Shift+M", "Show/hide the predicted mask", lambda v: toggle_result_layer(v, "mask")),
    Shortcut("mark_normal", "N", "Mark the current slice normal", mark_normal),
    Shortcut("undo_mark", "Shift+N", "Undo the last mark", undo_mark),
    Shortcut("redo_mark", "Ctrl+Shift+N", "Redo the mark undone last", redo_mark),
    Shortcut("next_window", "W", "Next window/level preset", lambda v: cycle(v, 1)),
    Shortcut("previous_window", "Shift+W", "Previous window/level preset", lambda v: cycle(v, -1)),
    Shortcut("three_plane", "Ctrl+3", "Three-plane view (axial, coronal, sagittal) on/off", toggle_three_plane),
    Shortcut("toggle_docks", "Ctrl+Shift+D", "Show/hide the AnomaLens docks", toggle_docks),
)

#: Mouse actions listed with the keys.
MOUSE: tuple[MouseGesture, ...] = (
    MouseGesture("Right-drag ←→", "Window width (right: wider, left: narrower)"),
    MouseGesture("Right-drag ↑↓", "Window level (down: higher level, darker; up: lower, brighter)"),
    MouseGesture("Ctrl+wheel", "Next/previous slice (napari)"),
    MouseGesture("Left-drag / wheel", "Pan / zoom (napari)"),
)


def key_for(action: str) -> str:
    """The key of a table entry (menus and tooltips quote it from here)."""
    for s in SHORTCUTS:
        if s.action == action:
            return s.key
    raise KeyError(action)


def _bound(handler: Callable[[Any], Any]) -> Callable[[Any], None]:
    def run(viewer: Any) -> None:
        viewer = getattr(viewer, "__wrapped__", viewer)
        try:
            handler(viewer)
        except Exception as exc:  # a key press must never take the viewer down
            from .messages import notify_error

            notify_error(exc, "shortcut")

    return run


def register_shortcuts(viewer: napari.Viewer) -> list[Shortcut]:
    """Bind every entry of ``SHORTCUTS`` on ``viewer`` (again after a second call: overwritten, not doubled)."""
    for s in SHORTCUTS:
        viewer.bind_key(s.key, _bound(s.handler), overwrite=True)
    return list(SHORTCUTS)


def shortcut_rows() -> list[tuple[str, str]]:
    """(key, text) rows of the Help dialog, in table order: the keys, then the mouse."""
    return [(s.key, s.text) for s in SHORTCUTS] + [(m.gesture, m.text) for m in MOUSE]


class ShortcutsDialog(QDialog):
    """Help → Keyboard shortcuts: the table the keys are registered from, plus the mouse gestures."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("AnomaLens keyboard shortcuts")
        rows = shortcut_rows()
        self.table = QTableWidget(len(rows), 2)
        self.table.setHorizontalHeaderLabels(["Key", "Action"])
        for i, (key, text) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(key))
            self.table.setItem(i, 1, QTableWidgetItem(text))
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        note = QLabel("Keys act while the image has the keyboard focus (click it once). napari's own keys "
                      "(Left/Right slices, Ctrl+R reset view, Ctrl+Alt+/ all of them) still work.")
        note.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(note)
        layout.addWidget(buttons)
        # Tall enough for every row without scrolling (where the screen allows): the list is short.
        rows_h = sum(self.table.rowHeight(i) for i in range(len(rows))) + self.table.horizontalHeader().height()
        screen = self.screen().availableGeometry().height() if self.screen() is not None else 900
        self.resize(560, min(rows_h + 150, int(screen * 0.9)))

    def rows(self) -> list[tuple[str, str]]:
        """What the dialog shows, read back from its table (tests compare it with ``shortcut_rows``)."""
        return [(self.table.item(i, 0).text(), self.table.item(i, 1).text()) for i in range(self.table.rowCount())]


def show_shortcuts(viewer: napari.Viewer) -> ShortcutsDialog:
    """Open the shortcuts dialog (non-modal: it can stay open beside the image)."""
    dialog = ShortcutsDialog(viewer.window._qt_window)
    dialog.show()
    viewer.window.anomalens_shortcuts_dialog = dialog
    return dialog
