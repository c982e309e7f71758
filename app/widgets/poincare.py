"""The Poincaré-disk dock: the followed result's embeddings on the unit disk, coloured like its heatmap.

Every scoring adds its embeddings to its result (per slice, like the heatmap; ``anomalens.app.embeddings``)
and the disk shows those of the result the docks follow (the loaded model's, for the shown scan),
projected by ``anomalens.engine.projection`` (log map, two main directions, exp map: see there). Each
point is coloured by the result's map at its patch centre, in the result's unit, on the heatmap layer's
colour scale, and a click or hover says that value and its unit, so the disk and the heatmap agree. Two
views: the patches of the current slice, or one point per scored slice (its mean embedding, valued by its
highest patch). Points of slices marked normal are ringed green; the classifier hyperplane, when the
detector has one, is drawn as a geodesic. A click jumps to the point's slice and rings its patch in the
viewer; a lasso drag selects points, which can be marked normal in the case library. Detectors without
hyperbolic embeddings (PatchCore) are drawn through the same tangent map, and the note under the disk
says so.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSize, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ...engine.errors import AnomaLensError
from ..embeddings import EmbeddingStore
from ..messages import notify_error, notify_info
from ..results import (
    HEATMAP_COLORMAP,
    HIGHLIGHT_LAYER,
    current_index,
    find_layer,
    format_score,
    goto_index,
    heatmap_contrast,
    highlight_patch,
)
from ..state import get_state
from .calibration import ensure_volume, mark_normal, scan_layer

if TYPE_CHECKING:
    import napari

    from ...engine.detectors import Embeddings
    from ...engine.projection import DiskProjection
    from ..results import ScanResults

__all__ = ["HIGHLIGHT_LAYER", "EmbeddingStore", "PoincareWidget", "project_both"]

MODES = ("Patches of the current slice", "One point per slice")
MARKED_COLOR = "#2ecc71"
SELECTED_COLOR = "#00d8ff"
_EMPTY_NOTE = "Score a slice or the volume in the Detector dock to see its embeddings here."


def project_both(emb: Embeddings) -> tuple[DiskProjection, DiskProjection]:
    """Per-patch and per-slice projections of the same embeddings (worker thread)."""
    from ...engine.projection import project_embeddings

    return project_embeddings(emb, per_slice=False), project_embeddings(emb, per_slice=True)


@functools.cache
def _lasso_viewbox_class() -> type:
    import pyqtgraph as pg

    class LassoViewBox(pg.ViewBox):
        """A view box whose left-drag draws a free-hand polygon instead of panning (when enabled)."""

        sigLasso = Signal(object)

        def __init__(self) -> None:
            super().__init__(lockAspect=True, enableMenu=False)
            self.lasso_enabled = False
            self._path: list[tuple[float, float]] = []
            self.path_item = pg.PlotCurveItem(pen=pg.mkPen(SELECTED_COLOR, width=1.5))
            self.addItem(self.path_item, ignoreBounds=True)

        def mouseDragEvent(self, ev: Any, axis: Any = None) -> None:
            from qtpy.QtCore import Qt

            if not self.lasso_enabled or ev.button() != Qt.MouseButton.LeftButton:
                ev.ignore()
                return
            ev.accept()
            p = self.mapToView(ev.pos())
            if ev.isStart():
                self._path = []
            self._path.append((p.x(), p.y()))
            xy = np.asarray(self._path + self._path[:1])
            self.path_item.setData(xy[:, 0], xy[:, 1])
            if ev.isFinish():
                self.sigLasso.emit(np.asarray(self._path))

    return LassoViewBox


class _Box(QWidget):
    """Holds a pyqtgraph plot with a modest preferred size (pyqtgraph's own, about 640×480, makes a dock scroll)."""

    def __init__(self, child: QWidget, width: int, height: int) -> None:
        super().__init__()
        self._hint = QSize(width, height)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(child)

    def sizeHint(self) -> QSize:
        return self._hint


class PoincareWidget(QWidget):
    """Dock widget: the current scan's embeddings on the Poincaré disk."""

    #: Sets with more points than this are projected in a thread worker (smaller ones right away).
    sync_limit = 20_000

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        import pyqtgraph as pg
        from qtpy.QtWidgets import QGraphicsEllipseItem

        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.results: ScanResults | None = None  # whose embeddings the disk shows
        self._empty = EmbeddingStore()
        self._projected: tuple[int, int] | None = None
        self.patch_projection: DiskProjection | None = None
        self.slice_projection: DiskProjection | None = None
        self.shown = np.zeros(0, int)  # indices into the shown projection
        self.selection = np.zeros(0, int)
        self._worker: Any = None
        self._pending: tuple[int, int] | None = None

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.lasso_button = QPushButton("Lasso")
        self.lasso_button.setCheckable(True)
        self.lasso_button.setToolTip("Drag around points to select them")
        self.mark_button = QPushButton("Mark selection normal")
        self.mark_button.setToolTip("Marks the slices of the selected points normal in the case library "
                                    "(the patches are kept too)")
        self.clear_button = QPushButton("Clear selection")
        self.note = QLabel(_EMPTY_NOTE)
        self.note.setWordWrap(True)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        self.view = _lasso_viewbox_class()()
        self.plot = pg.PlotWidget(viewBox=self.view, background=None)
        self.plot.setMinimumSize(240, 240)
        self.plot.hideAxis("left")
        self.plot.hideAxis("bottom")
        self.plot.hideButtons()
        self.view.setMouseEnabled(x=False, y=False)
        self.view.setRange(xRange=(-1.05, 1.05), yRange=(-1.05, 1.05), padding=0)
        disk = QGraphicsEllipseItem(-1.0, -1.0, 2.0, 2.0)
        disk.setPen(pg.mkPen("#888888", width=1.5, cosmetic=True))
        self.view.addItem(disk)
        self.geodesic = pg.PlotCurveItem(pen=pg.mkPen("#e67e22", width=2, style=pg.QtCore.Qt.PenStyle.DashLine))
        self.marked_rings = pg.ScatterPlotItem(size=13, brush=None, pen=pg.mkPen(MARKED_COLOR, width=2))
        self.selected_rings = pg.ScatterPlotItem(size=11, brush=None, pen=pg.mkPen(SELECTED_COLOR, width=2))
        self.scatter = pg.ScatterPlotItem(size=7, pen=None, hoverable=True)
        for item in (self.geodesic, self.marked_rings, self.selected_rings, self.scatter):
            self.view.addItem(item)
        self.colormap = pg.colormap.get(HEATMAP_COLORMAP)  # the heatmap layer's: one colour, one value

        top = QHBoxLayout()
        top.addWidget(self.mode_combo, 1)
        top.addWidget(self.lasso_button)
        sel = QHBoxLayout()
        sel.addWidget(self.mark_button)
        sel.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(_Box(self.plot, 280, 280), 1)
        layout.addWidget(self.legend)
        layout.addWidget(self.note)
        layout.addLayout(sel)
        layout.addWidget(self.status)

        self.scatter.sigClicked.connect(self.on_points_clicked)
        self.scatter.sigHovered.connect(self.on_points_hovered)
        self.view.sigLasso.connect(self.select_in_polygon)
        self.lasso_button.toggled.connect(self._set_lasso)
        self.mark_button.clicked.connect(self.mark_selection)
        self.clear_button.clicked.connect(self.clear_selection)
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.state.score_changed.connect(self._on_score)
        self.state.marks_changed.connect(self._on_marks_changed)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._update_buttons()
        self._on_score(self.state.results)

    # -- data ------------------------------------------------------------------------------------
    @property
    def per_slice(self) -> bool:
        return self.mode_combo.currentIndex() == 1

    def set_per_slice(self, on: bool) -> None:
        self.mode_combo.setCurrentIndex(1 if on else 0)

    @property
    def projection(self) -> DiskProjection | None:
        """The projection the disk shows now (patches or slice means)."""
        return self.slice_projection if self.per_slice else self.patch_projection

    def _on_marks_changed(self, marked: Any = None) -> None:
        self.redraw()

    @property
    def store(self) -> EmbeddingStore:
        """The embeddings of the result the disk shows (an empty store before any)."""
        return self.results.embeddings if self.results is not None else self._empty

    def _on_score(self, res: ScanResults | None) -> None:
        """Follow the state's result: project its embeddings when they are new or changed."""
        if res is not self.results:
            self.results = res
            self._projected = None
        if res is None:
            self._set_projections(None)
            return
        if len(res.embeddings) == 0:
            self._set_projections(None)
            self.note.setText(f"The {res.model.detector} detector gives no embeddings to draw.")
            return
        if self._projected != self._key():
            self.reproject()

    def _key(self) -> tuple[int, int]:
        return (id(self.store), self.store.generation)

    def reproject(self) -> None:
        """Project the shown result's embeddings again (in a thread worker for big sets)."""
        emb = self.store.combined()
        if emb is None:
            self._set_projections(None)
            return
        key = self._key()
        if len(emb.points) <= self.sync_limit:
            try:
                self._set_projections(project_both(emb), key)
            except AnomaLensError as exc:
                self.status.setText(notify_error(exc, "Poincaré disk"))
            return
        from napari.qt.threading import create_worker

        self._pending = key
        self.status.setText(f"projecting {len(emb.points)} embeddings…")
        worker = create_worker(project_both, emb, _ignore_errors=True)
        worker.returned.connect(lambda res, k=key: self._set_projections(res, k))
        worker.errored.connect(lambda exc: self.status.setText(notify_error(exc, "Poincaré disk")))
        self._worker = worker
        worker.start()

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Block (processing Qt events) until a background projection has landed (for tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while self._pending is not None and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self._pending is None

    def _set_projections(self, both: tuple[DiskProjection, DiskProjection] | None,
                         key: tuple[int, int] | None = None) -> None:
        if key is not None and key != self._key():
            return  # a newer scoring (or another result) has arrived meanwhile; its projection will follow
        self._pending = None
        self._projected = key
        self.patch_projection, self.slice_projection = both if both is not None else (None, None)
        if both is None:
            self.note.setText(_EMPTY_NOTE)
            self.status.setText("")
            self.legend.setText("")
        else:
            self.note.setText(self.projection.note if self.projection is not None else "")
        self.redraw(keep_selection=False)

    # -- drawing ---------------------------------------------------------------------------------
    def current_z(self) -> int:
        return current_index(self.viewer, scan_layer(self.viewer, self.state))

    def _on_mode_changed(self, index: int = 0) -> None:
        self.redraw(keep_selection=False)

    def _on_step(self, event: Any = None) -> None:
        if not self.per_slice:
            self.redraw(keep_selection=False)

    def redraw(self, keep_selection: bool = True) -> None:
        """Draw the shown projection: points by score, marked slices ringed, selection, hyperplane."""
        proj = self.projection
        if not keep_selection:
            self.selection = np.zeros(0, int)
        if proj is None or len(proj) == 0:
            self.shown = np.zeros(0, int)
            for item in (self.scatter, self.marked_rings, self.selected_rings):
                item.setData([], [])
            self.geodesic.setData([], [])
            self._update_buttons()
            return
        self.note.setText(proj.note)
        if self.per_slice:
            self.shown = np.arange(len(proj))
        else:
            z = self.current_z()
            self.shown = np.flatnonzero(proj.slice_index == z)
            if self.shown.size == 0:
                self.status.setText(f"slice {z} is not scored yet: score it (or the volume) in the Detector dock")
            else:
                self.status.setText(f"{self.shown.size} patches of slice {z}")
        xy = proj.xy[self.shown]
        self.scatter.setData(x=xy[:, 0], y=xy[:, 1], data=self.shown, brush=self._brushes(proj, self.shown))
        marked = set(self.state.extras.get("marked_slices") or [])
        ring = self.shown[np.isin(proj.slice_index[self.shown], list(marked))] if marked else np.zeros(0, int)
        self.marked_rings.setData(x=proj.xy[ring, 0], y=proj.xy[ring, 1])
        sel = self.selection
        self.selected_rings.setData(x=proj.xy[sel, 0], y=proj.xy[sel, 1])
        g = proj.geodesic
        if g is None:
            self.geodesic.setData([], [])
        else:
            self.geodesic.setData(g[:, 0], g[:, 1])
        self._update_buttons()

    def colour_limits(self) -> tuple[float, float] | None:
        """The colour scale of the points: the heatmap layer's contrast limits (the result's unit)."""
        res = self.results
        if res is None:
            return None
        heat = find_layer(self.viewer, res.heatmap_name)
        if heat is not None:
            return (float(heat.contrast_limits[0]), float(heat.contrast_limits[1]))
        return heatmap_contrast(res.maps[res.scored], res.calibration, res.unit)

    def _brushes(self, proj: DiskProjection, idx: np.ndarray) -> list:
        import pyqtgraph as pg

        limits = self.colour_limits()
        if proj.scores is None or len(proj.scores) == 0 or limits is None:
            return [pg.mkBrush("#4a90e2")] * len(idx)
        lo, hi = limits
        s = proj.scores.astype(np.float64)
        t = np.clip((s[idx] - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        rgba = self.colormap.map(0.15 + 0.85 * t, mode="byte")  # the darkest points stay visible on the disk
        self._show_legend(lo, hi)
        return [pg.mkBrush(*c) for c in rgba]

    def _show_legend(self, lo: float, hi: float) -> None:
        res = self.results
        if res is None:
            return
        what = "the highest heatmap value of its slice's patches" if self.per_slice else \
            "the heatmap value at its patch centre"
        self.legend.setText(f"Colour: {what}, in {res.unit.short} units ({res.label}); dark ≤ {lo:.3g}, "
                            f"bright ≥ {hi:.3g}, as on the heatmap layer")

    def unit_short(self) -> str:
        return self.results.unit.short if self.results is not None else "score"

    def describe_point(self, index: int) -> str:
        """``slice 3, patch at (y 12, x 40): 1.23 normal quantile (heatmap value there)``."""
        proj = self.projection
        if proj is None:
            return ""
        z = int(proj.slice_index[index])
        y, x = (float(v) for v in proj.centers[index])
        text = f"slice {z}, patch at (y {y:.0f}, x {x:.0f})"
        if proj.scores is not None:
            where = "highest heatmap value of the slice's patches" if self.per_slice else "heatmap value there"
            unit = self.results.unit if self.results is not None else "raw"
            text += f": {format_score(float(proj.scores[index]), unit)} {self.unit_short()} ({where})"
        return text

    # -- interaction -----------------------------------------------------------------------------
    def on_points_clicked(self, item: Any, points: Any, event: Any = None) -> None:
        """The scatter's click handler: jump to the first clicked point's slice and ring its patch."""
        if points is None or len(points) == 0:
            return
        self.select_point(int(points[0].data()))

    def select_point(self, index: int) -> None:
        """Show point ``index`` (into the shown projection) in the viewer: its slice and patch."""
        proj = self.projection
        if proj is None:
            return
        z = int(proj.slice_index[index])
        y, x = (float(v) for v in proj.centers[index])
        self.state.slice_requested.emit(z)
        self.state.highlight_requested.emit((z, y, x))
        self._show_in_viewer(z, y, x)
        self.status.setText(self.describe_point(index))

    def on_points_hovered(self, item: Any, points: Any, event: Any = None) -> None:
        """The scatter's hover handler: say the hovered point's slice, patch and value (in its unit)."""
        if points is None or len(points) == 0:
            return
        self.status.setText(self.describe_point(int(points[0].data())))

    def _show_in_viewer(self, z: int, y: float, x: float) -> None:
        layer = scan_layer(self.viewer, self.state)
        if layer is None:
            return
        goto_index(self.viewer, layer, z)
        highlight_patch(self.viewer, layer, z, y, x)

    def _set_lasso(self, on: bool) -> None:
        self.view.lasso_enabled = bool(on)
        if not on:
            self.view.path_item.setData([], [])

    def select_in_polygon(self, polygon: np.ndarray) -> np.ndarray:
        """Select the shown points inside ``polygon`` ((k, 2) disk coordinates); returns their indices."""
        from skimage.measure import points_in_poly

        proj = self.projection
        poly = np.asarray(polygon, dtype=float)
        if proj is None or len(poly) < 3 or self.shown.size == 0:
            self.selection = np.zeros(0, int)
        else:
            inside = points_in_poly(proj.xy[self.shown].astype(float), poly)
            self.selection = self.shown[inside]
        self.state.set_disk_selection(self.selected_patches())
        self.status.setText(f"{self.selection.size} point(s) selected")
        self.redraw()
        return self.selection

    def selected_patches(self) -> list[tuple[int, float, float]]:
        """The selection as (z, y, x) patch centres (a slice's top patch in per-slice mode)."""
        proj = self.projection
        if proj is None:
            return []
        return [(int(proj.slice_index[i]), float(proj.centers[i, 0]), float(proj.centers[i, 1]))
                for i in self.selection]

    def clear_selection(self) -> None:
        self.selection = np.zeros(0, int)
        self.view.path_item.setData([], [])
        self.state.set_disk_selection([])
        self.redraw()

    def mark_selection(self) -> list[int]:
        """Mark the selected points' slices normal in the case library (patch centres kept in patch mode)."""
        patches = self.selected_patches()
        if not patches:
            notify_info("lasso some points first")
            return []
        if ensure_volume(self.viewer, self.state) is None:
            return []
        try:
            new = mark_normal(self.state, sorted({p[0] for p in patches}), "lasso",
                              None if self.per_slice else patches)
        except AnomaLensError as exc:
            self.status.setText(notify_error(exc))
            return []
        self.status.setText(f"marked {len(new)} new slice(s) normal")
        return new

    def _update_buttons(self) -> None:
        self.mark_button.setEnabled(self.selection.size > 0)
        self.clear_button.setEnabled(self.selection.size > 0)
