"""The viewer with real Qt and OpenGL (run under ``xvfb-run -a``; never with QT_QPA_PLATFORM=offscreen).

A PatchCore bundle is trained once per session on phantom slices (tiny test config) and calibrated on
other phantom normals, so scoring in the docks is real engine work that takes well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume
from tests.fakes import calibrated_patchcore
from tests.io_support import phantom, write_ct_series, write_sitk
from tests.phantoms import phantom_slices

pytestmark = pytest.mark.gui


@pytest.fixture(scope="session")
def calibrated_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    return calibrated_patchcore(6, modality="MR").save(root / "models" / "phantom-patchcore")


@pytest.fixture
def app_env(calibrated_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(calibrated_bundle.parent.parent))
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    return calibrated_bundle


def _lesion_layer(viewer: Any, n: int = 4) -> Any:
    from anomalens.app.reader import image_layer_data

    slices, masks = phantom_slices(n, 64, seed=5, lesion=True)
    vol = Volume(slices, spacing=(0.9, 0.9, 3.0), modality="MR")
    data, kwargs, _ = image_layer_data(vol, name="phantom")
    return viewer.add_image(data, **kwargs), masks


def _detector_dock(viewer: Any) -> Any:
    """A Detector dock in ``viewer``, as the desktop window adds it."""
    from anomalens.app.widgets.detector import DetectorWidget

    det_w = DetectorWidget(viewer)
    viewer.window.add_dock_widget(det_w, name="Detector")
    return det_w


def _wait(qtbot: Any, widget: Any, timeout: float = 30.0) -> None:
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=int(timeout * 1000))


def _labels_history(layer: Any) -> int:
    return len(layer._undo_history)


def test_reader_plugin_opens_a_scan_with_its_spacing(make_napari_viewer: Any, tmp_path: Path) -> None:
    from anomalens.app.desktop import ensure_plugin_registered

    ensure_plugin_registered()
    path = write_sitk(tmp_path / "scan.nrrd", phantom((5, 16, 20)), spacing=(0.8, 0.9, 2.5))
    viewer = make_napari_viewer(show=True)
    [layer] = viewer.open(str(path), plugin="anomalens")
    assert np.abs(layer.scale) == pytest.approx((2.5, 0.9, 0.8))  # mm; signs: radiological (test_app_orientation)
    assert layer.metadata["anomalens_role"] == "scan"
    from anomalens.app.state import get_state
    from anomalens.app.widgets.scr import ScrWidget

    _dock, widget = viewer.window.add_plugin_dock_widget("anomalens", "SCR")
    assert isinstance(widget, ScrWidget)
    assert widget.state is get_state(viewer)  # napari passed a proxy of the viewer: still one shared state
    [sample] = viewer.open_sample("anomalens", "mr_small")  # ships inside pydicom: no network
    assert sample.name == "mr_small" and min(sample.scale) > 0


def test_scoring_a_slice_adds_heatmap_mask_and_curve_and_sliders_recut(make_napari_viewer: Any, qtbot: Any,
                                                                         app_env: Path) -> None:
    from napari.layers import Image, Labels

    from anomalens.app.state import get_state
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.app.widgets.scr import ScrWidget

    viewer = make_napari_viewer(show=True)
    image, _ = _lesion_layer(viewer)
    det_w, scr_w = DetectorWidget(viewer), ScrWidget(viewer)
    viewer.window.add_dock_widget(det_w, name="Detector")
    viewer.window.add_dock_widget(scr_w, name="SCR")
    state = get_state(viewer)
    assert det_w.bundle_combo.findData(str(app_env)) > 0  # listed from the model folder
    assert not det_w.train_button.isHidden()  # no model yet: offer training, not an error
    assert det_w.set_bundle(app_env)
    _wait(qtbot, det_w)
    assert state.detector is not None and det_w.train_button.isHidden()
    det_w.bundle_combo.setCurrentIndex(0)  # the placeholder (arrow keys run onto it) …
    det_w.bundle_combo.activated.emit(0)
    # … the box goes back to the loaded model (it showed "choose a model" while one stayed loaded)
    assert det_w.bundle_combo.currentData() == str(app_env) and state.model_path == app_env

    det_w.goto_slice(2)
    assert det_w.score_slice()
    _wait(qtbot, det_w)
    heat, mask = viewer.layers["phantom · patchcore v1 anomaly"], viewer.layers["phantom · patchcore v1 mask"]
    assert isinstance(heat, Image) and isinstance(mask, Labels)
    assert heat.metadata["anomalens_unit"] == "normal-quantile"
    assert tuple(heat.scale) == tuple(image.scale) == tuple(mask.scale)
    assert heat.data[2].max() > 0 and heat.data[[0, 1, 3]].max() == 0  # only the scored slice
    assert state.results is not None and list(np.flatnonzero(state.results.scored)) == [2]
    assert set(state.results.slice_scores) == {2}
    assert det_w.plot.unit_label == "normal quantile" and det_w.plot.threshold.isVisible()
    assert det_w.plot.threshold.value() == pytest.approx(state.detector.calibration.threshold)

    # hand edit on slice 0, then slider moves on slice 2: the edit stays undoable
    mask.paint((0, 5, 5), 3, refresh=True)
    history = _labels_history(mask)
    assert mask.data[0, 5, 5] == 3
    scr_w.threshold_slider.setValue(scr_w.threshold_slider.minimum())  # the lowest it offers: speckle for λ
    scr_w.lam_slider.setValue(0.0)
    plain = mask.data[2].copy()
    assert plain.any()
    scr_w.lam_slider.setValue(scr_w.lam_slider.maximum())
    smooth = mask.data[2].copy()
    assert not np.array_equal(plain, smooth)
    assert state.scr.lam == pytest.approx(scr_w.lam_slider.maximum())
    assert scr_w.last_solve_ms is not None and scr_w.last_solve_ms < 500
    assert _labels_history(mask) == history
    mask.undo()
    assert mask.data[0, 5, 5] == 0
    np.testing.assert_array_equal(mask.data[2], smooth)

    scr_w.mode_3d.setChecked(True)  # the 2D/3D switch goes to the state and re-cuts
    assert state.scr.mode == "3d" and state.results.cut_params[2][3] == "3d"
    # the model's state drives the sliders back (reset to calibrated)
    scr_w.reset_button.click()
    assert state.scr is None  # back to the model's calibrated point
    assert scr_w.lam_slider.value() == pytest.approx(state.detector.calibration.scr.lam, abs=1e-3)
    assert scr_w.threshold_slider.value() == pytest.approx(state.detector.calibration.scr.threshold, abs=1e-3)

    # score the volume, then a click on the curve moves the viewer
    assert det_w.score_volume()
    _wait(qtbot, det_w)
    assert state.results.scored.all()
    det_w.plot.click_at(0.2)
    from anomalens.app.results import current_index

    assert current_index(viewer, image) == 0
    state.slice_requested.emit(3)
    assert current_index(viewer, image) == 3

    # apply SCR to every scored slice in the background
    assert scr_w.apply_to_volume()
    _wait(qtbot, scr_w)
    assert all(state.results.cut_params[z] == state.scr_point().key() for z in range(4))


def test_cancel_stops_a_running_job_within_a_second(make_napari_viewer: Any, qtbot: Any, app_env: Path) -> None:
    from anomalens.app.state import get_state
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.engine.detectors import AnomalyResult, Detector
    from anomalens.engine.progress import check

    class SlowDetector(Detector):
        name = "slow"

        def _fit(self, normals, progress, cancel):
            return None

        def _score(self, slices, progress, cancel):
            for _ in range(200):  # 2 s per batch unless cancelled
                check(cancel)
                time.sleep(0.01)
            return AnomalyResult(heatmaps=np.zeros_like(slices), scores=np.zeros(len(slices)))

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            return None

    viewer = make_napari_viewer(show=True)
    _lesion_layer(viewer, n=12)
    widget = DetectorWidget(viewer)
    viewer.window.add_dock_widget(widget)
    slow = SlowDetector()
    slow.fitted = True
    get_state(viewer).set_model(slow)
    assert widget.score_volume()
    qtbot.wait(300)
    assert widget.jobs.running and not widget.cancel_button.isHidden()
    t0 = time.perf_counter()
    widget.cancel_button.click()
    _wait(qtbot, widget, timeout=5)
    assert time.perf_counter() - t0 < 1.0
    assert "cancelled" in widget.status.text()
    assert not [lyr for lyr in viewer.layers if lyr.metadata.get("anomalens_role") == "heatmap"]


def test_train_from_marked_normals_when_there_is_no_model(make_napari_viewer: Any, qtbot: Any, app_env: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalens.app.state import get_state
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.engine.modelstore import ModelStore
    from anomalens.plugins.patchcore import PatchCoreDetector

    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(tmp_path / "empty"))
    viewer = make_napari_viewer(show=True)
    _lesion_layer(viewer, n=3)
    widget = DetectorWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.train_config = PatchCoreDetector.test_config()
    widget.detector_combo.setCurrentText("patchcore")
    state = get_state(viewer)
    assert widget.bundle_combo.count() == 1  # only the placeholder: the model folder is empty
    assert widget.score_slice_button.isHidden() and not widget.train_button.isHidden()
    assert not widget.train_button.isEnabled()  # nothing marked yet
    state.set_marked_slices([0, 2])
    assert widget.train_button.isEnabled() and "2 marked" in widget.train_button.text()
    widget.train_button.click()
    _wait(qtbot, widget, timeout=60)
    assert state.detector is not None and state.detector.calibration is not None
    assert state.detector.training["modality"] == "MR"
    [saved] = ModelStore().bundles()
    assert state.model_path == saved.path and widget.bundle_combo.currentData() == str(saved.path)
    assert not widget.score_slice_button.isHidden() and widget.train_button.isHidden()


def test_desktop_window_opens_files_and_survives_bad_ones(make_napari_viewer: Any, qtbot: Any, app_env: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari.utils.notifications import notification_manager

    from anomalens.app.desktop import TITLE, setup_viewer
    from anomalens.app.recent import RecentFiles

    viewer = make_napari_viewer(show=True)
    recent = RecentFiles(tmp_path / "recent.json")
    files = setup_viewer(viewer, recent)
    assert viewer.title == TITLE and not viewer.window._qt_window.windowIcon().isNull()
    assert {"Detector", "SCR"} <= set(viewer.window.anomalens_docks)
    texts = [a.text() for a in viewer.window.file_menu.actions()]
    assert texts[:2] == ["Open scan…", "Open DICOM folder…"]

    good = write_sitk(tmp_path / "ct.nii.gz", phantom((5, 16, 20)), spacing=(0.8, 0.9, 2.5))
    assert files.open_path(good)
    qtbot.waitUntil(lambda: not files.jobs.running, timeout=20000)
    assert [lyr.name for lyr in viewer.layers] == ["ct"]
    assert recent.load() == [good.resolve()]

    bad = tmp_path / "notes.nii.gz"
    bad.write_bytes(b"this is not a scan at all" * 10)
    before = len(notification_manager.records)
    assert files.open_path(bad)
    qtbot.waitUntil(lambda: not files.jobs.running, timeout=20000)
    assert [lyr.name for lyr in viewer.layers] == ["ct"]  # nothing already loaded is lost
    new = [str(n.message) for n in notification_manager.records[before:]]
    assert any("notes.nii.gz" in m for m in new), new
    assert recent.load() == [good.resolve()]

    # a long failure message does not widen the window (it did: 1,467 px on a 1,366 px screen, for good)
    qt = viewer.window._qt_window
    width = qt.width()
    folder = tmp_path / ("a folder of reports with a long name " * 4).strip()
    folder.mkdir()
    for name in ("a.txt", "b.dcm", "c.pdf"):
        (folder / name).write_text("not an image")
    assert files.open_path(folder)
    qtbot.waitUntil(lambda: not files.jobs.running, timeout=20000)
    qtbot.wait(100)
    message = files.status.text()
    assert "no DICOM" in message and len(message) > 150, message  # the label keeps the whole text …
    assert qt.width() == width  # … and asks for no more room than it had
    assert files.status.width() < files.status.fontMetrics().horizontalAdvance(message)

    two = tmp_path / "two-series"
    write_ct_series(two, phantom((3, 12, 10)), series_uid="1.2.3.4.1", description="first")
    write_ct_series(two, phantom((4, 12, 10)), series_uid="1.2.3.4.2", description="second", name="B")
    asked: list[list[dict]] = []
    monkeypatch.setattr(files, "choose_series", lambda series: asked.append(series) or "1.2.3.4.2")
    assert files.open_path(two)
    qtbot.waitUntil(lambda: "ct" not in viewer.layers and len(viewer.layers) == 1, timeout=20000)
    assert {r["uid"] for r in asked[0]} == {"1.2.3.4.1", "1.2.3.4.2"}
    assert viewer.layers[-1].data.shape == (4, 12, 10)  # the new study replaced the shown one (no results)
    qtbot.waitUntil(lambda: not files.jobs.running, timeout=20000)

    # a shown study with results: the user is asked; cancel opens nothing, "both" keeps both, else it closes
    series = viewer.layers[0]
    viewer.add_image(np.zeros(series.data.shape, np.float32), name="heat", metadata={"anomalens_role": "heatmap"})
    answers: list[tuple[str, str]] = []
    for choice, names in (("cancel", [series.name, "heat"]), ("both", [series.name, "heat", "ct"]),
                          ("replace", ["ct"])):
        if choice == "replace":
            viewer.layers.remove("ct")
        monkeypatch.setattr(files, "ask_replace", lambda shown, new, choice=choice: answers.append((shown, new))
                            or choice)
        assert files.open_path(good)
        qtbot.waitUntil(lambda: not files.jobs.running, timeout=20000)
        assert [lyr.name for lyr in viewer.layers] == names, choice
        assert ("not opened" in files.status.text()) is (choice == "cancel"), files.status.text()
    assert answers == [(series.name, "ct")] * 3

    newer = tmp_path / "newer-model"
    newer.mkdir()
    (newer / "bundle.json").write_text('{"schema_version": 99, "detector": "patchcore", "config": {}}')
    before = len(notification_manager.records)
    assert not viewer.window.anomalens_docks["Detector"].set_bundle(newer)
    assert any("schema version 99" in str(n.message) for n in notification_manager.records[before:])

    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # the window drew something, not a blank frame
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    assert canvas[..., :3].std() > 1  # the scan is visible on the OpenGL canvas


def test_desktop_app_starts_and_closes(tmp_path: Path) -> None:
    env = {**os.environ, "ANOMALENS_DATA_DIR": str(tmp_path / "data"), "ANOMALENS_CONFIG_DIR": str(tmp_path / "cfg"),
           "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    scan = write_sitk(tmp_path / "scan.mha", phantom((3, 16, 20)))
    code = "import sys; from anomalens.app.desktop import main; sys.exit(main(sys.argv[1:]))"
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(scan), "--quit-after", "0.5"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert time.perf_counter() - t0 < 60
    log = (tmp_path / "state" / "anomalens" / "log" / "viewer.log")
    assert not log.exists() or "Traceback" not in log.read_text()


def test_closing_the_desktop_app_after_a_scoring_session_exits_0(calibrated_bundle: Path, tmp_path: Path) -> None:
    """The installed launcher opens a scan, scores it with a model through the Detector dock and is closed.

    ``--score-and-quit`` (hidden, for tests) drives the dock's buttons, then closes the main window as a user
    would: the teardown of workers, layers, the score curve and the Poincaré disk must end in exit status 0.
    """
    env = {**os.environ, "ANOMALENS_DATA_DIR": str(calibrated_bundle.parent.parent), "ANOMALENS_THREADS": "1",
           "ANOMALENS_CONFIG_DIR": str(tmp_path / "cfg"), "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "PYTHONFAULTHANDLER": "1"}
    slices, _ = phantom_slices(3, 64, seed=5, lesion=True)
    scan = write_sitk(tmp_path / "scan.nii.gz", (slices * 1000.0).astype(np.float32))
    launcher = Path(sys.executable).with_name("anomalens-viewer")
    command = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "anomalens.app.desktop"]
    out = subprocess.run([*command, str(scan), "--score-and-quit", str(calibrated_bundle)], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "scripted session: scored 3 slices with patchcore v1; closing" in out.stdout, out.stdout[-2000:]
    assert "Fatal Python error" not in out.stderr and "Traceback" not in out.stderr, out.stderr[-3000:]
    log = tmp_path / "state" / "anomalens" / "log" / "viewer.log"
    assert not log.exists() or "Traceback" not in log.read_text()


def test_detector_dock_lists_detector_variants(make_napari_viewer: Any, app_env: Path) -> None:
    from anomalens.app.widgets.detector import DetectorWidget

    viewer = make_napari_viewer(show=True)
    widget = DetectorWidget(viewer)
    labels = [widget.detector_combo.itemText(i) for i in range(widget.detector_combo.count())]
    assert "curved (MiT)" in labels and "lorentz" in labels and "patchcore" in labels
    widget.detector_combo.setCurrentText("curved (MiT)")
    assert widget.detector_choice() == ("curved", {"variant": "MiT"})
    widget.detector_combo.setCurrentText("patchcore")
    assert widget.detector_choice() == ("patchcore", {})


def test_reset_restores_every_recut_slice_and_hand_edits_survive_every_cut(make_napari_viewer: Any, qtbot: Any,
                                                                          app_env: Path, tmp_path: Path) -> None:
    """A radiologist's drawing is never overwritten by SCR; "Reset" puts back every slice the sliders re-cut."""
    from anomalens.app.state import get_state
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.app.widgets.export import ExportWidget
    from anomalens.app.widgets.scr import SETTLE_MS, ScrWidget

    viewer = make_napari_viewer(show=True)
    _lesion_layer(viewer)
    det_w, scr_w, exp_w = DetectorWidget(viewer), ScrWidget(viewer), ExportWidget(viewer)
    for name, w in (("Detector", det_w), ("SCR", scr_w), ("Export", exp_w)):
        viewer.window.add_dock_widget(w, name=name)
    state = get_state(viewer)
    assert det_w.set_bundle(app_env)
    _wait(qtbot, det_w)
    assert det_w.score_volume()
    _wait(qtbot, det_w)
    res = state.results
    calibrated = res.mask.copy()
    mask = viewer.layers["phantom · patchcore v1 mask"]

    det_w.goto_slice(1)
    mask.paint((1, 6, 6), 1, refresh=True)  # a hand edit on slice 1
    drawn = mask.data[1].copy()
    assert res.hand_edited(1) and not res.hand_edited(2)
    scr_w.threshold_slider.setValue(scr_w.threshold_slider.minimum())  # on slice 1: left as drawn
    np.testing.assert_array_equal(mask.data[1], drawn)
    assert "edited by hand" in scr_w.status.text()
    det_w.goto_slice(2)  # shown at the slider's point now …
    det_w.goto_slice(3)  # … and this one too
    assert not np.array_equal(mask.data[2:4], calibrated[2:4])
    assert res.cut_params[2] != state.calibrated_scr().key()

    assert scr_w.reset()  # the shown slice at once, the others the sliders re-cut in a worker
    _wait(qtbot, scr_w)
    np.testing.assert_array_equal(mask.data[[0, 2, 3]], calibrated[[0, 2, 3]])
    np.testing.assert_array_equal(mask.data[1], drawn)  # the drawing stays
    assert all(res.cut_params[z] == state.calibrated_scr().key() for z in (0, 2, 3))

    scr_w.threshold_slider.setValue(scr_w.threshold_slider.minimum())
    qtbot.wait(2 * SETTLE_MS)  # the drag settles (its status line) before the user reaches the button
    assert scr_w.apply_to_volume()
    _wait(qtbot, scr_w)
    np.testing.assert_array_equal(mask.data[1], drawn)
    assert "slice 1 kept as edited by hand" in scr_w.status.text()

    assert exp_w.export_scores(tmp_path / "scores.csv")
    qtbot.waitUntil(lambda: (tmp_path / "scores.csv").exists(), timeout=10_000)
    head = (tmp_path / "scores.csv").read_text()
    assert "set with the SCR sliders on slices 0,2-3" in head and "edited by hand on slice 1" in head, head


