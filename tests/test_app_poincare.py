"""The Poincaré-disk dock with real Qt/OpenGL (run under ``xvfb-run -a``; never QT_QPA_PLATFORM=offscreen).

Embeddings are synthetic (``tests.fakes.EmbeddingDetector``: a known number per slice) and reach the dock
through the viewer's scoring path (``score_scan``, then ``publish``), so the test checks the dock, not a
detector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume

pytestmark = pytest.mark.gui

N_SLICES, N_PATCH, SIZE = 5, 16, 32


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "data"


class _Drag:
    """The parts of pyqtgraph's MouseDragEvent the lasso reads."""

    def __init__(self, pos: Any, start: bool, finish: bool) -> None:
        self._pos, self._start, self._finish = pos, start, finish

    def button(self) -> Any:
        from qtpy.QtCore import Qt

        return Qt.MouseButton.LeftButton

    def pos(self) -> Any:
        return self._pos

    def isStart(self) -> bool:
        return self._start

    def isFinish(self) -> bool:
        return self._finish

    def accept(self) -> None:
        pass

    def ignore(self) -> None:
        raise AssertionError("the lasso should take the drag")


def _volume() -> Volume:
    arr = np.random.default_rng(0).random((N_SLICES, SIZE, SIZE)).astype(np.float32)
    return Volume(arr, spacing=(0.5, 0.5, 2.0), modality="MR")


def _score(viewer: Any, volume: Volume, manifold: str = "lorentz", slices: np.ndarray | None = None) -> Any:
    """Score ``volume`` with a detector of known embeddings through the viewer's path (``score_scan``, publish)."""
    from anomalens.app.results import publish
    from anomalens.app.state import get_state
    from anomalens.engine.scoring import score_scan
    from tests.fakes import embedding_detector

    state = get_state(viewer)
    det = embedding_detector(manifold)
    state.set_model(det)
    result = score_scan(det, volume, slices)
    publish(viewer, state, "scan", result, det)
    return result


def _viewer_with_scan(make_napari_viewer: Any):
    from anomalens.app.reader import image_layer_data
    from anomalens.app.state import get_state
    from anomalens.app.widgets.poincare import PoincareWidget

    viewer = make_napari_viewer(show=True)
    vol = _volume()
    data, kwargs, _ = image_layer_data(vol, name="scan")
    layer = viewer.add_image(data, **kwargs)
    state = get_state(viewer)
    state.set_volume(vol)
    widget = PoincareWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Poincaré disk")
    return viewer, layer, state, widget, vol


def test_one_point_per_embedding_and_a_click_jumps_to_the_slice(make_napari_viewer: Any, qtbot: Any) -> None:
    from anomalens.app.results import current_index, goto_index
    from anomalens.app.widgets.poincare import HIGHLIGHT_LAYER

    viewer, layer, state, w, vol = _viewer_with_scan(make_napari_viewer)
    _score(viewer, vol)
    assert len(w.patch_projection) == N_SLICES * N_PATCH
    # patch view: one point per patch of the current slice; over all slices, one per embedding
    drawn = 0
    for z in range(N_SLICES):
        goto_index(viewer, layer, z)
        assert len(w.scatter.points()) == N_PATCH
        assert set(w.patch_projection.slice_index[[p.data() for p in w.scatter.points()]]) == {z}
        drawn += len(w.scatter.points())
    assert drawn == N_SLICES * N_PATCH
    assert np.all(np.hypot(*w.patch_projection.xy.T) < 1)
    assert w.geodesic.getData()[0] is not None and len(w.geodesic.getData()[0]) > 10  # the hyperplane
    assert "Lorentz" in w.note.text()

    w.set_per_slice(True)
    assert len(w.scatter.points()) == N_SLICES
    res = state.results  # each slice's point says the slice's own score, the number its curve and table say
    for z, sl in res.slices.items():
        k = list(w.slice_projection.slice_index).index(z)
        assert w.slice_projection.scores[k] == pytest.approx(sl.score, rel=1e-6)
    requested, highlighted = [], []
    state.slice_requested.connect(requested.append)
    state.highlight_requested.connect(highlighted.append)
    target = next(p for p in w.scatter.points() if w.slice_projection.slice_index[p.data()] == 3)
    w.on_points_clicked(w.scatter, [target], None)
    assert current_index(viewer, layer) == 3
    assert requested == [3] and highlighted[0][0] == 3
    marker = viewer.layers[HIGHLIGHT_LAYER]
    np.testing.assert_allclose(marker.data[0], [3, *w.slice_projection.centers[target.data()]])


