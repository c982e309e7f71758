"""The Poincaré-disk dock: the followed result's embeddings on the unit disk, coloured like its heatmap.

Every scoring adds its embeddings to its result (per slice, like the heatmap; ``anomalens.app.embeddings``)
and the disk shows those of the result the docks follow (the loaded model's, for the shown scan),
projected by ``anomalens.engine.projection.disk_views``: first **centred on the normal tissue** by an
isometry (the centroid of the normal patches goes to the centre, the classifier hyperplane moves with it;
"normal" = the patches of the slices marked normal, else those below the calibrated threshold, else all,
and the note says which), then log map, the classifier's normal and the main other direction, exp map,
scaled for display when the points would be a blob (the note says so: that scaling is not an isometry).
Each point is coloured by the result's map at its patch centre, in the result's unit, on the heatmap
layer's colour scale, and a click or hover says that value and its unit, so the disk and the heatmap agree.
Two views: the patches of the current slice, or one point per scored slice (its mean embedding, valued by
its highest patch). Rings: green, slices marked normal; magenta, patches whose centre lies in a reference
lesion mask (a labels layer with the "lesion" role, e.g. a sample's expert mask); cyan, the selection.
Hovering a point rings its patch on the canvas; a click also jumps to its slice. A lasso on the disk, or
one drawn on the scan ("Lasso on scan": a shapes layer on the scan's grid), selects points, which can be
marked normal in the case library. Under the disk, a report counts the flagged patches (centre in the
result's mask) and the reference-lesion patches on the anomalous side of the hyperplane, exactly (in the
model's own dimensions, where the isometry changes no side). Detectors without hyperbolic embeddings
(PatchCore) are drawn through the same tangent map, and the note under the disk says so.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSize, Signal
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ...engine.errors import AnomaLensError
from ..embeddings import EmbeddingStore, values_at_patches
from ..messages import notify_error, notify_info
from ..orientation import same_geometry
from ..reader import ROLE_KEY
from ..results import (
    HEATMAP_COLORMAP,
    HIGHLIGHT_LAYER,
    current_index,
    find_layer,
    format_score,
    goto_index,
    heatmap_contrast,
    highlight_layer,
    highlight_patch,
)
from ..state import get_state
from ..turns import next_turn
from .calibration import ensure_volume, flagged_warning, mark_normal, scan_layer
from .docking import ScrollsWhenDocked

if TYPE_CHECKING:
    import napari

    from ...engine.detectors import Embeddings
    from ...engine.projection import DiskProjection
    from ..results import ScanResults

__all__ = ["HIGHLIGHT_LAYER", "LASSO_LAYER", "EmbeddingStore", "PoincareWidget", "project_both", "reference_layer"]

MODES = ("Patches of the current slice", "One point per slice")
MARKED_COLOR = "#2ecc71"
SELECTED_COLOR = "#00d8ff"
REFERENCE_COLOR = "#ff4fd8"
HOVER_COLOR = "#ffffff"
#: The shapes layer a lasso is drawn in on the scan ("Lasso on scan").
LASSO_LAYER = "AnomaLens lasso"
_EMPTY_NOTE = "Score a slice or the volume in the Detector dock to see its embeddings here."


def project_both(emb: Embeddings, reference: np.ndarray | None = None, reference_note: str = "",
                 flagged: np.ndarray | None = None,
                 slice_scores: dict[int, float] | None = None) -> tuple[DiskProjection, DiskProjection]:
    """Per-patch and per-slice pictures of the same embeddings, centred on ``reference`` (worker thread).

    ``reference`` is the mask of normal patches (``engine.projection.reference_selection``); None: all.
    ``flagged``: the patches in the result's mask, which choose the head drawn (``explaining_view``).
    ``slice_scores``: z → the result's slice score, the slice points' values (the curve's numbers).
    """
    from ...engine.projection import disk_views, reference_selection

    if reference is None:
        reference, reference_note = reference_selection(None, slice_index=np.asarray(emb.slice_index))
    return disk_views(emb, reference, reference_note or "the reference patches", flagged=flagged,
                      slice_scores=slice_scores)


def _pass_click(event: Any) -> None:
    """A ring's click handler: decline, so pyqtgraph's scene offers the click to the point under it."""
    event.ignore()


def reference_layer(viewer: napari.viewer.Viewer, shape: tuple[int, ...]) -> Any:
    """The reference lesion mask: a labels layer with the "lesion" role on the scan's grid (``shape``), or None."""
    from napari.layers import Labels

    for lyr in viewer.layers:
        if isinstance(lyr, Labels) and lyr.metadata.get(ROLE_KEY) == "lesion" and tuple(lyr.data.shape) == shape:
            return lyr
    return None


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


class PoincareWidget(ScrollsWhenDocked, QWidget):
    """Dock widget: the current scan's embeddings on the Poincaré disk."""

    #: Sets with more points than this are projected in a thread worker (smaller ones right away): centred
    #: and drawn both ways, 14,400 brain1 patches take ~60 ms on an idle core but over 100 ms on a shared one
    #: (bench/bench_reading_room.py), so only small sets are projected on the UI thread.
    sync_limit = 2_000

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        import pyqtgraph as pg
        from qtpy.QtWidgets import QGraphicsEllipseItem

        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.results: ScanResults | None = None  # whose embeddings the disk shows
        self._empty = EmbeddingStore()
        self._projected: tuple | None = None
        self.patch_projection: DiskProjection | None = None
        self.slice_projection: DiskProjection | None = None
        self.shown = np.zeros(0, int)  # indices into the shown projection
        self.selection = np.zeros(0, int)
        self._worker: Any = None
        self._pending: tuple | None = None
        self._hovered: int | None = None
        self._outline_cache: tuple[Any, np.ndarray, np.ndarray] | None = None
        self._lasso_layer: Any = None

        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.lasso_button = QPushButton("Lasso")
        self.lasso_button.setCheckable(True)
        self.lasso_button.setToolTip("Drag around points to select them")
        self.mark_button = QPushButton("Mark selection normal")
        self.mark_button.setToolTip("Marks the slices of the selected points normal in the case library "
                                    "(the patches are kept too)")
        self.clear_button = QPushButton("Clear selection")
        self.canvas_lasso_button = QPushButton("Lasso on scan")
        self.canvas_lasso_button.setToolTip("Draw around patches on the scan (a shapes layer in lasso mode): their "
                                            "points are selected on the disk")
        self.note = QLabel(_EMPTY_NOTE)
        self.note.setWordWrap(True)
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.report = QLabel("")
        self.report.setWordWrap(True)

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
        self.reference_rings = pg.ScatterPlotItem(size=12, brush=None, pen=pg.mkPen(REFERENCE_COLOR, width=2))
        self.selected_rings = pg.ScatterPlotItem(size=11, brush=None, pen=pg.mkPen(SELECTED_COLOR, width=2))
        self.hover_ring = pg.ScatterPlotItem(size=16, brush=None, pen=pg.mkPen(HOVER_COLOR, width=2))
        self.scatter = pg.ScatterPlotItem(size=7, pen=None, hoverable=True)
        for item in (self.geodesic, self.marked_rings, self.reference_rings, self.selected_rings, self.scatter,
                     self.hover_ring):
            self.view.addItem(item)
        for ring in (self.geodesic, self.marked_rings, self.reference_rings, self.selected_rings, self.hover_ring):
            # drawings over the points: a click goes through to the point (the hover ring, drawn exactly on the
            # point under the mouse, took every click, and clicking a point never jumped to its slice). pyqtgraph's
            # scene offers clicks to every item under the mouse, whatever Qt buttons it accepts, until one takes it
            ring.mouseClickEvent = _pass_click
        self.colormap = pg.colormap.get(HEATMAP_COLORMAP)  # the heatmap layer's: one colour, one value

        top = QHBoxLayout()  # the mode on a row of its own: with the lassos beside it the dock is wider
        top.addWidget(self.lasso_button)  # than a 1,366 px screen's column and scrolls sideways
        top.addWidget(self.canvas_lasso_button)
        sel = QHBoxLayout()
        sel.addWidget(self.mark_button)
        sel.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.mode_combo)
        layout.addLayout(top)
        layout.addWidget(_Box(self.plot, 280, 280), 1)
        layout.addWidget(self.legend)
        layout.addWidget(self.report)
        layout.addWidget(self.note)
        layout.addLayout(sel)
        layout.addWidget(self.status)

        self.scatter.sigClicked.connect(self.on_points_clicked)
        self.scatter.sigHovered.connect(self.on_points_hovered)
        self.view.sigLasso.connect(self.select_in_polygon)
        self.lasso_button.toggled.connect(self._set_lasso)
        self.mark_button.clicked.connect(self.mark_selection)
        self.clear_button.clicked.connect(self.clear_selection)
        self.canvas_lasso_button.clicked.connect(self.start_canvas_lasso)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.state.score_changed.connect(self._on_score)
        self._marks_later = next_turn(self, self._show_marks)  # the canvas answers N first (app/turns.py)
        self.state.marks_changed.connect(self._on_marks_changed)
        self.state.mask_changed.connect(self._on_mask_changed)
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

    def _on_marks_changed(self, _marked: Any = None) -> None:
        self._marks_later.start()

    def _show_marks(self) -> None:
        """Marks ring points and may change the normal reference the disk is centred on: project again then."""
        if self.results is not None and len(self.store) and self._projected is not None \
                and self._projected != self._key():
            self.redraw()  # the rings at once, where the points are now
            self.reproject(background=True)  # marking is a keystroke: the re-centring comes off the UI thread
        else:
            self.redraw()

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and layer is self._lasso_layer and layer not in self.viewer.layers:
            self._lasso_layer = None
        if layer is None or getattr(layer, "metadata", {}).get(ROLE_KEY) == "lesion":
            self._outline_cache = None
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

    def _marked_scored(self) -> tuple[int, ...]:
        marked = set(self.state.extras.get("marked_slices") or [])
        return tuple(sorted(z for z in self.store.slices if z in marked))

    def _key(self) -> tuple:
        """What the projection depends on: the embeddings and the normal reference (scored marked slices)."""
        return (id(self.store), self.store.generation, self._marked_scored())

    def normal_reference(self, emb: Embeddings) -> tuple[np.ndarray, str]:
        """The patches the disk is centred on, and which they are (``engine.projection.reference_selection``)."""
        from ...engine.projection import reference_selection

        res = self.results
        return reference_selection(None if emb.scores is None else np.asarray(emb.scores),
                                   threshold=None if res is None else res.threshold,
                                   slice_index=np.asarray(emb.slice_index), marked=list(self._marked_scored()))

    def reproject(self, background: bool = False) -> None:
        """Project the shown result's embeddings again (in a thread worker for big sets, or when ``background``).

        A mark or an undo re-centres the disk; done on the UI thread, the projection's algebra competes with
        torch's threads for a small machine's cores and stalled the keystroke (bench_reading_room).
        """
        emb = self.store.combined()
        if emb is None:
            self._set_projections(None)
            return
        key = self._key()
        reference, how = self.normal_reference(emb)
        res = self.results  # its mask, as shown now, picks the head drawn (the one that explains it best)
        flagged = None if res is None or res.mask is None or not emb.alternatives else \
            values_at_patches(res.mask, np.asarray(emb.slice_index), np.asarray(emb.centers)) > 0
        own = None if res is None else {int(z): float(sl.score) for z, sl in res.slices.items()}
        if len(emb.points) <= self.sync_limit and not background:
            try:
                self._set_projections(project_both(emb, reference, how, flagged, own), key)
            except AnomaLensError as exc:
                self.status.setText(notify_error(exc, "Poincaré disk"))
            return
        from napari.qt.threading import create_worker

        self._pending = key
        self.status.setText(f"projecting {len(emb.points)} embeddings…")
        worker = create_worker(project_both, emb, reference, how, flagged, own, _ignore_errors=True)
        worker.returned.connect(lambda res, k=key: self._set_projections(res, k))
        worker.errored.connect(lambda exc: self.status.setText(notify_error(exc, "Poincaré disk")))
        self._worker = worker
        worker.start()

    def wait(self, timeout_s: float = 10.0) -> bool:
        """Block (processing Qt events) until a due re-centring and a background projection have landed (tests)."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while (self._pending is not None or self._marks_later.isActive()) and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self._pending is None

    def _set_projections(self, both: tuple[DiskProjection, DiskProjection] | None,
                         key: tuple | None = None) -> None:
        if key is not None and key != self._key():
            return  # a newer scoring (or another result) has arrived meanwhile; its projection will follow
        self._pending = None
        self._projected = key
        self._outline_cache = None
        self._hovered = None
        self.patch_projection, self.slice_projection = both if both is not None else (None, None)
        if both is None:
            self.note.setText(_EMPTY_NOTE)
            self.status.setText("")
            self.legend.setText("")
            self.report.setText("")
        else:
            self.note.setText(self.projection.note if self.projection is not None else "")
            layer = scan_layer(self.viewer, self.state)
            if layer is not None and layer.ndim == 3:
                self._keep_active(lambda: highlight_layer(self.viewer, layer))  # ready before the first hover
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
        self.hover_ring.setData([], [])
        self._hovered = None
        if proj is None or len(proj) == 0:
            self.shown = np.zeros(0, int)
            for item in (self.scatter, self.marked_rings, self.reference_rings, self.selected_rings):
                item.setData([], [])
            self.geodesic.setData([], [])
            self.report.setText("")
            self._update_buttons()
            return
        self.note.setText(proj.note)
        chosen = f"; {self.selection.size} selected" if self.selection.size else ""  # a lasso's count stays said
        if self.per_slice:
            self.shown = np.arange(len(proj))
            # (the line said "projecting 40000 embeddings…" long after they had landed)
            self.status.setText(f"{len(proj)} scored slice{'s' * (len(proj) != 1)}, one point each{chosen}")
        else:
            z = self.current_z()
            self.shown = np.flatnonzero(proj.slice_index == z)
            if self.shown.size == 0:
                self.status.setText(f"slice {z} is not scored yet: score it (or the volume) in the Detector dock")
            else:
                self.status.setText(f"{self.shown.size} patches of slice {z}{chosen}")
        xy = proj.xy[self.shown]
        self.scatter.setData(x=xy[:, 0], y=xy[:, 1], data=self.shown, brush=self._brushes(proj, self.shown))
        marked = set(self.state.extras.get("marked_slices") or [])
        ring = self.shown[np.isin(proj.slice_index[self.shown], list(marked))] if marked else np.zeros(0, int)
        self.marked_rings.setData(x=proj.xy[ring, 0], y=proj.xy[ring, 1])
        inside, _ = self.outlines(proj)
        ref = self.shown[inside[self.shown]] if inside is not None else np.zeros(0, int)
        self.reference_rings.setData(x=proj.xy[ref, 0], y=proj.xy[ref, 1])
        self.report.setText(self.hyperplane_report())
        sel = self.selection
        self.selected_rings.setData(x=proj.xy[sel, 0], y=proj.xy[sel, 1])
        g = proj.geodesic
        if g is None:
            self.geodesic.setData([], [])
        else:
            self.geodesic.setData(g[:, 0], g[:, 1])
        self._update_buttons()

    def _on_mask_changed(self, *_: Any) -> None:
        self._outline_cache = None
        self.redraw()

    def outlines(self, proj: DiskProjection | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per point of ``proj``: inside the reference lesion mask (None: no reference layer), and flagged.

        A patch is inside / flagged when its centre voxel is in the reference mask / the result's mask; a
        slice-mean point when any of its slice's patches is. Cached per projection, layer and result update.
        """
        proj = self.projection if proj is None else proj
        res = self.results
        if proj is None or res is None:
            return None, None
        layer = reference_layer(self.viewer, tuple(res.maps.shape))
        key = (id(proj), id(layer), res.generation)
        if self._outline_cache is not None and self._outline_cache[0] == key:
            return self._outline_cache[1], self._outline_cache[2]
        patches = self.patch_projection
        if patches is None:
            return None, None
        inside = None if layer is None else values_at_patches(np.asarray(layer.data), patches.slice_index,
                                                               patches.centers) > 0
        flagged = values_at_patches(res.mask, patches.slice_index, patches.centers) > 0
        if proj is not patches:  # slice means: any of the slice's patches
            inside = None if inside is None else np.isin(proj.slice_index, patches.slice_index[inside])
            flagged = np.isin(proj.slice_index, patches.slice_index[flagged])
        self._outline_cache = (key, inside, flagged)
        return inside, flagged

    def hyperplane_report(self) -> str:
        """How many flagged and reference-lesion patches lie on the anomalous side of the hyperplane (exact)."""
        proj, res = self.patch_projection, self.results
        if proj is None or res is None:
            return ""
        if proj.side is None:
            return f"The {res.model.detector} detector has no classifier hyperplane: no sides to count."
        inside, flagged = self.outlines(proj)
        assert flagged is not None
        across = proj.side > 0
        parts = []
        if not res.calibrated:
            parts.append("no flagged patches (the model is not calibrated: no mask)")
        elif not flagged.any():
            parts.append("no flagged patches (no patch centre lies in the result's mask)")
        else:
            parts.append(f"{int((flagged & across).sum())} of {int(flagged.sum())} flagged patches (centre in the "
                         "result's mask)")
        if inside is not None:
            parts.append(f"{int((inside & across).sum())} of {int(inside.sum())} patches in the reference lesion")
        rest = ~(inside if inside is not None else flagged)
        share = 100 * float(across[rest].mean()) if rest.any() else 0.0
        parts.append(f"{share:.1f} % of the {int(rest.sum())} others")
        whose = f" of {proj.hyperplane_of}" if proj.hyperplane_of else ""
        text = (f"Anomalous side of the hyperplane{whose} (exact, {proj.basis.shape[0]}-D, all {len(across)} "
                "scored patches): " + "; ".join(parts) + ".")
        if proj.drawn_side is not None:
            moved = int(((proj.drawn_side > 0) != across).sum())
            text += f" {moved} point(s) are drawn on the other side (projection)."
        return text

    def colour_limits(self) -> tuple[float, float] | None:
        """The colour scale of the points: the heatmap layer's contrast limits (the result's unit)."""
        res = self.results
        if res is None:
            return None
        heat = find_layer(self.viewer, res.heatmap_name)
        if heat is not None:
            return (float(heat.contrast_limits[0]), float(heat.contrast_limits[1]))
        return heatmap_contrast(res.ramp_maps(), res.calibration, res.unit)

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
        what = "its slice's score (the heatmap's maximum there, as on the curve)" if self.per_slice else \
            "the heatmap value at its patch centre"
        rings = "Rings: green, marked normal; cyan, selected"
        layer = reference_layer(self.viewer, tuple(res.maps.shape))
        if layer is not None:
            rings += f"; magenta, in the reference lesion ({layer.name})"
        self.legend.setText(f"Colour: {what}, in {res.unit.short} units ({res.label}); dark ≤ {lo:.3g}, "
                            f"bright ≥ {hi:.3g}, as on the heatmap layer. {rings}.")

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
            where = "the slice's score, as on the curve" if self.per_slice else "heatmap value there"
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
        if proj is self.projection and 0 <= index < len(proj):
            self._hovered = index
            self.hover_ring.setData(x=proj.xy[[index], 0], y=proj.xy[[index], 1])

    def on_points_hovered(self, item: Any, points: Any, event: Any = None) -> None:
        """The scatter's hover handler: say the hovered point's slice, patch and value, and ring its patch."""
        if points is None or len(points) == 0:
            return
        self.hover_point(int(points[0].data()))

    def hover_point(self, index: int) -> None:
        """Ring point ``index`` on the disk and its patch on the canvas (no slice jump: that is a click)."""
        proj = self.projection
        if proj is None:
            return
        self.status.setText(self.describe_point(index))  # always: the status may have said something else since
        if index == self._hovered:
            return
        self._hovered = index
        self.hover_ring.setData(x=proj.xy[[index], 0], y=proj.xy[[index], 1])
        z = int(proj.slice_index[index])
        y, x = (float(v) for v in proj.centers[index])
        layer = scan_layer(self.viewer, self.state)
        if layer is not None:
            self._keep_active(lambda: highlight_patch(self.viewer, layer, z, y, x))

    def _keep_active(self, action: Any) -> None:
        """Run ``action`` (which may add a layer) without taking the user's active layer away."""
        active = self.viewer.layers.selection.active
        action()
        if active is not None and active in self.viewer.layers and self.viewer.layers.selection.active is not active:
            self.viewer.layers.selection.active = active

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
        self.redraw()
        self.status.setText(f"{self.selection.size} point(s) selected")
        return self.selection

    def start_canvas_lasso(self) -> Any:
        """Add (or reuse) the shapes layer on the scan's grid and put it in lasso mode; returns the layer.

        Each polygon drawn in it selects the patches of its slice whose centres it encloses (``select_on_canvas``).
        """
        scan = scan_layer(self.viewer, self.state)
        if scan is None:
            notify_info("open a scan first")
            return None
        layer = self._lasso_layer
        if layer is None or layer not in self.viewer.layers:
            nd = scan.ndim
            # the scan's geometry, units included: in pixel units napari warned "Inconsistent units across
            # layers; units will not be used for rendering"
            place = same_geometry(scan) if nd == 3 else {
                "scale": tuple(scan.scale), "translate": tuple(scan.translate), "rotate": scan.rotate,
                "shear": scan.shear, "affine": scan.affine.affine_matrix}
            layer = self.viewer.add_shapes(ndim=nd, name=LASSO_LAYER, edge_color=SELECTED_COLOR,
                                           face_color="transparent", edge_width=1.5, metadata={ROLE_KEY: "lasso"},
                                           **place)
            layer.events.data.connect(self._on_canvas_shapes)
            self._lasso_layer = layer
        self.viewer.layers.selection.active = layer
        try:
            layer.mode = "add_polygon_lasso"
        except ValueError:  # an older napari without the lasso mode
            layer.mode = "add_polygon"
        self.status.setText("draw around patches on the scan: their points are selected on the disk")
        return layer

    def _on_canvas_shapes(self, event: Any = None) -> None:
        if getattr(event, "action", "added") not in ("added", "removed", "changed"):
            return  # "adding", "changing": the shape is not finished
        layer = self._lasso_layer
        if layer is None:
            return
        polys = [np.asarray(s) for s, kind in zip(layer.data, layer.shape_type, strict=True)
                 if kind in ("polygon", "rectangle", "ellipse") and len(s) >= 3]
        self.select_on_canvas(polys)

    def select_on_canvas(self, polygons: list[np.ndarray]) -> np.ndarray:
        """Select the points of the patches whose centres lie inside polygons drawn on the scan.

        ``polygons`` are ``(k, 3)`` (z, y, x) data coordinates of the scan, each on one slice (a lasso on the
        canvas). Patch view: those patches; slice view: the slices holding any of them. Returns the indices.
        """
        from skimage.measure import points_in_poly

        patches, proj = self.patch_projection, self.projection
        if patches is None or proj is None:
            self.selection = np.zeros(0, int)
            self.redraw()
            return self.selection
        hit = np.zeros(len(patches), bool)
        for poly in polygons:
            poly = np.asarray(poly, dtype=float)
            if poly.ndim != 2 or poly.shape[1] < 3 or len(poly) < 3:
                continue
            z = round(float(np.median(poly[:, -3])))
            on = np.flatnonzero(patches.slice_index == z)
            if on.size:
                hit[on[points_in_poly(patches.centers[on].astype(float), poly[:, -2:])]] = True
        if proj is patches:
            self.selection = np.flatnonzero(hit)
        else:
            self.selection = np.flatnonzero(np.isin(proj.slice_index, patches.slice_index[hit]))
        self.state.set_disk_selection(self.selected_patches())
        self.redraw()
        self.status.setText(f"{self.selection.size} point(s) selected from the lasso on the scan")  # after redraw's
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
        self._marks_later.stop()  # the disk's own button: its rings now, not a turn later
        self._show_marks()
        warning = flagged_warning(self.state, new, notify=True, viewer=self.viewer)
        self.status.setText(f"marked {len(new)} new slice{'s' * (len(new) != 1)} normal"
                            + (f"; {warning}" if warning else ""))
        return new

    def _update_buttons(self) -> None:
        self.mark_button.setEnabled(self.selection.size > 0)
        self.clear_button.setEnabled(self.selection.size > 0)