def test_a_scan_napari_opened_itself_is_scored_in_millimetres(make_napari_viewer: Any, tmp_path: Path) -> None:
    """napari's own reader keeps no spacing; the docks take the geometry from the file rather than 1-mm pixels."""
    from anomalens.app.reader import volume_for_layer

    array = phantom((5, 16, 20))
    path = write_sitk(tmp_path / "scan.nrrd", array, spacing=(0.8, 0.9, 2.5))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari")  # the builtin reader: scale 1
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)
    vol = volume_for_layer(layer)
    assert vol.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert any("took the scan's geometry (0.8 × 0.9 × 2.5 mm) from its file" in w for w in vol.warnings)
    assert volume_for_layer(layer) is vol  # read once per layer

    plain = viewer.add_image(np.asarray(layer.data), name="from numpy")  # no file behind it: said plainly
    vol = volume_for_layer(plain)
    assert vol.spacing == (1.0, 1.0, 1.0) and any("carries no spacing" in w for w in vol.warnings)


def test_the_detector_dock_follows_a_renamed_scan_and_never_scores_one_off_screen(make_napari_viewer: Any,
                                                                                     qtbot: Any, app_env: Path) -> None:
    """Renaming the scan left the dock naming a layer that no longer existed ("open a scan first"); with two
    scans, Score slice scored a slice of the one not on screen (its index clamped to its last slice)."""
    from anomalens.app.reader import image_layer_data
    from anomalens.app.state import get_state

    viewer = make_napari_viewer(show=True)
    image, _ = _lesion_layer(viewer)
    det_w = _detector_dock(viewer)
    state = get_state(viewer)
    assert det_w.set_bundle(app_env)
    _wait(qtbot, det_w)
    image.name = "case 42"
    assert det_w.layer_combo.currentText() == "case 42" and det_w.image_layer() is image
    det_w.goto_slice(2)
    assert det_w.score_slice()
    _wait(qtbot, det_w)
    assert list(np.flatnonzero(state.results.scored)) == [2]

    slices, _ = phantom_slices(3, 64, seed=9)
    data, kwargs, _ = image_layer_data(Volume(slices, spacing=(0.9, 0.9, 3.0), modality="MR"), name="elsewhere")
    kwargs["translate"] = (500.0, *kwargs["translate"][1:])  # its slices lie far from the shown position
    other = viewer.add_image(data, **kwargs)
    assert det_w.image_layer() is other  # the new scan is napari's active layer: the dock follows it
    viewer.layers.selection.active = image  # the user picks case 42 again in the layer list
    assert det_w.image_layer() is image
    det_w.goto_slice(1)  # back on case 42's slice 1 (adding a layer may move the view)
    det_w.layer_combo.setCurrentText("elsewhere")  # then the other scan in the dock, while case 42 is shown
    assert det_w.image_layer() is other
    assert not det_w.score_slice()  # refused: the canvas shows none of its slices
    assert "not on screen here" in det_w.status.text()
    from anomalens.app.results import shown_index

    assert shown_index(viewer, other) is not None  # the view moved to it: the next press scores what is shown
    assert det_w.score_slice()
    _wait(qtbot, det_w)
    assert state.results.volume.n_slices == 3