def test_lasso_marks_normals_that_are_then_ringed(make_napari_viewer: Any, qtbot: Any, data_dir) -> None:
    from qtpy.QtCore import QPointF

    from anomalens.engine.caselib import CaseLibrary, study_key

    viewer, _, state, w, vol = _viewer_with_scan(make_napari_viewer)
    _score(viewer, vol, slices=np.array([1, 2, 4]))  # scoring a few slices only
    w.set_per_slice(True)
    assert sorted(w.slice_projection.slice_index) == [1, 2, 4]
    xy = w.slice_projection.xy
    keep = [i for i in range(3) if w.slice_projection.slice_index[i] in (2, 4)]
    lo, hi = xy[keep].min(0) - 1e-3, xy[keep].max(0) + 1e-3
    box = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    selected = w.select_in_polygon(box)
    assert w.status.text() == f"{selected.size} point(s) selected"  # not replaced by a count of all points
    # the same lasso drawn with the mouse (a left-drag on the disk while Lasso is on)
    w.clear_selection()
    w.lasso_button.setChecked(True)
    for k, corner in enumerate(box):
        w.view.mouseDragEvent(_Drag(w.view.mapFromView(QPointF(*corner)), k == 0, k == len(box) - 1))
    np.testing.assert_array_equal(np.sort(w.selection), np.sort(selected))
    inside = set(w.slice_projection.slice_index[selected])
    assert {2, 4} <= inside and state.extras["disk_selection"]
    assert len(w.selected_rings.points()) == len(selected)
    assert w.mark_button.isEnabled()
    new = w.mark_selection()
    assert set(new) == inside and state.extras["marked_slices"] == sorted(inside)
    assert len(w.marked_rings.points()) == len(inside)
    lib = CaseLibrary(data_dir / "cases.sqlite")  # what a restarted viewer would read
    assert lib.marks(study_key(vol)) == sorted(inside)
    lib.close()


def test_features_without_geometry_are_drawn_with_a_note_and_big_sets_in_a_worker(make_napari_viewer: Any,
                                                                                   qtbot: Any) -> None:
    viewer, _, state, w, vol = _viewer_with_scan(make_napari_viewer)
    w.sync_limit = 10  # force the thread worker
    _score(viewer, vol, manifold="euclidean")
    assert w.wait(20.0)
    assert w.patch_projection is not None and len(w.patch_projection) == N_SLICES * N_PATCH
    assert "not hyperbolic" in w.note.text()
    gx = w.geodesic.getData()[0]
    assert gx is None or len(gx) == 0  # PatchCore-like features have no hyperplane
    state.set_model(None)  # a new model: the old embeddings are dropped
    assert w.patch_projection is None and len(w.scatter.points()) == 0


LESION = (slice(2, 4), slice(9, 16), slice(17, 24))  # a bright square holding the patch centre (12, 20)


def _lesion_case(make_napari_viewer: Any):
    """A dim scan with a bright square, a calibrated fake model whose embeddings are a blob far out, scored."""
    from anomalens.app.reader import ROLE_KEY
    from anomalens.app.results import publish
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import score_scan
    from tests.fakes import lesion_embedding_detector

    rng = np.random.default_rng(0)
    arr = (rng.random((N_SLICES, SIZE, SIZE)) * 0.5).astype(np.float32)
    arr[LESION] = 1.0
    vol = Volume(arr, spacing=(0.5, 0.5, 2.0), modality="MR")
    viewer, layer, state, w, _ = _viewer_with_scan(make_napari_viewer)
    layer.data = vol.array
    state.set_volume(vol)
    det = lesion_embedding_detector()
    calibrate_detector(det, (rng.random((6, SIZE, SIZE)) * 0.5).astype(np.float32))
    state.set_model(det)
    result = score_scan(det, vol)
    publish(viewer, state, "scan", result, det)
    truth = np.zeros(arr.shape, np.uint8)
    truth[LESION] = 1
    viewer.add_labels(truth, name="scan lesion", scale=vol.spacing_zyx, metadata={ROLE_KEY: "lesion"})
    return viewer, layer, state, w, vol, result


