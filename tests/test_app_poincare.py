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