def test_every_plugin_dock_scrolls_so_napari_never_grows_the_window_past_the_screen(make_napari_viewer: Any,
                                                                                      qtbot: Any,
                                                                                      app_env: Path) -> None:
    """napari stacks plugin docks in one column: their natural heights asked for a 1,938-px window at 768 px."""
    from qtpy.QtWidgets import QApplication

    from anomalens.app.desktop import ensure_plugin_registered
    from anomalens.app.widgets.docking import scrolls

    ensure_plugin_registered()
    viewer = make_napari_viewer(show=True)
    names = ("Detector", "SCR", "Calibration", "Poincaré disk", "Export")
    widgets = [viewer.window.add_plugin_dock_widget("anomalens", name)[1] for name in names]
    for _ in range(5):
        QApplication.processEvents()
    assert all(scrolls(w) for w in widgets), [type(w).__name__ for w in widgets if not scrolls(w)]
    window = viewer.window._qt_window
    screen = window.screen().availableGeometry()
    assert window.minimumSizeHint().height() <= screen.height(), window.minimumSizeHint()
    assert window.frameGeometry().height() <= screen.height() + 1


def test_a_napari_user_gets_the_reading_room_keys_with_the_first_anomalens_dock(make_napari_viewer: Any,
                                                                                  qtbot: Any, app_env: Path) -> None:
    """The docks' tooltips and the canvas name N, H, PageDown…: in a plain napari viewer they now do something."""
    from qtpy.QtWidgets import QApplication

    from anomalens.app.desktop import ensure_plugin_registered
    from anomalens.app.plugin_room import PLUGIN_MARK
    from anomalens.app.shortcuts import SHORTCUTS
    from anomalens.app.windowlevel import window_level_drag

    ensure_plugin_registered()
    viewer = make_napari_viewer(show=True)
    assert not viewer.keymap
    viewer.window.add_plugin_dock_widget("anomalens", "Calibration")
    for _ in range(3):
        QApplication.processEvents()
    assert getattr(viewer.window, PLUGIN_MARK, False)
    bound = {str(k) for k in viewer.keymap}
    assert len(bound) >= len(SHORTCUTS) - 1, bound
    assert window_level_drag in viewer.mouse_drag_callbacks
    viewer.window.help_menu.aboutToShow.emit()
    assert any("AnomaLens keyboard shortcuts" in a.text() for a in viewer.window.help_menu.actions())
    assert not any("AnomaLens docks" in a.text() for a in viewer.window.window_menu.actions())

    # N, Shift+N and Ctrl+Shift+N reach the plugin's Calibration dock (they found none outside the desktop window)
    from qtpy.QtCore import Qt

    from anomalens.app.widgets.calibration import CalibrationWidget

    [calibration] = viewer.window._qt_window.findChildren(CalibrationWidget)
    _lesion_layer(viewer)
    viewer.dims.set_current_step(0, 2)
    qtbot.wait(50)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_N)
    assert calibration.marked_slices() == [2]
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert calibration.marked_slices() == []
    qtbot.keyClick(canvas, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier | Qt.KeyboardModifier.ControlModifier)
    assert calibration.marked_slices() == [2]


