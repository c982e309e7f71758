"""The Poincaré-disk dock: the scan's embeddings on the unit disk, coloured by anomaly score.

Every scoring the Detector dock does adds its embeddings here (per slice, like the heatmap), projected by
``anomalens.engine.projection`` (log map, two main directions, exp map: see there). Two views: the patches
of the current slice, or one point per scored slice (its mean embedding). Points of slices marked normal
are ringed green; the classifier hyperplane, when the detector has one, is drawn as a geodesic. A click
jumps to the point's slice and rings its patch in the viewer; a lasso drag selects points, which can be
marked normal in the case library. Detectors without hyperbolic embeddings (PatchCore) are drawn through
the same tangent map, and the note under the disk says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ...engine.errors import AnomaLensError
from ..messages import notify_error, notify_info
from ..reader import ROLE_KEY
from ..results import current_index, find_layer, goto_index
from ..state import get_state
from .calibration import ensure_volume, mark_normal, scan_layer

if TYPE_CHECKING:
    import napari

    from ...engine.detectors import Embeddings
    from ...engine.pipeline import VolumeScore
    from ...engine.projection import DiskProjection

HIGHLIGHT_LAYER = "AnomaLens patch"
MODES = ("Patches of the current slice", "One point per slice")
MARKED_COLOR = "#2ecc71"
SELECTED_COLOR = "#00d8ff"


def scored_indices(vs: VolumeScore) -> np.ndarray:
    """The z indices (into the scored volume's array) of a score's slices, in result order.

    ``VolumeScore.slice_scores`` is keyed by the study's slice numbers in scoring order; with a slice
    selection those are mapped back to array indices.
    """
    keys = [int(k) for k in vs.slice_scores]
    sel = vs.prepared.volume.metadata.get("selected_slices")
    if sel:
        pos = {int(s): i for i, s in enumerate(sel)}
        return np.asarray([pos[k] for k in keys], dtype=int)
    return np.asarray(keys, dtype=int)


@dataclass
class _SliceEmbedding:
    points: np.ndarray
    centers: np.ndarray
    scores: np.ndarray | None


class EmbeddingStore:
    """Embeddings of the slices scored so far for one volume and model, keyed by z (newest wins)."""

    def __init__(self) -> None:
        self.slices: dict[int, _SliceEmbedding] = {}
        self.manifold = "euclidean"
        self.curvature = 0.0
        self.hyperplane: np.ndarray | None = None
        self.offset = 0.0
        self.owner: tuple[Any, Any] | None = None  # (volume array, detector) the embeddings belong to
        self.generation = 0

    def clear(self) -> None:
        self.slices.clear()
        self.owner = None
        self.generation += 1

    def add(self, emb: Embeddings, z_of: np.ndarray, owner: tuple[Any, Any]) -> None:
        if self.owner is None or self.owner[0] is not owner[0] or self.owner[1] is not owner[1] \
                or emb.manifold != self.manifold:
            self.slices.clear()
        self.owner = owner
        self.manifold, self.curvature = emb.manifold, float(emb.curvature)
        self.hyperplane, self.offset = emb.hyperplane, float(emb.hyperplane_offset)
        sl = np.asarray(emb.slice_index, dtype=int)
        for j in np.unique(sl):
            keep = sl == j
            self.slices[int(z_of[j])] = _SliceEmbedding(
                np.asarray(emb.points)[keep], np.asarray(emb.centers)[keep],
                None if emb.scores is None else np.asarray(emb.scores)[keep])
        self.generation += 1

    def __len__(self) -> int:
        return sum(len(s.points) for s in self.slices.values())

    def combined(self) -> Embeddings | None:
        """All stored slices as one ``Embeddings`` whose ``slice_index`` is the volume z."""
        from ...engine.detectors import Embeddings

        if not self.slices:
            return None
        zs = sorted(self.slices)
        parts = [self.slices[z] for z in zs]
        scores = None if any(p.scores is None for p in parts) else np.concatenate([p.scores for p in parts])
        return Embeddings(points=np.concatenate([p.points for p in parts]),
                          slice_index=np.concatenate([np.full(len(p.points), z) for z, p in zip(zs, parts,
                                                                                                 strict=True)]),
                          centers=np.concatenate([p.centers for p in parts]), manifold=self.manifold,
                          curvature=self.curvature, scores=scores, hyperplane=self.hyperplane,
                          hyperplane_offset=self.offset)


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
        self.store = EmbeddingStore()
        self.patch_projection: DiskProjection | None = None
        self.slice_projection: DiskProjection | None = None
        self.shown = np.zeros(0, int)  # indices into the shown projection
        self.selection = np.zeros(0, int)
        self._worker: Any = None
        self._pending = -1

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.lasso_button = QPushButton("Lasso")
        self.lasso_button.setCheckable(True)
        self.lasso_button.setToolTip("Drag around points to select them")
        self.mark_button = QPushButton("Mark selection normal")
        self.mark_button.setToolTip("Marks the slices of the selected points normal in the case library "
                                    "(the patches are kept too)")
        self.clear_button = QPushButton("Clear selection")
        self.note = QLabel("Score a slice or the volume in the Detector dock to see its embeddings here.")
        self.note.setWordWrap(True)
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
        self.colormap = pg.colormap.get("inferno")

        top = QHBoxLayout()
        top.addWidget(self.mode_combo, 1)
        top.addWidget(self.lasso_button)
        sel = QHBoxLayout()
        sel.addWidget(self.mark_button)
        sel.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.note)
        layout.addLayout(sel)
        layout.addWidget(self.status)

        self.scatter.sigClicked.connect(self.on_points_clicked)
        self.view.sigLasso.connect(self.select_in_polygon)
        self.lasso_button.toggled.connect(self._set_lasso)
        self.mark_button.clicked.connect(self.mark_selection)
        self.clear_button.clicked.connect(self.clear_selection)
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.state.score_changed.connect(self._on_score)
        self.state.model_changed.connect(self._on_model_changed)
        self.state.volume_changed.connect(self._on_volume_changed)
        self.state.marks_changed.connect(self._on_marks_changed)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._update_buttons()
        if self.state.score is not None:
            self._on_score(self.state.score)

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

    def _on_model_changed(self, detector: Any) -> None:
        self.store.clear()
        self._set_projections(None)

    def _on_volume_changed(self, volume: Any) -> None:
        if self.store.owner is not None and volume is not None and self.store.owner[0] is not volume.array:
            self.store.clear()
            self._set_projections(None)

    def _on_score(self, vs: VolumeScore | None) -> None:
        if vs is None:
            return
        emb = vs.result.embeddings
        if emb is None:
            det = self.state.detector
            self.note.setText(f"The {getattr(det, 'name', 'current')} detector gives no embeddings to draw.")
            return
        try:
            self.store.add(emb, scored_indices(vs), (vs.prepared.volume.array, self.state.detector))
        except (KeyError, IndexError, ValueError) as exc:
            self.status.setText(notify_error(exc, "Poincaré disk"))
            return
        self.reproject()

    def reproject(self) -> None:
        """Project the stored embeddings again (in a thread worker for big sets)."""
        emb = self.store.combined()
        if emb is None:
            self._set_projections(None)
            return
        generation = self.store.generation
        if len(emb.points) <= self.sync_limit:
            try:
                self._set_projections(project_both(emb), generation)
            except AnomaLensError as exc:
                self.status.setText(notify_error(exc, "Poincaré disk"))
            return
        from napari.qt.threading import create_worker

        self._pending = generation
        self.status.setText(f"projecting {len(emb.points)} embeddings…")
        worker = create_worker(project_both, emb, _ignore_errors=True)
        worker.returned.connect(lambda res, g=generation: self._set_projections(res, g))
        worker.errored.connect(lambda exc: self.status.setText(notify_error(exc, "Poincaré disk")))
        self._worker = worker
        worker.start()

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Block (processing Qt events) until a background projection has landed (for tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while self._pending >= 0 and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self._pending < 0

    def _set_projections(self, both: tuple[DiskProjection, DiskProjection] | None, generation: int = -1) -> None:
        if generation >= 0 and generation != self.store.generation:
            return  # a newer scoring has arrived meanwhile; its projection will follow
        self._pending = -1
        self.patch_projection, self.slice_projection = both if both is not None else (None, None)
        if both is None:
            self.note.setText("Score a slice or the volume in the Detector dock to see its embeddings here.")
            self.status.setText("")
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

    def _brushes(self, proj: DiskProjection, idx: np.ndarray) -> list:
        import pyqtgraph as pg

        if proj.scores is None or len(proj.scores) == 0:
            return [pg.mkBrush("#4a90e2")] * len(idx)
        s = proj.scores.astype(np.float64)
        lo, hi = np.percentile(s, (1.0, 99.0))
        t = np.clip((s[idx] - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
        rgba = self.colormap.map(0.15 + 0.85 * t, mode="byte")
        return [pg.mkBrush(*c) for c in rgba]

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
        score = "" if proj.scores is None else f", score {float(proj.scores[index]):.3g}"
        self.status.setText(f"slice {z}, patch at (y {y:.0f}, x {x:.0f}){score}")

    def _show_in_viewer(self, z: int, y: float, x: float) -> None:
        layer = scan_layer(self.viewer, self.state)
        if layer is None:
            return
        goto_index(self.viewer, layer, z)
        pts = find_layer(self.viewer, HIGHLIGHT_LAYER)
        if pts is None:
            self.viewer.add_points([[z, y, x]], name=HIGHLIGHT_LAYER, scale=layer.scale[-3:], size=12,
                                   symbol="ring", face_color="transparent", border_color="cyan",
                                   metadata={ROLE_KEY: "highlight"})
        else:
            pts.data = np.array([[z, y, x]])

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
