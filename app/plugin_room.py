"""The reading room for napari users who open AnomaLens docks from the Plugins menu.

The desktop window (``desktop.setup_viewer``) sets up the radiologist's habits: keyboard shortcuts,
right-drag window/level, Help → AnomaLens keyboard shortcuts, View → Three-plane view. A napari user who adds
an AnomaLens dock to their own viewer got none of them, while the docks' tooltips and the canvas ("N · marked
normal") named keys that did nothing. The first AnomaLens dock in a viewer schedules :func:`setup`, which runs
after the dock is built and does nothing in the desktop window (it has its reading room already); the W/L
toolbar and the dock toggles stay the desktop window's, since a napari user keeps napari's own layout.
"""

from __future__ import annotations

from typing import Any

#: Window attribute the desktop window sets when it has made its own reading room (``desktop.setup_reading_room``).
DESKTOP_MARK = "anomalens_toolbar"
#: Window attribute set once this module has set up a plugin viewer.
PLUGIN_MARK = "anomalens_plugin_room"


def schedule(viewer: Any) -> None:
    """Set up the plugin reading room once control returns to the event loop (the desktop marks itself first)."""
    from qtpy.QtCore import QTimer

    if getattr(viewer, "window", None) is not None:
        QTimer.singleShot(0, lambda: setup(viewer))


def setup(viewer: Any) -> bool:
    """Shortcuts, right-drag W/L, the Help and View entries on a napari viewer; whether it set them up now."""
    window = getattr(viewer, "window", None)
    qt_window = getattr(window, "_qt_window", None)
    if window is None or qt_window is None or getattr(window, DESKTOP_MARK, None) is not None \
            or getattr(window, PLUGIN_MARK, False):
        return False
    try:
        qt_window.isVisible()  # the viewer closed before the event loop came back: nothing to set up
    except RuntimeError:
        return False
    from . import statusvalues
    from .desktop import MenuEntries
    from .reader import prefer_anomalens_reader
    from .shortcuts import register_shortcuts
    from .threeplane import add_three_plane_menu_item
    from .windowlevel import install_right_drag

    register_shortcuts(viewer)
    install_right_drag(viewer)
    statusvalues.install()  # -1000 HU, not -1e+03
    window.anomalens_menus = MenuEntries(viewer, docks=False)
    add_three_plane_menu_item(viewer)
    prefer_anomalens_reader()
    setattr(window, PLUGIN_MARK, True)
    return True