def test_in_a_plain_napari_the_three_planes_get_the_column_and_its_docks_come_back(make_napari_viewer: Any,
                                                                                   qtbot: Any, app_env: Path) -> None:
    """napari stacks plugin docks in one column: the three-plane dock added below five of them got 15–40 px."""
    from anomalens.app.desktop import ensure_plugin_registered
    from anomalens.app.threeplane import three_plane_view, toggle_three_plane

    ensure_plugin_registered()
    viewer = make_napari_viewer(show=True)
    docks = [viewer.window.add_plugin_dock_widget("anomalens", name)[0] for name in ("Detector", "SCR", "Calibration")]
    _lesion_layer(viewer)
    qtbot.waitUntil(lambda: all(d.isVisible() for d in docks), timeout=5000)
    assert toggle_three_plane(viewer)
    view = three_plane_view(viewer)
    qtbot.waitUntil(lambda: view.ready, timeout=20000)
    assert not any(d.isVisible() for d in docks)
    column = viewer.window._qt_window.height()
    for name, qtv in view.qt_viewers.items():  # each plane a readable share of the window's height
        assert qtv.canvas.native.height() > column // 4, (name, qtv.canvas.native.height(), column)
    assert not toggle_three_plane(viewer)
    qtbot.waitUntil(lambda: all(d.isVisible() for d in docks), timeout=5000)
    qtbot.wait(100)


