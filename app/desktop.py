"""``anomalens-viewer [PATH]``: napari with the AnomaLens docks laid out, our title, icon and File menu.

The app never dies on a bad file: reading runs in a worker and every failure becomes a message (and a
log line), while the layers already loaded stay. Uncaught exceptions in callbacks are shown by napari's
notification manager (``napari.run(gui_exceptions=True)``) instead of ending the process.

``viewer.log`` (``setup_logging``, in the user's log folder) is redacted: every path the viewer opens or
writes is registered with ``engine.logredact`` before it can appear in a line. Hidden options for tests:
``--quit-after SECONDS`` (start, describe the window, close) and ``--score-and-quit MODEL`` (open PATH,
score it with MODEL through the Detector dock, close: ``score_and_quit``).
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QTimer
from qtpy.QtGui import QAction
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QMenu,
    QProgressBar,
    QPushButton,
    QToolBar,
    QToolButton,
    QWidget,
)

from . import glcache, heap
from .elided import ElidedLabel
from .jobs import JobRunner
from .messages import log, notify_error
from .recent import RecentFiles
from .widgets.docking import scrollable

if TYPE_CHECKING:
    import napari

    from ..engine.demo import DemoOutput
    from ..engine.detectors import Detector
    from .results import ScanResults

TITLE = "AnomaLens"
ICON = "anomalens.png"
#: napari's get_qapp renders its icon argument as SVG (a PNG there only logs "Cannot read file").
APP_ICON_SVG = "anomalens.svg"
PLUGIN_NAME = "anomalens"
#: File → Export entries: (Export dock button prefix, menu text, Export dock method).
_EXPORT_ENTRIES = (("heatmap", "Heatmap as NIfTI…", "export_heatmap"), ("mask", "Mask as NIfTI…", "export_mask"),
                   ("seg", "Mask as DICOM SEG…", "export_seg"), ("png", "Snapshot as PNG…", "export_snapshot"),
                   ("csv", "Slice scores as CSV…", "export_scores"), ("pacs", "Send to PACS…", "send_to_pacs"))
_SCAN_FILTER = "Scans (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.dcm *.dicom *.ima);;All files (*)"


def resource_path(name: str) -> Path:
    """A file shipped in ``anomalens.resources`` (an editable install or a wheel: both are real files)."""
    return Path(str(resources.files("anomalens.resources").joinpath(name)))


def ensure_plugin_registered() -> None:
    """Register our npe2 manifest when the ``napari.manifest`` entry point is not installed (a source tree)."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    try:
        pm.get_manifest(PLUGIN_NAME)
    except KeyError:
        path = Path(str(resources.files("anomalens.app").joinpath("napari.yaml")))
        pm.register(PluginManifest.from_file(path))


