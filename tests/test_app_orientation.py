"""Radiological display: anterior up and the patient's left on the right whatever the file order, every slice
reachable, the linked three-plane view, and napari opening our formats with millimetres without being told.

What "up" is comes from each scan's own direction cosines (``orientation.physical_point``: SimpleITK's formula),
never from a hard-coded flip: a test puts a bright block at the voxels the cosines call anterior (or left) and
looks where it lands on the screen. GUI tests run under ``xvfb-run`` (never QT_QPA_PLATFORM=offscreen).
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.app.orientation import (
    LETTER_OVERLAYS,
    _steps,
    geometry,
    layer_geometry,
    orientation_letters,
    physical_point,
    plane_view,
    viewer_letters,
)
from anomalens.engine.volume import Volume
from tests.io_support import write_ct_series, write_sitk
from tests.phantoms import phantom_slices

#: Direction cosines (SimpleITK row-major, LPS) of files as scanners and converters write them.
DIRECTIONS = {
    "dicom-axial-lps": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "nifti-ras": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "las-like-brain1": (1, 0, 0, 0, -1, 0, 0, 0, 1),
    "feet-first": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "rows-along-x": (0, 1, 0, 1, 0, 0, 0, 0, 1),  # an in-plane transposed file
    "slightly-oblique": (0.996195, -0.087156, 0, 0.087156, 0.996195, 0, 0, 0, 1),
}


def _volume(direction: tuple[float, ...], shape: tuple[int, int, int] = (5, 24, 32)) -> Volume:
    rng = np.random.default_rng(0)
    return Volume(rng.random(shape, dtype=np.float32), spacing=(0.8, 0.9, 3.0), origin=(12.0, -40.0, 7.5),
                  direction=tuple(float(d) for d in direction), modality="MR")


def _screen_xy(volume: Volume, zyx: np.ndarray) -> np.ndarray:
    """Where voxels (z, y, x) land on napari's default 2-D canvas (x right, y down), axial plane shown."""
    g = geometry(volume)
    world = g.index_to_world(zyx)
    order, orient = plane_view(volume, "axial")
    down = 1.0 if str(orient[0]) == "down" else -1.0
    right = 1.0 if str(orient[1]) == "right" else -1.0
    return np.stack([right * world[..., order[2]], down * world[..., order[1]]], axis=-1)


@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_axial_slices_show_anterior_up_and_the_patients_left_on_the_right(name: str) -> None:
    vol = _volume(DIRECTIONS[name])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    lps = physical_point(vol, idx)
    screen = _screen_xy(vol, idx)
    # Up the screen is anterior (LPS y falls), right is the patient's left (LPS x grows): by rank correlation,
    # so the slightly oblique scan (drawn on its nearest axis-aligned frame) passes too.
    assert np.corrcoef(screen[:, 1], lps[:, 1])[0, 1] > 0.95  # screen down = posterior
    assert np.corrcoef(screen[:, 0], lps[:, 0])[0, 1] > 0.95  # screen right = patient left
    order, orient = plane_view(vol, "axial")
    letters = orientation_letters(vol, order[1:], orient)
    assert letters == {"top": "A", "bottom": "P", "left": "R", "right": "L"}


@pytest.mark.parametrize("name", ["dicom-axial-lps", "las-like-brain1", "feet-first"])
def test_the_data_is_placed_not_resampled_and_the_slice_axis_follows_the_slice_number(name: str) -> None:
    vol = _volume(DIRECTIONS[name])
    kw = layer_geometry(vol)
    assert np.abs(kw["scale"]) == pytest.approx(vol.spacing_zyx)  # millimetres, signs only
    assert kw["units"] == ("mm", "mm", "mm")
    assert kw["scale"][0] > 0  # the slider's step k is the file's slice k
    # The exact physical distance between two voxels is kept by the display transform.
    g = geometry(vol)
    a, b = np.array([0, 3, 4]), np.array([4, 20, 30])
    assert np.linalg.norm(g.index_to_world(a) - g.index_to_world(b)) == pytest.approx(
        np.linalg.norm(physical_point(vol, a) - physical_point(vol, b)))


@pytest.mark.parametrize(("spacing_z", "shape"), [(6.499999999999998, (25, 8, 8)), (0.7812499999999999, (4, 256, 256)),
                                                  (1.0, (7, 9, 11))])