def test_the_detector_dock_follows_the_scan_picked_in_the_layer_list(make_napari_viewer: Any, qtbot: Any,
                                                                       app_env: Path) -> None:
    from anomalens.app.state import get_state

    viewer = make_napari_viewer(show=True)
    first, _ = _lesion_layer(viewer)
    det_w = _detector_dock(viewer)
    second, _ = _lesion_layer(viewer, n=6)
    state = get_state(viewer)
    viewer.layers.selection.active = first
    assert det_w.image_layer() is first and state.volume.n_slices == 4
    viewer.layers.selection.active = second
    assert det_w.image_layer() is second and state.volume.n_slices == 6
    viewer.layers.selection.active = None  # nothing picked: the dock keeps its scan
    assert det_w.image_layer() is second


def test_the_desktop_window_sets_its_reading_room_up_once(make_napari_viewer: Any, qtbot: Any, app_env: Path) -> None:
    from qtpy.QtWidgets import QApplication

    from anomalens.app.desktop import setup_viewer
    from anomalens.app.plugin_room import PLUGIN_MARK

    viewer = make_napari_viewer(show=True)
    setup_viewer(viewer)
    for _ in range(3):
        QApplication.processEvents()
    assert not getattr(viewer.window, PLUGIN_MARK, False)
    helps = [a for a in viewer.window.help_menu.actions() if "AnomaLens keyboard shortcuts" in a.text()]
    assert len(helps) == 1