def _lesion_points(w: Any) -> np.ndarray:
    """Indices (in the patch projection) of the patches centred in the bright square."""
    p = w.patch_projection
    return np.flatnonzero(np.isin(p.slice_index, [2, 3]) & (p.centers[:, 0] == 12) & (p.centers[:, 1] == 20))


def test_the_disk_is_centred_on_normal_tissue_with_outlines_and_a_hyperplane_report(make_napari_viewer: Any,
                                                                                    qtbot: Any) -> None:
    from anomalens.app.results import goto_index
    from anomalens.engine.projection import NORMAL_RADIUS, project_embeddings

    viewer, layer, state, w, _, result = _lesion_case(make_napari_viewer)
    assert result.calibrated and result.lesion_mask is not None
    p = w.patch_projection
    assert p is not None and len(p) == N_SLICES * N_PATCH
    lesion = _lesion_points(w)
    assert len(lesion) == 2
    # uncentred, the model's points are one blob near the rim; the dock centres them on normal tissue
    raw = np.hypot(*project_embeddings(w.store.combined()).xy.T)
    assert raw.min() > 0.7
    r = np.hypot(*p.xy.T)
    normal = np.setdiff1d(np.arange(len(p)), lesion)
    assert np.quantile(r[normal], 0.95) == pytest.approx(NORMAL_RADIUS, abs=0.05)
    assert np.median(r[normal]) < 0.45 and r[lesion].min() > np.quantile(r[normal], 0.95)
    assert "below the calibrated threshold" in w.note.text() and "not an isometry" in w.note.text()
    assert np.all(p.side[lesion] > 0) and np.all(p.drawn_side[lesion] > 0)
    assert np.all(p.xy[lesion, 0] > np.quantile(p.xy[normal, 0], 0.95))  # right: towards the anomalous side
    gx, _ = w.geodesic.getData()
    assert gx is not None and len(gx) > 10

    # outlines: the reference lesion's patch on its slice, the marked normals on theirs
    goto_index(viewer, layer, 2)
    assert len(w.reference_rings.points()) == 1
    np.testing.assert_allclose(w.reference_rings.points()[0].pos(), p.xy[lesion[0]], atol=1e-6)
    assert "magenta, in the reference lesion (scan lesion)" in w.legend.text()
    flagged = w.outlines(p)[1]
    assert flagged[lesion].all()
    text = w.report.text()
    assert f"{int((flagged & (p.side > 0)).sum())} of {int(flagged.sum())} flagged patches" in text
    assert "2 of 2 patches in the reference lesion" in text
    assert "head 1 of" not in text  # one classifier: no head to name
    w.patch_projection.hyperplane_of = "head 1 of 3, the heatmap averaging all 3"  # the view drawn names its head
    assert w.hyperplane_report().startswith("Anomalous side of the hyperplane of head 1 of 3, the heatmap averaging")
    w.patch_projection.hyperplane_of = ""

    # marking slices normal re-centres on them (and says so) and rings them
    state.set_marked_slices([0, 1])
    assert w.wait(20.0)  # a mark re-centres the disk in a worker, off the UI thread
    assert "the 32 patches of the 2 slice(s) marked normal" in w.note.text()
    goto_index(viewer, layer, 0)
    assert len(w.marked_rings.points()) == N_PATCH and len(w.reference_rings.points()) == 0
    assert "2 of 2 patches in the reference lesion" in w.report.text()  # sides do not depend on the centre