class FileActions(QObject):
    """File → Open scan / Open DICOM folder / Open recent (reading in a worker, status-bar progress) / Export."""

    def __init__(self, viewer: napari.Viewer, recent: RecentFiles | None = None) -> None:
        super().__init__(viewer.window._qt_window)
        self.viewer = viewer
        self.recent = recent or RecentFiles()
        self.open_file_action = QAction("Open scan…", self)
        self.open_folder_action = QAction("Open DICOM folder…", self)
        self.recent_menu = QMenu("Open recent scan")
        self.open_file_action.triggered.connect(self.choose_file)
        self.open_folder_action.triggered.connect(self.choose_folder)
        self.open_pacs_action = QAction("Open from PACS…", self)
        self.open_pacs_action.triggered.connect(self.open_pacs)
        self.pacs_dialog: Any = None  # made on first use (``widgets.pacs_dialog``)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.export_menu = QMenu("Export")
        self.export_actions: dict[str, QAction] = {}
        for key, text, method in _EXPORT_ENTRIES:
            act = self.export_menu.addAction(text)
            act.triggered.connect(lambda _checked=False, method=method: self._export(method))
            self.export_actions[key] = act
        self.export_menu.aboutToShow.connect(self._sync_export)

        status = QWidget()
        row = QHBoxLayout(status)
        row.setContentsMargins(0, 0, 0, 0)
        self.status, self.bar, self.cancel_button = ElidedLabel(""), QProgressBar(), QPushButton("Cancel")
        self.bar.setMaximumWidth(160)
        for w in (self.status, self.bar, self.cancel_button):
            row.addWidget(w)
        self.jobs = JobRunner(self.bar, self.cancel_button, self.status, self)
        viewer.window._qt_window.statusBar().addPermanentWidget(status)
        self.file_menu = viewer.window.file_menu
        self._install()
        # napari rebuilds its File menu when plugins change it; put our entries back when that happened.
        self.file_menu.aboutToShow.connect(self._install)

    def _install(self) -> None:
        actions = self.file_menu.actions()
        if self.open_file_action in actions:
            return
        first = actions[0] if actions else None
        self.file_menu.insertAction(first, self.open_file_action)
        self.file_menu.insertAction(first, self.open_folder_action)
        self.file_menu.insertAction(first, self.open_pacs_action)
        self.file_menu.insertMenu(first, self.recent_menu)
        self.file_menu.insertMenu(first, self.export_menu)
        if first is not None:
            self.file_menu.insertSeparator(first)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        entries = self.recent.load()
        for p in entries:
            act = self.recent_menu.addAction(str(p))
            act.triggered.connect(lambda _checked=False, p=p: self.open_path(p))
        if not entries:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list").triggered.connect(self.recent.clear)

    def export_dock(self) -> Any:
        """The Export dock the menu drives (same functions, same checks, same background writing)."""
        return getattr(self.viewer.window, "anomalens_docks", {}).get("Export")

    def _sync_export(self) -> None:
        """Mirror the dock's buttons: an entry is enabled (with its tooltip) exactly when its button is."""
        dock = self.export_dock()
        self.export_menu.setToolTipsVisible(True)
        for key, act in self.export_actions.items():
            button = getattr(dock, f"{key}_button", None) if dock is not None else None
            act.setEnabled(button is not None and button.isEnabled())
            act.setToolTip(button.toolTip() if button is not None else "the Export dock is not available")

    def _export(self, method: str) -> None:
        dock = self.export_dock()
        if dock is not None:
            getattr(dock, method)()

    def choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.viewer.window._qt_window, "Open scan", "", _SCAN_FILTER)
        if path:
            self.open_path(path)

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self.viewer.window._qt_window, "Open DICOM folder")
        if path:
            self.open_path(path)

    def open_pacs(self) -> Any:
        """File → Open from PACS…: search a configured PACS and open a series (``widgets.pacs_dialog``)."""
        from .widgets.pacs_dialog import show_pacs_dialog

        return show_pacs_dialog(self)

    def open_path(self, path: str | Path, series_uid: str | None = None, nan_policy: str | None = None) -> bool:
        """Read a scan in the background and add it as a layer; failures become a message, nothing is lost.

        A DICOM folder with several series asks which one to open (instead of failing); so does a scan with
        NaN or infinite voxels, whether to open it with them replaced (the CLI's ``--nan clean``).
        """
        from ..engine.errors import MultipleSeriesError, NonFiniteVoxelsError
        from ..engine.io import read_scan
        from ..engine.logredact import remember
        from .reader import image_layer_data

        remember(path)  # as given, relative too: the job's name, its errors and log lines show a token
        p = Path(path).expanduser()

        def work(progress: Any, cancel: Any) -> Any:
            try:
                return image_layer_data(read_scan(p, series_uid=series_uid, nan_policy=nan_policy,
                                                  progress=progress, cancel=cancel))
            except (MultipleSeriesError, NonFiniteVoxelsError) as exc:
                return exc  # handled on the UI thread: the user picks a series, or whether to clean

        def done(result: Any) -> None:
            if isinstance(result, MultipleSeriesError):
                uid = self.choose_series(result.series)
                if uid:
                    QTimer.singleShot(0, lambda: self.open_path(p, series_uid=uid))
                return
            if isinstance(result, NonFiniteVoxelsError):
                if self.confirm_clean(p.name, result):
                    QTimer.singleShot(0, lambda: self.open_path(p, series_uid=series_uid, nan_policy="clean"))
                else:
                    self.jobs.status.setText(f"{p.name} not opened: {result.bad} voxels are NaN or infinite")
                return
            data, kwargs, _kind = result
            if not self.make_room(str(kwargs.get("name") or p.name)):
                return
            self.viewer.add_image(data, **kwargs)
            self.viewer.reset_view()
            self.recent.add(p)

        return self.jobs.start(f"Opening {p.name}", work, done)

    def study_layers(self) -> list[Any]:
        """The shown study's layers: scans, their heatmaps and masks, reference lesions, highlights, lassos."""
        from .reader import ROLE_KEY

        return [lyr for lyr in self.viewer.layers if lyr.metadata.get(ROLE_KEY) in STUDY_ROLES]

    def make_room(self, new: str) -> bool:
        """Close the shown study before a newly read one is added, as a reading station does; False: cancelled.

        Both in one viewer drew the new scan off the shown slice (its own world position), made the slice
        slider span both ("150 | 171") and left the docks on the old study. A study with results asks first
        (``ask_replace``): its heatmaps and masks close (marks, models and exported files are kept), or both
        stay, or nothing is opened.
        """
        from .reader import ROLE_KEY
        from .threeplane import close_three_plane

        shown = self.study_layers()
        if not shown:
            return True
        if any(lyr.metadata.get(ROLE_KEY) in ("heatmap", "mask") for lyr in shown):
            scans = [lyr.name for lyr in shown if lyr.metadata.get(ROLE_KEY) == "scan"]
            choice = self.ask_replace(scans[0] if scans else shown[0].name, new)
            if choice == "cancel":
                self.status.setText(f"{new}: not opened; the shown study stays")  # not the job's "done"
                return False
            if choice == "both":
                return True
        close_three_plane(self.viewer)
        for lyr in shown:
            if lyr in self.viewer.layers:
                self.viewer.layers.remove(lyr)
        return True

    def ask_replace(self, shown: str, new: str) -> str:
        """Ask whether ``new`` replaces the shown study and its results: "replace", "both" or "cancel"."""
        from qtpy.QtWidgets import QMessageBox

        box = QMessageBox(self.viewer.window._qt_window)
        box.setWindowTitle("Open another study")
        box.setText(f"Close {shown} and its results to show {new}?")
        box.setInformativeText("Marks, models and exported files are kept; a mask you edited by hand is lost "
                               "unless you export it first.")
        replace = box.addButton("Close and open", QMessageBox.ButtonRole.AcceptRole)
        both = box.addButton("Keep both", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(replace)
        box.exec()
        clicked = box.clickedButton()
        return "replace" if clicked is replace else "both" if clicked is both else "cancel"

    def confirm_clean(self, name: str, exc: Any) -> bool:
        """Ask whether to open a scan with its NaN/infinite voxels replaced by its lowest value (the file stays)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self.viewer.window._qt_window, "Voxels without a value",
            f"{name}: {exc.bad} of {exc.total} voxels are NaN or infinite, which would spoil every score.\n\n"
            "Open it with them replaced by the scan's lowest value? The file itself is not changed, and the "
            "result's warnings will say so.")
        return answer == QMessageBox.StandardButton.Yes

    def choose_series(self, series: list[dict]) -> str | None:
        """Ask which DICOM series to open; returns its UID (None when the user cancels)."""
        from qtpy.QtWidgets import QInputDialog

        labels = [f"{r.get('description') or '(no description)'} — {r.get('modality', '')}, "
                  f"{r.get('n_files', '?')} files [{r.get('uid')}]" for r in series]
        choice, ok = QInputDialog.getItem(self.viewer.window._qt_window, "Several series",
                                          "This folder holds several series. Open which one?", labels, 0, False)
        if not ok or choice not in labels:
            return None
        return series[labels.index(choice)].get("uid")


#: Layer roles that belong to the shown study (``FileActions.make_room`` closes them for the next one).
STUDY_ROLES = ("scan", "heatmap", "mask", "lesion", "highlight", "lasso")
#: Below this screen height (pixels: 1080p included) the SCR dock joins the tab group, so the Detector dock
#: keeps room for its score curve: the three docks' natural heights add up to about 1,150 pixels.
SMALL_SCREEN = 1300
#: Narrowest the right-hand docks get (the model list and the sliders stay readable; wider content scrolls).
#: The right-hand column's width on opening: this share of the screen's width, within the bounds below.
RIGHT_SHARE, RIGHT_MIN, RIGHT_MAX = 0.25, 330, 440
#: Share of the window's width the image canvas must keep: napari's layer list and controls (left) are shown
#: on opening only where they leave it that much with the right column at least ``RIGHT_MIN`` wide (1,920 px
#: screens, not 1,366 px ones); the toolbar's "Layers" button shows them anyway.
CANVAS_SHARE = 0.62
#: Width napari's layer controls take once a layer is selected (320 px in napari 0.9 for every layer type).
NAPARI_DOCK_WIDTH = 320
#: Share of the right-hand column's height each stacked dock gets (the tab group takes the rest).
_DOCK_SHARE = {"Detector": 0.4, "SCR": 0.22}
_DOCK_SHARE_SMALL = {"Detector": 0.58}
_DOCK_SHARE_TINY = {"Detector": 0.69}  # a 768-pixel screen: the curve needs the room, SCR's tab still fits


def add_docks(viewer: napari.Viewer) -> dict[str, QWidget]:
    """Create the AnomaLens docks (Detector and SCR on the right; Poincaré disk, Calibration, Export tabbed below).

    On a screen up to 1080p SCR is tabbed with the others. Every dock scrolls, so the window
    never grows taller than the screen; the column is shared out once the window has its size.
    """
    from .widgets.detector import DetectorWidget
    from .widgets.scr import ScrWidget

    small = _screen_height(viewer) < SMALL_SCREEN
    docks: dict[str, QWidget] = {}
    frames: dict[str, Any] = {}
    for name, factory, tabify in (("Detector", DetectorWidget, False), ("SCR", ScrWidget, False),
                                  ("Poincaré disk", _optional("poincare", "PoincareWidget"), small),
                                  ("Calibration", _optional("calibration", "CalibrationWidget"), True),
                                  ("Export", _optional("export", "ExportWidget"), True)):
        if factory is None:
            continue
        try:
            widget = factory(viewer)
        except Exception as exc:  # one broken dock must not stop the app
            notify_error(exc, f"the {name} dock could not start")
            continue
        frames[name] = viewer.window.add_dock_widget(scrollable(widget), name=name, area="right", tabify=tabify)
        docks[name] = widget
    viewer.window.anomalens_frames = frames
    viewer.window.anomalens_first_tab = "SCR" if small else "Poincaré disk"
    viewer.window.anomalens_shares = (_DOCK_SHARE_TINY if _screen_height(viewer) < 900 else _DOCK_SHARE_SMALL) \
        if small else _DOCK_SHARE
    QTimer.singleShot(0, lambda: balance_docks(viewer))
    return docks


def balance_docks(viewer: napari.Viewer) -> None:
    """Share the right-hand column out: the Detector dock (curve included) first, then SCR, then the tabs."""
    from qtpy.QtCore import Qt

    frames = getattr(viewer.window, "anomalens_frames", {})
    qt = getattr(viewer.window, "_qt_window", None)
    if qt is None:  # the window was closed before the timer fired
        return
    try:
        first = frames.get(getattr(viewer.window, "anomalens_first_tab", ""))
        if first is not None:
            first.raise_()  # the tab group opens on its first tab, not on the last one added
        column = [f for f in frames.values() if f.isVisible()]
    except RuntimeError:  # the window was closed before the timer fired
        return
    stacked = column  # a tab group's hidden tabs are not visible: the group counts once
    width = getattr(viewer.window, "anomalens_right_width", None)
    if width and stacked:
        qt.resizeDocks(stacked[:1], [int(width)], Qt.Orientation.Horizontal)  # the column's width, once
    left = [d for d in napari_docks(viewer) if d.isVisible()]
    if width and left:  # napari's layer docks as narrow as their content allows: the canvas gets the rest
        qt.resizeDocks(left[:1], [max(d.minimumSizeHint().width() for d in left)], Qt.Orientation.Horizontal)
    if len(stacked) < 2:
        return
    total = max(qt.height() - 100, 300)
    names = {id(f): n for n, f in frames.items()}
    shares = getattr(viewer.window, "anomalens_shares", _DOCK_SHARE)
    sizes = [int(total * shares.get(names[id(f)], 0.0)) for f in stacked]
    rest = total - sum(sizes)
    sizes = [s or max(rest, 150) for s in sizes]
    qt.resizeDocks(stacked, sizes, Qt.Orientation.Vertical)


def _screen_height(viewer: napari.Viewer) -> int:
    try:
        screen = viewer.window._qt_window.screen()
        return int(screen.availableGeometry().height())
    except (AttributeError, RuntimeError):
        return 10_000


def _optional(module: str, cls: str) -> Any:
    import importlib

    try:
        return getattr(importlib.import_module(f"anomalens.app.widgets.{module}"), cls)
    except (ImportError, AttributeError) as exc:
        log.warning("the %s dock is not available: %s", cls, exc)
        return None


# -- the reading room: fitting the screen, the toolbar, keys ----------------------------------------

def napari_docks(viewer: napari.Viewer) -> list[Any]:
    """The docks napari puts beside the canvas (layer controls, layer list)."""
    qv = viewer.window._qt_viewer
    return [d for d in (getattr(qv, "dockLayerControls", None), getattr(qv, "dockLayerList", None)) if d is not None]


def fit_to_screen(viewer: napari.Viewer) -> dict[str, Any]:
    """Fill the screen's available area and share its width out so the image canvas gets most of it.

    The window takes the screen's available area (and asks the window manager to maximise it). The
    AnomaLens column on the right gets ``RIGHT_SHARE`` of the width within ``RIGHT_MIN``..``RIGHT_MAX``;
    napari's layer controls and layer list (left) are shown only where the canvas still keeps
    ``CANVAS_SHARE`` of the width with them (a 1,920 px screen; on 1,366 px they start hidden, one click on
    the toolbar's "Layers" away). Returns the plan, for the log and tests.
    """
    from qtpy.QtWidgets import QStyle

    qt = viewer.window._qt_window
    avail = qt.screen().availableGeometry()
    width = avail.width()
    sep = qt.style().pixelMetric(QStyle.PixelMetric.PM_DockWidgetSeparatorExtent) + 4  # separator and margins
    left = max([NAPARI_DOCK_WIDTH, *(d.minimumSizeHint().width() for d in napari_docks(viewer))])
    docks_room = (1.0 - CANVAS_SHARE) * width - 2 * sep  # what the canvas leaves to the columns
    show_left = docks_room - left >= RIGHT_MIN
    right = int(max(RIGHT_MIN, min(RIGHT_SHARE * width, RIGHT_MAX, docks_room - (left if show_left else 0))))
    set_layer_docks_visible(viewer, show_left)
    viewer.window.anomalens_right_width = right
    qt.setGeometry(avail)
    qt.showMaximized()  # a window manager also accounts for the frame; without one (Xvfb) the geometry stands
    QTimer.singleShot(50, lambda: balance_docks(viewer))
    return {"screen": (width, avail.height()), "right_width": right, "napari_docks": show_left}


def set_layer_docks_visible(viewer: napari.Viewer, visible: bool) -> None:
    """Show or hide napari's layer controls and layer list (they cost the canvas about 280 px)."""
    for dock in napari_docks(viewer):
        dock.setVisible(bool(visible))
    _sync_toolbar(viewer)


def layer_docks_visible(viewer: napari.Viewer) -> bool:
    return any(not d.isHidden() for d in napari_docks(viewer))


def docks_visible(viewer: napari.Viewer) -> bool:
    """Whether any AnomaLens dock is open (a tab behind another counts as open; ``isHidden``: closed by hand)."""
    return any(not f.isHidden() for f in getattr(viewer.window, "anomalens_frames", {}).values())


def set_docks_visible(viewer: napari.Viewer, visible: bool) -> bool:
    """Hide every AnomaLens dock, or show again those that were open before they were hidden; returns ``visible``.

    The canvas takes the freed room (``CanvasFitter`` refits the image unless the user zoomed).
    """
    frames = getattr(viewer.window, "anomalens_frames", {})
    if not visible:
        if docks_visible(viewer):
            viewer.window.anomalens_hidden_docks = [n for n, f in frames.items() if not f.isHidden()]
        for f in frames.values():
            f.setVisible(False)
    else:
        names = getattr(viewer.window, "anomalens_hidden_docks", None) or list(frames)
        for n in names:
            if n in frames:
                frames[n].setVisible(True)
        viewer.window.anomalens_hidden_docks = None
        QTimer.singleShot(0, lambda: balance_docks(viewer))
    _sync_toolbar(viewer)
    return visible


def toggle_docks(viewer: napari.Viewer) -> bool:
    """Hide the AnomaLens docks when any is open, else show them; returns whether they are shown now."""
    return set_docks_visible(viewer, not docks_visible(viewer))


class CanvasFitter(QObject):
    """Keeps the image fitted to the canvas: after a scan is added and whenever the canvas changes size.

    A resize refits only while the view is still the one this fitter made: once the user zoomed or
    panned, their view is kept (as a PACS viewer keeps a zoomed image when a panel opens).
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__(viewer.window._qt_window)
        self.viewer = viewer
        self.fits = 0
        self._fitted: tuple[float, tuple[float, ...]] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(30)  # a window resize comes as a burst of size events: fit once after it
        self._timer.timeout.connect(self.fit)
        viewer.canvas.events.size.connect(self._on_resize)
        viewer.layers.events.inserted.connect(self._on_inserted)

    def _camera(self) -> Any:
        scene = getattr(self.viewer, "scene", None)
        return scene.camera if scene is not None else self.viewer.camera

    def _state(self) -> tuple[float, tuple[float, ...]]:
        cam = self._camera()
        return (float(cam.zoom), tuple(float(c) for c in cam.center))

    def untouched(self) -> bool:
        """True while the camera is where the last fit put it (or nothing was fitted yet)."""
        import numpy as np

        if self._fitted is None:
            return True
        zoom, center = self._state()
        return (np.isclose(zoom, self._fitted[0], rtol=1e-6) and len(center) == len(self._fitted[1])
                and np.allclose(center, self._fitted[1], rtol=1e-6, atol=1e-6))

    def fit(self) -> None:
        """Fit the layers to the canvas now (napari's ``reset_view``)."""
        try:
            if not len(self.viewer.layers):
                return
            self.viewer.reset_view()
        except RuntimeError:  # the window is being closed
            return
        self.fits += 1
        self._fitted = self._state()

    def _on_resize(self, event: Any = None) -> None:
        if self.untouched():
            self._timer.start()

    def _on_inserted(self, event: Any = None) -> None:
        from .windowlevel import is_scan_image

        layer = getattr(event, "value", None)
        if layer is not None and is_scan_image(layer):  # not a heatmap, mask or marker: those keep the view
            self._timer.start()


class ReadingBar(QWidget):
    """The reading room's controls: window/level chooser, AnomaLens docks, napari's layer docks, three planes, keys.

    It sits in the menu bar's right-hand corner (no screen height spent on it: a 768-pixel screen needs
    every row for the image), or in a toolbar where the menu bar is the system's (macOS).
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        from .shortcuts import key_for, show_shortcuts, toggle_three_plane
        from .windowlevel import WindowLevelBar

        super().__init__()
        self.viewer = viewer
        self.setObjectName("anomalens_reading_bar")
        # napari's theme draws checked tool buttons like unchecked ones: show the docks' state.
        self.setStyleSheet("QToolButton:checked { background-color: rgba(90, 130, 220, 0.45); border-radius: 3px; }")
        self._row = QHBoxLayout(self)
        self._row.setContentsMargins(0, 0, 4, 0)
        self._row.setSpacing(2)
        self.window_level = WindowLevelBar(viewer)
        self._row.addWidget(self.window_level)
        tip = f"Show/hide the AnomaLens docks ({key_for('toggle_docks')})"
        self.docks_button = self._button("AnomaLens docks", tip, checkable=True)
        self.docks_button.clicked.connect(lambda checked: set_docks_visible(viewer, checked))
        self.layers_button = self._button("Layers", "Show/hide napari's layer list and layer controls", checkable=True)
        self.layers_button.clicked.connect(lambda checked: set_layer_docks_visible(viewer, checked))
        self.three_button = self._button("Three planes", f"Linked axial, coronal and sagittal views "
                                                         f"({key_for('three_plane')})")
        self.three_button.clicked.connect(lambda: toggle_three_plane(viewer))
        self.keys_button = self._button("Shortcuts", "Keyboard shortcuts (also in the Help menu)")
        self.keys_button.clicked.connect(lambda: show_shortcuts(viewer))
        for dock in [*napari_docks(viewer), *getattr(viewer.window, "anomalens_frames", {}).values()]:
            dock.visibilityChanged.connect(self.sync)
        self.sync()

    def place(self) -> None:
        """Put the bar in the menu bar's corner, else (a native menu bar) in a toolbar above the canvas."""
        from qtpy.QtCore import Qt

        qt = self.viewer.window._qt_window
        menubar = qt.menuBar()
        if not menubar.isNativeMenuBar():
            menubar.setCornerWidget(self, Qt.Corner.TopRightCorner)
            self.show()  # a corner widget set after the menu bar was shown starts hidden
            menubar.adjustSize()
            return
        toolbar = QToolBar("Reading", qt)
        toolbar.setObjectName("anomalens_reading_toolbar")
        toolbar.setMovable(False)
        toolbar.addWidget(self)
        qt.addToolBar(Qt.ToolBarArea.TopToolBarArea, toolbar)

    def _button(self, text: str, tip: str, checkable: bool = False) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.setCheckable(checkable)
        button.setAutoRaise(True)
        self._row.addWidget(button)
        return button

    def sync(self, *_: Any) -> None:
        """Mirror what is shown in the buttons' checked states."""
        try:
            self.docks_button.setChecked(docks_visible(self.viewer))
            self.layers_button.setChecked(layer_docks_visible(self.viewer))
        except RuntimeError:  # the window is being closed
            pass


def _sync_toolbar(viewer: napari.Viewer) -> None:
    bar = getattr(viewer.window, "anomalens_toolbar", None)
    if bar is not None:
        bar.sync()


class MenuEntries(QObject):
    """Help → AnomaLens keyboard shortcuts, and Window → Show/hide AnomaLens docks (put back if napari rebuilds)."""

    def __init__(self, viewer: napari.Viewer, docks: bool = True) -> None:
        from .shortcuts import key_for, show_shortcuts

        super().__init__(viewer.window._qt_window)
        self.viewer = viewer
        self.help_action = QAction("AnomaLens keyboard shortcuts…", self)
        self.help_action.triggered.connect(lambda: show_shortcuts(viewer))
        self.docks_action = QAction(f"Show/hide AnomaLens docks\t{key_for('toggle_docks')}", self)
        self.docks_action.triggered.connect(lambda: toggle_docks(viewer))
        self.menus = [(viewer.window.help_menu, self.help_action)]
        if docks:  # the desktop window's docks (a napari plugin user's docks are napari's to arrange)
            self.menus.append((viewer.window.window_menu, self.docks_action))
        for menu, _act in self.menus:
            menu.aboutToShow.connect(self.install)
        self.install()

    def install(self) -> None:
        for menu, act in self.menus:
            actions = menu.actions()
            if act in actions:
                continue
            first = actions[0] if actions else None
            menu.insertAction(first, act)
            if first is not None:
                menu.insertSeparator(first)


def setup_reading_room(viewer: napari.Viewer) -> ReadingBar:
    """Window/level chooser and right-drag, keyboard shortcuts, Help entry, the image fitted to the canvas."""
    from . import statusvalues, toasts
    from .shortcuts import register_shortcuts
    from .windowlevel import install_right_drag

    register_shortcuts(viewer)
    install_right_drag(viewer)
    statusvalues.install()  # -1000 HU, not -1e+03
    toasts.install(viewer.window._qt_window)  # a toast raised while away goes once the user is back
    bar = ReadingBar(viewer)
    bar.place()
    viewer.window.anomalens_toolbar = bar
    viewer.window.anomalens_menus = MenuEntries(viewer)
    viewer.window.anomalens_fitter = CanvasFitter(viewer)
    return bar


def setup_viewer(viewer: napari.Viewer, recent: RecentFiles | None = None) -> FileActions:
    """Turn a napari viewer into the AnomaLens main window: title, icon, docks, File entries, the reading room."""
    from qtpy.QtGui import QIcon

    ensure_plugin_registered()
    glcache.install()  # the three-plane view's canvases then reuse the main canvas' shader parses
    viewer.title = TITLE
    viewer.window._qt_window.setWindowIcon(QIcon(str(resource_path(ICON))))
    viewer.window.anomalens_docks = add_docks(viewer)
    viewer.window.anomalens_files = FileActions(viewer, recent)
    setup_reading_room(viewer)
    from .threeplane import setup_radiological_view  # letters, reader precedence, View → Three-plane view

    setup_radiological_view(viewer)
    heap.freeze_startup_heap()  # later full collections walk only what the session makes (see app/heap.py)
    return viewer.window.anomalens_files


def create_viewer(path: str | Path | None = None, show: bool = True,
                  recent: RecentFiles | None = None) -> napari.Viewer:
    """A new AnomaLens main window, opening ``path`` (in the background) when given."""
    import napari

    viewer = napari.Viewer(title=TITLE, show=show)
    files = setup_viewer(viewer, recent)
    if show:
        fit_to_screen(viewer)
    if path is not None:
        files.open_path(path)
    return viewer


#: Name of the demo's scan layer; its heatmap and mask layers carry the model's label ("brain1 · patchcore v1 anomaly").
DEMO_LAYER = "brain1"


def show_demo(viewer: napari.Viewer, screenshot: Path | None = None) -> None:
    """Run the engine's demo job (terminal progress bar), then show scan, heatmap and SCR mask.

    The engine does the work (``anomalens.engine.demo``, which scores with ``score_scan``); ``show_demo_output``
    publishes its result like a scoring in the Detector dock (export, SCR re-tuning, the Poincaré disk).
    """
    from ..engine.cli.progressbar import terminal_progress
    from ..engine.demo import run_demo

    with terminal_progress("demo: training and scoring sample:brain1") as progress:
        out = run_demo(progress=progress)
    show_demo_output(viewer, out)
    print("demo outputs: " + ", ".join(str(p) for p in out.files.values()))
    if screenshot is not None:
        def grab() -> None:
            from ..engine.export import save_png

            fitter = getattr(viewer.window, "anomalens_fitter", None)
            if fitter is not None and fitter.untouched():  # a refit still waiting on a busy machine: run it now
                fitter.fit()
            save_png(viewer.screenshot(canvas_only=False, flash=False), screenshot)
            print(f"viewer screenshot: {screenshot}")
            print(layout_line(viewer), flush=True)
            viewer.close()

        QTimer.singleShot(1500, grab)


def show_demo_output(viewer: napari.Viewer, out: DemoOutput, detector: Detector | None = None) -> ScanResults:
    """Show a demo job's scan and its result through the same path as a scoring in the Detector dock.

    The demo's ``ScanResult`` (``score_scan`` on the held-out slices) is published as it is: heatmap and
    lesion-mask layers named with the model's label, the score curve in its unit, its warnings notified.
    Its trained model (``detector``, else the bundle at ``out.model``) becomes the state's model, so the
    Export dock exports the result and the SCR dock re-cuts its mask; the Poincaré disk shows its
    embeddings. The sample's expert lesion mask (what the demo's metrics are measured against) is shown
    too, in its reference colour under the model's outline, and the viewer opens on the most anomalous
    slice.
    """
    from ..engine.detectors import load_bundle
    from ..engine.errors import AnomaLensError
    from .reader import ROLE_KEY, image_layer_data
    from .results import model_identity, publish
    from .samples import load_sample
    from .state import get_state

    if detector is None:
        detector = load_bundle(out.model)
    model_identity(detector)
    result = out.result
    data, kwargs, _ = image_layer_data(result.volume, name=DEMO_LAYER)
    layer = viewer.add_image(data, **kwargs)
    sample = (result.volume.metadata or {}).get("sample")
    try:
        references = [(d, kw) for d, kw, kind in (load_sample(str(sample)) if sample else [])
                      if kind == "labels" and kw.get("metadata", {}).get(ROLE_KEY) == "lesion"
                      and tuple(d.shape) == tuple(result.volume.shape)]
    except AnomaLensError as exc:  # the sample's mask is a bonus: without it the demo still shows its result
        log.warning("the demo's reference mask is not shown: %s", exc)
        references = []
    for d, kw in references:
        viewer.add_labels(d, **kw)
    state = get_state(viewer)
    state.set_model(detector, out.model)
    state.set_volume(result.volume, result.prepared)
    return publish(viewer, state, layer.name, result, detector, jump=True, normal_slices=out.normal_slices)


def discovered_plugins() -> list[str]:
    """Names of the npe2 manifests found through installed ``napari.manifest`` entry points.

    This is how napari itself finds plugins, so a frozen bundle that lost a package's metadata shows
    here (``ensure_plugin_registered`` would otherwise hide a missing AnomaLens entry point).
    """
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return sorted(m.name for m in pm.iter_manifests())


def describe_window(viewer: napari.Viewer) -> str:
    """One line on the main window (title, size, docks that started, layers), printed by ``--quit-after``."""
    qt = viewer.window._qt_window
    docks = ", ".join(getattr(viewer.window, "anomalens_docks", {})) or "none"
    return (f"AnomaLens viewer: window {qt.windowTitle()!r} {qt.width()}x{qt.height()} "
            f"visible={qt.isVisible()}; docks: {docks}; layers: {len(viewer.layers)}")


def describe_layout(viewer: napari.Viewer) -> dict[str, Any]:
    """Where things are on screen: screen, window, canvas share, how the image fits, the slice slider's stops.

    ``fit`` is the displayed image's larger side over the canvas's (napari's ``reset_view`` leaves a 5 %
    margin: about 0.95 when fitted); ``slider_last``/``last_index`` say whether the last slice is reachable.
    """
    import numpy as np

    from .windowlevel import target_layer

    qt = viewer.window._qt_window
    avail, frame = qt.screen().availableGeometry(), qt.frameGeometry()
    canvas = viewer.window._qt_viewer.canvas.native
    out: dict[str, Any] = {
        "screen": [avail.x(), avail.y(), avail.width(), avail.height()],
        "window": [frame.x(), frame.y(), frame.width(), frame.height()],
        "minimum": [qt.minimumSizeHint().width(), qt.minimumSizeHint().height()],
        "canvas": [canvas.width(), canvas.height()],
        "canvas_share": round(canvas.width() / max(qt.width(), 1), 4),
        "docks_visible": docks_visible(viewer), "napari_docks_visible": layer_docks_visible(viewer),
        "docks_clipped": clipped_docks(viewer), "docks_scrolling": scrolling_docks(viewer),
        "overlays_overlapping": overlapping_overlays(viewer),
    }
    layer = target_layer(viewer)
    if layer is not None and layer.ndim >= 2:
        scene = getattr(viewer, "scene", None)
        zoom = float((scene.camera if scene is not None else viewer.camera).zoom)
        world = np.asarray(layer.extent.world, float)[:, -2:]
        size = np.abs(world[1] - world[0]) + np.abs(np.asarray(layer.scale[-2:], float))
        out["fit"] = round(float(max(size[0] * zoom / max(canvas.height(), 1),
                                     size[1] * zoom / max(canvas.width(), 1))), 4)
        if layer.ndim >= 3:
            out["last_index"] = int(layer.data.shape[-3]) - 1
            out["slider_last"] = int(viewer.dims.nsteps[viewer.dims.ndim - 3]) - 1
            out["slice"] = int(viewer.dims.current_step[viewer.dims.ndim - 3])
    from .results import most_anomalous
    from .state import get_state

    results = get_state(viewer).results
    if results is not None:
        out["most_anomalous"] = most_anomalous(results)
        heat = [lyr for lyr in viewer.layers if lyr.name == results.heatmap_name]
        out["colorbar"] = bool(heat and heat[0].visible and heat[0].colorbar.visible)
        out["unit"] = results.unit.value
    return out


def clipped_docks(viewer: napari.Viewer) -> list[str]:
    """The AnomaLens docks whose content is wider than the right-hand column: they would scroll sideways.

    A tabbed dock that is not raised keeps a stale width, so every dock is measured against the narrowest
    visible one's scroll area, less a vertical scroll bar (any dock may need one on a short screen).
    """
    from qtpy.QtWidgets import QScrollArea, QStyle

    areas: dict[str, Any] = {}
    for name, frame in getattr(viewer.window, "anomalens_frames", {}).items():
        found = frame.findChildren(QScrollArea)
        if found:
            areas[name] = (frame, found[0])
    shown = [area.width() for frame, area in areas.values() if frame.isVisible()]
    if not shown:
        return []
    bar = viewer.window._qt_window.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
    room = min(shown) - bar
    return [name for name, (_, area) in areas.items() if area.widget().minimumSizeHint().width() > room]


def scrolling_docks(viewer: napari.Viewer) -> list[str]:
    """The shown AnomaLens docks whose content is taller than their room (they scroll up and down)."""
    from qtpy.QtWidgets import QScrollArea

    out = []
    for name, frame in getattr(viewer.window, "anomalens_frames", {}).items():
        found = frame.findChildren(QScrollArea)
        if found and frame.isVisible() and found[0].widget().height() > found[0].viewport().height():
            out.append(name)
    return out


def overlay_boxes(viewer: napari.Viewer) -> dict[str, tuple[float, float, float, float]]:
    """The visible canvas overlays' boxes (x0, y0, x1, y1 in canvas pixels, y down), by name.

    Viewer overlays by their ``canvas.overlays`` key, layer overlays (the colour bar) as ``layer:overlay``.
    Read from napari's vispy overlays after it placed them: what a snapshot shows.
    """
    canvas = viewer.window._qt_viewer.canvas
    canvas._update_overlay_canvas_positions()
    names = {id(o): k for k, o in viewer.canvas.overlays.items()}
    out: dict[str, tuple[float, float, float, float]] = {}
    items = [(names.get(id(o), type(o).__name__), o, vs[0] if vs else None)
             for o, vs in canvas._viewer_overlay_to_visual.items()]
    items += [(f"{layer.name}:{type(o).__name__}", o, v) for layer, pairs in canvas._layer_overlay_to_visual.items()
              if layer.visible for o, v in pairs.items()]
    for name, overlay, visual in items:
        if visual is None or not overlay.visible or not getattr(overlay, "position", None) or \
                (hasattr(overlay, "text") and not overlay.text) or not (visual.x_size and visual.y_size):
            continue
        x, y = (float(v) for v in visual.node.transform.translate[:2])
        out[name] = (x, y, x + float(visual.x_size), y + float(visual.y_size))
    return out


def overlapping_overlays(viewer: napari.Viewer, margin: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of visible canvas overlays drawn over each other (a snapshot where texts run into one another)."""
    boxes = sorted(overlay_boxes(viewer).items())
    out = []
    for i, (a, (ax0, ay0, ax1, ay1)) in enumerate(boxes):
        for b, (bx0, by0, bx1, by1) in boxes[i + 1:]:
            if ax0 < bx1 - margin and bx0 < ax1 - margin and ay0 < by1 - margin and by0 < ay1 - margin:
                out.append((a, b))
    return out


def layout_line(viewer: napari.Viewer) -> str:
    """``describe_layout`` as one line of JSON on stdout (tests of the window on several screens read it)."""
    import json

    return "AnomaLens layout: " + json.dumps(describe_layout(viewer))


def close_after(viewer: napari.Viewer, seconds: float) -> None:
    """Describe the window on stdout and close it after ``seconds`` (smoke tests of installs and bundles)."""
    def close() -> None:
        print(describe_window(viewer), flush=True)
        print(layout_line(viewer), flush=True)
        viewer.close()

    QTimer.singleShot(int(seconds * 1000), close)


def score_and_quit(viewer: napari.Viewer, model: str | Path, timeout_s: float = 300.0) -> dict[str, Any]:
    """Hidden test hook (``--score-and-quit MODEL``): a whole scoring session, then the window is closed.

    Once the scan given on the command line has opened, the Detector dock loads ``MODEL`` and scores the
    whole volume, as a user would with its buttons; then one line is printed and the main window closed,
    as a user ends a session. It exists so a test can check that quitting after real work (workers,
    layers, the score curve, the Poincaré disk) exits 0 without a native crash at teardown. The returned
    dict is filled in as the steps run: ``ok`` is True once the volume was scored (``main`` exits 1 if not).
    """
    import time

    from .state import get_state

    outcome: dict[str, Any] = {"ok": False, "step": "open"}
    deadline = time.monotonic() + timeout_s
    files = viewer.window.anomalens_files
    detector = viewer.window.anomalens_docks.get("Detector")
    state = get_state(viewer)
    timer = QTimer(viewer.window._qt_window)

    def finish(line: str) -> None:
        timer.stop()
        print(f"scripted session: {line}", flush=True)
        viewer.close()

    def tick() -> None:
        if time.monotonic() > deadline:
            finish(f"timed out while at step {outcome['step']}")
            return
        if detector is None:
            finish("the Detector dock did not start")
            return
        if files.jobs.running or detector.jobs.running:
            return
        step = outcome["step"]
        if step == "open":
            if not len(viewer.layers):
                finish("no scan was opened")
            elif detector.set_bundle(Path(model)):
                outcome["step"] = "model"
            else:
                finish("the model could not be loaded")
        elif step == "model":
            if state.detector is None:
                finish("the model could not be loaded")
            elif detector.score_volume():
                outcome["step"] = "score"
            else:
                finish("scoring did not start")
        elif step == "score":
            res = state.results
            if res is None or not res.scored.all():
                finish("scoring failed")
                return
            outcome["ok"] = True
            finish(f"scored {len(res.slice_scores)} slices with {res.label}; closing")

    timer.timeout.connect(tick)
    timer.start(100)
    return outcome


#: The viewer's log file, in ``log_folder()``; rotated at 1 MB, three old files kept.
LOG_NAME = "viewer.log"


def log_folder() -> Path:
    """Where ``viewer.log`` goes: the user's log folder (``$XDG_STATE_HOME/anomalens/log`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_log_dir("anomalens", appauthor=False))


def setup_logging(folder: str | Path | None = None) -> logging.Handler:
    """Log to a rotating ``viewer.log`` in ``folder`` (default ``log_folder()``); returns the handler.

    Every line goes through ``RedactingFormatter``: paths the viewer registered (scans, models, exports) and
    their file and folder names become ``<path:…>`` tokens, since the log may be sent to support and sites
    name folders after patients. Without a writable folder the log goes to stderr, redacted the same way.
    """
    from ..engine.logredact import RedactingFormatter

    root = logging.getLogger("anomalens")
    root.setLevel(logging.INFO)
    try:
        where = Path(folder) if folder is not None else log_folder()
        where.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.handlers.RotatingFileHandler(where / LOG_NAME, maxBytes=1_000_000,
                                                                         backupCount=3, encoding="utf-8")
    except OSError:
        handler = logging.StreamHandler()
    # Messages on screen name the user's files; the log file, which may be sent to support, does not.
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


def _configure_threads() -> None:
    """``$ANOMALENS_THREADS`` as in the CLI; a bad value is logged and torch's default kept (the app starts)."""
    from ..engine.device import configure_threads
    from ..engine.errors import AnomaLensError

    try:
        configure_threads()
    except AnomaLensError as exc:
        logging.getLogger("anomalens.app").warning("%s; using torch's default thread count", exc)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``anomalens-viewer``."""
    from napari.qt import get_qapp, run

    from ..engine import __version__

    parser = argparse.ArgumentParser(prog="anomalens-viewer", description="Open the AnomaLens viewer.")
    parser.add_argument("path", nargs="?", help="a scan file or DICOM folder to open")
    parser.add_argument("--version", action="version", version=f"AnomaLens {__version__}")
    parser.add_argument("--demo", action="store_true",
                        help="run the main job on sample:brain1 (train once, calibrate, score) and show it")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="with --demo: save a screenshot of the window there, then close")
    parser.add_argument("--quit-after", type=float, default=None, help=argparse.SUPPRESS)  # smoke tests
    parser.add_argument("--list-plugins", action="store_true", help=argparse.SUPPRESS)  # installer smoke test
    parser.add_argument("--score-and-quit", type=Path, default=None, metavar="MODEL",
                        help=argparse.SUPPRESS)  # tests: score PATH with MODEL, then close (``score_and_quit``)
    args = parser.parse_args(argv)
    if args.score_and_quit is not None and (args.path is None or args.demo):
        parser.error("--score-and-quit needs a scan PATH (and no --demo)")
    if args.list_plugins:
        names = discovered_plugins()
        print("\n".join(names))
        return 0 if PLUGIN_NAME in names else 1
    setup_logging()
    _configure_threads()
    get_qapp(app_name=TITLE, app_version=__version__, icon=str(resource_path(APP_ICON_SVG)), org_name=TITLE,
             org_domain="anomalens.invalid", app_id=f"anomalens.viewer.{__version__}")
    viewer = create_viewer(None if args.demo else args.path)
    if args.demo:
        show_demo(viewer, args.screenshot)
    seconds = args.quit_after if args.quit_after is not None else float(os.environ.get("ANOMALENS_QUIT_AFTER", 0) or 0)
    if seconds > 0:
        close_after(viewer, seconds)
    scripted = score_and_quit(viewer, args.score_and_quit) if args.score_and_quit is not None else None
    run(gui_exceptions=True)
    from .jobs import stop_all_work

    stop_all_work()  # no worker may outlive the window into the interpreter's teardown
    return 0 if scripted is None or scripted["ok"] else 1


if __name__ == "__main__":  # ``python -m anomalens.app.desktop``: the same as ``anomalens-viewer``
    raise SystemExit(main())