def test_a_scan_closed_while_it_is_scored_gets_no_result_layers(make_napari_viewer: Any, qtbot: Any,
                                                                app_env: Path) -> None:
    """Its heatmap and mask appeared after it was gone, with the curve and status describing it."""
    from anomalens.app.state import get_state

    viewer = make_napari_viewer(show=True)
    image, _ = _lesion_layer(viewer)
    det_w = _detector_dock(viewer)
    assert det_w.set_bundle(app_env)
    _wait(qtbot, det_w)
    assert det_w.score_volume()
    viewer.layers.remove(image)  # before the worker is done
    _wait(qtbot, det_w)
    assert [lyr.name for lyr in viewer.layers] == [] and get_state(viewer).results is None
    assert "was closed while it was scored" in det_w.status.text()


def test_no_worker_outlives_the_app(qtbot: Any) -> None:
    """A worker still running when the window closed (the demo's Poincaré projection after --screenshot) ended
    after the interpreter's teardown had begun: superqt printed "Signal source has been deleted" (3 of 3 runs)."""
    import time

    from napari.qt.threading import create_worker
    from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

    from anomalens.app.jobs import JobRunner, stop_all_work
    from anomalens.engine.progress import check

    worker = create_worker(time.sleep, 0.8, _ignore_errors=True)
    worker.start()
    runner = JobRunner(QProgressBar(), QPushButton(), QLabel())

    def long_job(progress: Any, cancel: Any) -> None:
        for _ in range(600):  # a minute unless cancelled
            check(cancel)
            time.sleep(0.1)

    assert runner.start("long", long_job)
    t0 = time.perf_counter()
    assert stop_all_work(timeout_s=10.0)  # the job is cancelled, the plain worker waited for
    assert time.perf_counter() - t0 < 5.0 and not worker.is_running