def test_hover_rings_the_patch_and_a_lasso_on_the_scan_selects_points(make_napari_viewer: Any, qtbot: Any) -> None:
    from anomalens.app.results import current_index, goto_index
    from anomalens.app.widgets.poincare import HIGHLIGHT_LAYER, LASSO_LAYER

    viewer, layer, state, w, _, _ = _lesion_case(make_napari_viewer)
    goto_index(viewer, layer, 2)
    lesion = _lesion_points(w)[0]
    # hovering the lesion's point rings its patch on the canvas, stays on the slice, keeps the active layer
    active = viewer.layers.selection.active
    shown = next(pt for pt in w.scatter.points() if pt.data() == lesion)
    w.on_points_hovered(w.scatter, [shown], None)
    np.testing.assert_allclose(viewer.layers[HIGHLIGHT_LAYER].data[0], [2, 12, 20])
    assert viewer.layers.selection.active is active and current_index(viewer, layer) == 2
    assert len(w.hover_ring.points()) == 1 and "slice 2, patch at (y 12, x 20)" in w.status.text()
    # a click on another slice's mean jumps there and rings its top patch
    w.set_per_slice(True)
    target = next(pt for pt in w.scatter.points() if w.slice_projection.slice_index[pt.data()] == 4)
    w.on_points_clicked(w.scatter, [target], None)
    assert current_index(viewer, layer) == 4
    np.testing.assert_allclose(viewer.layers[HIGHLIGHT_LAYER].data[0], [4, *w.slice_projection.centers[target.data()]])
    w.set_per_slice(False)

    # a lasso drawn on the scan (slice 2, around the bright square) selects that patch's point on the disk
    goto_index(viewer, layer, 2)
    shapes = w.start_canvas_lasso()
    assert shapes.name == LASSO_LAYER and str(shapes.mode) in ("add_polygon_lasso", "Mode.ADD_POLYGON_LASSO")
    np.testing.assert_allclose(shapes.scale, layer.scale)
    assert tuple(map(str, shapes.units)) == tuple(map(str, layer.units))  # no "inconsistent units" warning
    shapes.add_polygons([np.array([[2, 8, 16], [2, 8, 24], [2, 16, 24], [2, 16, 16]], dtype=float)])
    assert w.selection.tolist() == [lesion]
    assert w.status.text() == "1 point(s) selected from the lasso on the scan"  # it said "16 patches of slice 2"
    assert len(w.selected_rings.points()) == 1 and state.extras["disk_selection"] == [(2, 12.0, 20.0)]
    assert w.mark_button.isEnabled()
    # a second polygon on slice 3 adds that slice's lesion patch; in slice mode both slices are selected
    shapes.add_polygons([np.array([[3, 8, 16], [3, 8, 24], [3, 16, 24], [3, 16, 16]], dtype=float)])
    assert sorted(w.selection.tolist()) == sorted(_lesion_points(w).tolist())
    w.set_per_slice(True)
    w._on_canvas_shapes()
    assert sorted(w.slice_projection.slice_index[w.selection].tolist()) == [2, 3]
    w.clear_selection()
    assert "projecting" not in w.status.text() and "scored slice" in w.status.text()  # per slice: what is drawn


def test_a_real_click_on_a_hovered_point_reaches_it(make_napari_viewer: Any, qtbot: Any) -> None:
    """The hover ring, drawn exactly on the point under the mouse, took every click: clicking a point never
    jumped to its slice (the tests called the click handler directly)."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    from anomalens.app.widgets.poincare import PoincareWidget

    viewer = make_napari_viewer(show=True)
    w = PoincareWidget(viewer)
    w.resize(400, 500)
    w.show()
    hits: list[int] = []
    w.scatter.sigClicked.connect(lambda item, points, event: hits.append(len(points)))
    w.scatter.setData(x=[0.3], y=[0.2], data=[0])
    w.hover_ring.setData(x=[0.3], y=[0.2])  # what hovering the point draws
    qtbot.wait(200)
    at = QPointF(w.plot.mapFromScene(w.view.mapViewToScene(QPointF(0.3, 0.2))))
    where = QPointF(w.plot.viewport().mapToGlobal(at.toPoint()))
    for kind, button, buttons in ((QEvent.Type.MouseMove, Qt.MouseButton.NoButton, Qt.MouseButton.NoButton),
                                  (QEvent.Type.MouseButtonPress, Qt.MouseButton.LeftButton, Qt.MouseButton.LeftButton),
                                  (QEvent.Type.MouseButtonRelease, Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton)):
        QApplication.sendEvent(w.plot.viewport(), QMouseEvent(kind, at, where, button, buttons,
                                                              Qt.KeyboardModifier.NoModifier))
        qtbot.wait(60)
    assert hits == [1]