def test_every_slice_is_reachable_on_the_slider(spacing_z: float, shape: tuple[int, int, int]) -> None:
    """brain1's spacing of 6.4999… mm made napari's slider stop at slice 23 of 0–24."""
    vol = Volume(np.zeros(shape, np.float32), spacing=(spacing_z, spacing_z, spacing_z),
                 direction=DIRECTIONS["las-like-brain1"])
    g = geometry(vol)
    assert _steps(g.scale, g.translate, shape) == list(shape)
    assert np.abs(g.scale) == pytest.approx(vol.spacing_zyx, rel=1e-12)


# -- on screen -------------------------------------------------------------------------------------------

def _canvas_rgb(viewer: Any) -> np.ndarray:
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)


def _bright_centre(img: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of the pure-white pixels, as fractions of the canvas."""
    ys, xs = np.nonzero(img.min(axis=-1) > 250)
    assert xs.size > 20, "the marker is not on the screenshot"
    return float(xs.mean() / img.shape[1]), float(ys.mean() / img.shape[0])


@pytest.mark.gui
def test_a_screenshot_of_brain1_shows_anterior_at_the_top(make_napari_viewer: Any, qtbot: Any) -> None:
    from anomalens.app.orientation import viewer_letters
    from anomalens.app.reader import image_layer_data
    from anomalens.engine.io.spec import load_spec

    brain = load_spec("sample:brain1")
    z = brain.shape[0] // 2
    idx = np.stack(np.meshgrid(np.arange(brain.shape[1]), np.arange(brain.shape[2]), indexing="ij"), axis=-1)
    lps = physical_point(brain, np.concatenate([np.full((*idx.shape[:2], 1), z), idx], axis=-1))
    tissue = brain.array[z] > np.percentile(brain.array[z], 60)
    ant = np.percentile(lps[..., 1][tissue], 8)   # the brain's anterior edge by the cosines (smallest LPS y)
    left = np.percentile(lps[..., 0][tissue], 92)  # and its left edge (largest LPS x)
    arr = brain.array.copy()
    hi = float(arr.max()) * 4
    arr[z][tissue & (lps[..., 1] <= ant)] = hi
    marked = brain.with_array(arr)
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = image_layer_data(marked, name="brain1")
    kwargs["contrast_limits"] = (0.0, hi)
    layer = viewer.add_image(data, **kwargs)
    from anomalens.app.orientation import install_orientation_overlay

    install_orientation_overlay(viewer)
    viewer.reset_view()
    viewer.dims.set_point(0, float(layer.data_to_world([z, 0, 0])[0]))
    qtbot.wait(200)
    x, y = _bright_centre(_canvas_rgb(viewer))
    assert y < 0.4  # anterior is at the top
    assert viewer_letters(viewer) == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert viewer.canvas.overlays["anomalens_orient_top"].text == "A"
    assert tuple(viewer.dims.axis_labels) == ("AX", "COR", "SAG")  # the slider says what it steps

    arr = brain.array.copy()
    arr[z][tissue & (lps[..., 0] >= left)] = hi
    layer.data = arr
    qtbot.wait(200)
    x, y = _bright_centre(_canvas_rgb(viewer))
    assert x > 0.6  # the patient's left on the screen's right
    assert int(viewer.dims.nsteps[0]) == brain.shape[0]  # the last slice is reachable
    viewer.dims.set_current_step(0, brain.shape[0] - 1)
    assert int(viewer.dims.current_step[0]) == brain.shape[0] - 1


@pytest.mark.gui
def test_the_three_plane_view_is_linked_by_its_crosshair(make_napari_viewer: Any, qtbot: Any) -> None:
    from anomalens.app.reader import image_layer_data
    from anomalens.app.threeplane import three_plane_view, toggle_three_plane

    slices, _ = phantom_slices(12, 48, seed=2)
    vol = Volume(slices, spacing=(0.9, 0.9, 3.0), origin=(0.0, 0.0, 0.0), direction=DIRECTIONS["nifti-ras"],
                 modality="MR")
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = image_layer_data(vol, name="scan")
    viewer.add_image(data, **kwargs)
    from napari.settings import get_settings

    settings = get_settings()
    saving_before, saves = settings._save_on_change, []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(settings), "save", lambda *a, **k: saves.append(a))
        assert toggle_three_plane(viewer)
    assert saves == [] and settings._save_on_change == saving_before  # the dock's side was not written to disk
    view = three_plane_view(viewer)
    assert view is not None and not view.ready  # the click returns at once; the canvases follow, a step a turn
    qtbot.waitUntil(lambda: view.ready, timeout=20000)
    assert gc.isenabled()  # the build held automatic collections off only while it ran
    assert set(view.planes) == {"coronal", "sagittal"}
    coronal, sagittal = view.planes["coronal"], view.planes["sagittal"]
    for name, model in view.planes.items():  # its slider and all four edge letters (the letters come last)
        assert view.qt_viewers[name].dims.isVisible(), name
        letters = viewer_letters(model)
        shown = {edge: model.canvas.overlays[key] for edge, (key, _pos) in LETTER_OVERLAYS.items()}
        assert letters is not None and {e: o.text for e, o in shown.items()} == letters, name
        assert all(o.visible for o in shown.values()), name
    assert [lyr.name for lyr in coronal.layers] == ["scan"]  # the scan mirrored, same data, same grid
    assert coronal.layers[0].data is viewer.layers[0].data
    g = geometry(vol)
    # Move the crosshair in the coronal plane: the axial slice (main viewer) and the sagittal slice follow.
    target = g.index_to_world(np.array([9, 30, 12]))
    before_axial, before_sag = viewer.dims.point[0], sagittal.dims.point[2]
    coronal.dims.set_point(1, float(target[1]))  # scrolling the coronal canvas moves its own slice (world y)
    view.set_crosshair(target, source=coronal)
    qtbot.wait(50)
    assert viewer.dims.point[0] == pytest.approx(target[0]) != pytest.approx(before_axial)
    assert sagittal.dims.point[2] == pytest.approx(target[2]) != pytest.approx(before_sag)
    assert coronal.dims.point[1] == pytest.approx(target[1])
    # Scrolling the main (axial) viewer moves the shared point, which the other planes draw.
    viewer.dims.set_current_step(0, 2)
    qtbot.wait(50)
    assert view.crosshair()[0] == pytest.approx(viewer.dims.point[0])
    assert coronal.dims.point[0] == pytest.approx(viewer.dims.point[0]) or 0 in coronal.dims.displayed
    assert not toggle_three_plane(viewer) and three_plane_view(viewer) is None
    qtbot.wait(100)  # the dock's canvases are deleted (deleteLater) before the viewer closes

    # napari's "hide this panel" button closes the view too (it left it open, hidden, crosshairs and all)
    from qtpy.QtWidgets import QPushButton

    assert toggle_three_plane(viewer)
    view = three_plane_view(viewer)
    [hide] = [b for b in view.dock.findChildren(QPushButton) if b.objectName() == "QTitleBarHideButton"]
    hide.click()
    qtbot.waitUntil(lambda: three_plane_view(viewer) is None, timeout=5000)
    assert toggle_three_plane(viewer)  # one press opens it again
    qtbot.waitUntil(lambda: three_plane_view(viewer) is not None and three_plane_view(viewer).ready, timeout=20000)
    assert not toggle_three_plane(viewer)
    qtbot.wait(100)


@pytest.mark.gui
def test_a_closed_or_failed_three_plane_build_turns_collection_back_on(make_napari_viewer: Any,
                                                                       qtbot: Any) -> None:
    from anomalens.app.reader import image_layer_data
    from anomalens.app.threeplane import three_plane_view, toggle_three_plane

    slices, _ = phantom_slices(6, 32, seed=1)
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = image_layer_data(Volume(slices, spacing=(1.0, 1.0, 3.0), modality="MR"), name="scan")
    viewer.add_image(data, **kwargs)
    assert toggle_three_plane(viewer)
    view = three_plane_view(viewer)
    qtbot.waitUntil(lambda: bool(view.planes), timeout=20000)  # a canvas is up: collections are held now
    assert not view.ready and not gc.isenabled()
    assert not toggle_three_plane(viewer)
    assert gc.isenabled()
    qtbot.wait(100)
    # A build step that fails stops the build and gives collection back too.
    from anomalens.app import threeplane

    def broken(*_a: Any) -> None:
        raise RuntimeError("a canvas could not be made")

    assert toggle_three_plane(viewer)
    view = three_plane_view(viewer)
    qtbot.waitUntil(lambda: bool(view.planes), timeout=20000)
    view._steps.appendleft(broken)
    with pytest.raises(RuntimeError, match="could not be made"):
        view.finish()
    assert gc.isenabled() and view.failed and not view.ready
    threeplane.close_three_plane(viewer)
    qtbot.wait(100)


@pytest.mark.gui
@pytest.mark.parametrize("kind", ["nii.gz", "nrrd", "dicom"])
def test_napari_opens_our_formats_with_millimetres_without_naming_the_plugin(make_napari_viewer: Any,
                                                                            tmp_path: Path, kind: str) -> None:
    from anomalens.app.desktop import ensure_plugin_registered
    from anomalens.app.reader import prefer_anomalens_reader

    ensure_plugin_registered()
    arr = (np.random.default_rng(0).random((4, 12, 10)) * 100).astype(np.float32)
    if kind == "dicom":
        write_ct_series(tmp_path / "series", arr, dz=2.5)
        path, spacing = tmp_path / "series", (2.5, 0.75, 0.5)
    else:
        path = write_sitk(tmp_path / f"scan.{kind}", arr, spacing=(0.5, 0.75, 2.5))
        spacing = (2.5, 0.75, 0.5)
    viewer = make_napari_viewer(show=False)  # (napari's fixture resets its settings here)
    prefer_anomalens_reader()  # what activating the plugin (napari.yaml on_activate) or the AnomaLens window does
    # napari's File → Open and drag-and-drop (no reader chosen: napari asks its preferences) ...
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    # ... and a script that lets napari choose (napari 0.9's ``viewer.open(path)`` alone means its builtins).
    viewer.open(str(path), plugin=None)
    assert len(viewer.layers) == 2
    for layer in viewer.layers:
        assert layer.metadata.get("anomalens_role") == "scan"
        assert np.abs(layer.scale) == pytest.approx(spacing, rel=1e-4)
        assert [str(u) for u in layer.units] in (["mm"] * 3, ["millimeter"] * 3)


@pytest.mark.gui
def test_in_the_desktop_window_three_planes_take_the_column_and_are_fitted(make_napari_viewer: Any, qtbot: Any,
                                                                          tmp_path: Path) -> None:
    from anomalens.app.desktop import docks_visible, fit_to_screen, setup_viewer
    from anomalens.app.reader import image_layer_data
    from anomalens.app.recent import RecentFiles
    from anomalens.app.threeplane import three_plane_view, toggle_three_plane

    viewer = make_napari_viewer(show=True)
    setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))
    fit_to_screen(viewer)
    slices, _ = phantom_slices(25, 64, seed=2)
    vol = Volume(slices, spacing=(0.8, 0.8, 6.5), direction=DIRECTIONS["las-like-brain1"], modality="MR")
    data, kwargs, _ = image_layer_data(vol, name="scan")
    viewer.add_image(data, **kwargs)
    assert docks_visible(viewer)
    assert toggle_three_plane(viewer)
    view = three_plane_view(viewer)
    assert not docks_visible(viewer)  # the AnomaLens docks make room for the planes
    qtbot.waitUntil(lambda: view.ready, timeout=20000)
    qtbot.wait(400)
    for name, model in view.planes.items():
        canvas = view.qt_viewers[name].canvas.native
        assert canvas.height() > 150, name  # each plane gets a readable share of the column
        # fitted: the whole scan's extent in the displayed axes is on the canvas (napari's reset_view margin)
        extent = np.abs(np.diff(np.asarray(model.layers[0].extent.world)[:, list(model.dims.displayed)], axis=0))[0]
        zoom = float(model.scene.camera.zoom)
        assert extent[0] * zoom <= canvas.height() * 1.01 and extent[1] * zoom <= canvas.width() * 1.01, name
    assert not toggle_three_plane(viewer)
    assert docks_visible(viewer)  # and come back
    qtbot.wait(100)


def test_a_picture_gets_no_patient_letters(make_napari_viewer: Any, qtbot: Any, tmp_path: Path) -> None:
    """A PNG has rows and columns, not patient directions: a photo scored in the viewer had A/P/R/L on it."""
    from PIL import Image

    from anomalens.app.orientation import install_orientation_overlay, viewer_letters
    from anomalens.app.reader import image_layer_data
    from anomalens.engine.io import read_scan

    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((32, 40)) * 255).astype(np.uint8)).save(path)
    picture = read_scan(path)
    assert picture.metadata["patient_geometry"] is False
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = image_layer_data(picture, name="photo")
    viewer.add_image(data, **kwargs)
    install_orientation_overlay(viewer)
    qtbot.wait(50)
    assert viewer_letters(viewer) is None
    assert not viewer.canvas.overlays["anomalens_orient_top"].visible
    scan = write_sitk(tmp_path / "scan.nii.gz", phantom_slices(3, 32, seed=1)[0].astype(np.float32))
    assert "patient_geometry" not in read_scan(scan).metadata  # a scan file keeps its letters