def test_a_keys_answer_in_the_status_bar_expires(qtbot: Any) -> None:
    """"marked 1 new slice normal" still stood in the status bar after a fine-tune and a rollback."""
    from types import SimpleNamespace

    from qtpy.QtWidgets import QLabel

    from anomalens.app.messages import say

    label = QLabel()
    qtbot.addWidget(label)
    viewer = SimpleNamespace(status="", window=SimpleNamespace(anomalens_files=SimpleNamespace(status=label)))
    say(viewer, "marked 1 new slice normal", keep_s=0.2)
    assert label.text() == "marked 1 new slice normal" and viewer.status == ""  # once, in the window's label
    plain = SimpleNamespace(status="", window=SimpleNamespace())  # napari without the desktop window
    say(plain, "marked 1 new slice normal")
    assert plain.status == "marked 1 new slice normal"
    qtbot.waitUntil(lambda: label.text() == "", timeout=2000)
    say(viewer, "flagged slice 12 (1 of 5)", keep_s=0.2)
    label.setText("Opening brain1…")  # replaced by something else meanwhile: that stays
    qtbot.wait(400)
    assert label.text() == "Opening brain1…"


def test_a_cancel_that_comes_too_late_says_why_there_is_a_result(qtbot: Any) -> None:
    """Cancel pressed at 24/25 slices: the full result appeared with no word on the cancel."""
    import threading

    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton

    from anomalens.app.jobs import JobRunner

    runner = JobRunner(QProgressBar(), QPushButton(), QLabel())
    release, shown = threading.Event(), []

    def last_slice(progress: Any, cancel: Any) -> str:
        release.wait(5)  # past its last cancel check: nothing looks at the token any more
        return "result"

    assert runner.start("Scoring 25 slices", last_slice, shown.append)
    start = len(notification_manager.records)
    runner.cancel()
    release.set()
    assert runner.wait(5)
    told = [str(n.message) for n in notification_manager.records[start:]]
    assert shown == ["result"] and any("had finished before Cancel took effect" in m for m in told), told


def test_a_scan_with_nan_voxels_asks_whether_to_clean(make_napari_viewer: Any, qtbot: Any, app_env: Path,
                                                      tmp_path: Path, monkeypatch: Any) -> None:
    """The viewer said "pass --nan clean (the anomalens command)… or read with nan_policy='clean'": a radiologist
    has no command line there. It asks, and opens the scan cleaned (the file untouched) or not at all."""
    from anomalens.app.desktop import setup_viewer
    from anomalens.app.recent import RecentFiles

    viewer = make_napari_viewer(show=True)
    files = setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))
    arr = phantom((4, 16, 20))
    arr[1, 3, 4], arr[2, 5, 6] = np.nan, np.inf
    path = write_sitk(tmp_path / "nan.nii.gz", arr)
    before = path.read_bytes()
    answers: list[bool] = [False, True]
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(files, "confirm_clean", lambda name, exc: asked.append((exc.bad, exc.total))
                        or answers.pop(0))
    assert files.open_path(path)
    qtbot.waitUntil(lambda: not files.jobs.running, timeout=20000)
    assert asked == [(2, arr.size)] and len(viewer.layers) == 0  # "No": nothing opened, and it says why
    assert "2 voxels are NaN or infinite" in files.status.text()
    assert files.open_path(path)
    qtbot.waitUntil(lambda: len(viewer.layers) == 1 and not files.jobs.running, timeout=20000)
    data = np.asarray(viewer.layers[0].data)
    assert np.isfinite(data).all() and len(asked) == 2
    assert path.read_bytes() == before  # the source scan is never modified
