"""One result, the same everywhere (issue #17): the viewer shows exactly what ``score_scan`` returns.

Scoring in the Detector dock, the re-scoring after "Fine-tune on marks", a second model's layers, the
Poincaré disk's values and the domain warnings are all checked against a direct ``score_scan`` call on the
same model and scan. GUI tests run with real Qt/OpenGL under ``xvfb-run -a`` (never QT_QPA_PLATFORM=offscreen).
Models are PatchCore's tiny test config on phantoms (``tests.fakes.calibrated_patchcore``), saved as versions
of a site profile so their labels are ``patchcore v1``, ``patchcore v2``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume
from tests.fakes import calibrated_patchcore
from tests.phantoms import phantom_slices

STALE = "(stale: model changed)"


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Versions v0001 and v0002 of the site profile "phantom" (two differently calibrated MR models)."""
    from anomalens.engine.modelstore import ModelStore

    store = ModelStore(tmp_path_factory.mktemp("data") / "models")
    v1 = store.save_version(calibrated_patchcore(4, modality="MR"), "phantom", note="first").path
    v2 = store.save_version(calibrated_patchcore(3, modality="MR"), "phantom", note="second", parent=v1).path
    store.rollback("phantom", v1.name)
    return v1, v2


@pytest.fixture
def env(profile: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(profile[0].parent.parent.parent))
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    return profile


def _volume(modality: str = "MR", n: int = 4, seed: int = 5) -> Volume:
    return Volume(phantom_slices(n, 64, seed=seed, lesion=True)[0], spacing=(0.9, 0.9, 3.0), modality=modality)


def _viewer(make_napari_viewer: Any, vol: Volume, name: str = "phantom") -> tuple[Any, Any]:
    from anomalens.app.reader import image_layer_data

    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = image_layer_data(vol, name=name)
    return viewer, viewer.add_image(data, **kwargs)


def _dock(viewer: Any, cls: str) -> Any:
    import importlib

    module, attr = {"Detector": ("detector", "DetectorWidget"), "Calibration": ("calibration", "CalibrationWidget"),
                    "Poincaré disk": ("poincare", "PoincareWidget"), "SCR": ("scr", "ScrWidget")}[cls]
    widget = getattr(importlib.import_module(f"anomalens.app.widgets.{module}"), attr)(viewer)
    viewer.window.add_dock_widget(widget, name=cls)
    return widget


def _wait(qtbot: Any, widget: Any, timeout: float = 90.0) -> None:
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=int(timeout * 1000))


def _load(qtbot: Any, det_w: Any, path: Path) -> None:
    assert det_w.set_bundle(path)
    _wait(qtbot, det_w)


def _score_volume(qtbot: Any, det_w: Any) -> None:
    assert det_w.score_volume()
    _wait(qtbot, det_w)


# -- without Qt ---------------------------------------------------------------------------------------

def test_the_viewer_worker_gives_score_scans_map_and_lesion_mask() -> None:
    from anomalens.app.results import score_for_viewer
    from anomalens.engine.scoring import MapUnit, score_scan

    det, vol = calibrated_patchcore(4, modality="MR"), _volume()
    want = score_scan(det, vol)
    got = score_for_viewer(det, vol)
    assert want.unit is MapUnit.QUANTILE and want.lesion_mask is not None and want.lesion_mask.any()
    assert np.array_equal(got.maps, want.map)
    assert np.array_equal(got.mask.astype(bool), want.lesion_mask)
    assert got.slice_scores == {s.z: s.score for s in want.slices}
    assert got.unit is want.unit and got.threshold == det.calibration.threshold
    assert got.model == want.model and got.heatmap_name == f"scan · {want.model.label} anomaly"
    # slice by slice adds up to the same arrays: each slice is what score_scan gives for it alone
    parts = score_for_viewer(det, vol, np.array([1]))
    parts.merge(score_scan(det, vol, [3]))
    for z in (1, 3):
        alone = score_scan(det, vol, [z])
        assert np.array_equal(parts.maps[z], alone.map[z]) and np.array_equal(parts.mask[z] > 0, alone.lesion_mask[z])
    assert list(np.flatnonzero(parts.scored)) == [1, 3] and not parts.maps[[0, 2]].any()


def test_results_of_another_model_are_kept_apart() -> None:
    from anomalens.app.results import ScanResults
    from anomalens.app.state import AnomaLensState
    from anomalens.engine.scoring import score_scan

    vol = _volume()
    a, b = calibrated_patchcore(4), calibrated_patchcore(3)
    ra, rb = score_scan(a, vol), score_scan(b, vol)
    assert ra.model.label == rb.model.label == "patchcore (unsaved)" and ra.model.fingerprint != rb.model.fingerprint
    first = ScanResults.from_result("phantom", ra, a)
    with pytest.raises(ValueError, match="another model"):
        first.merge(rb)
    state = AnomaLensState()
    state.add_results(first)
    second = state.add_results(ScanResults.from_result("phantom", rb, b))
    assert second.label.startswith("patchcore (unsaved) [") and second.heatmap_name != first.heatmap_name
    state.volume, state.detector = vol, a
    assert state.results_for(vol, a) is first and state.results_for(vol, b) is second


# -- in the viewer --------------------------------------------------------------------------------------

@pytest.mark.gui
def test_scoring_in_the_dock_shows_score_scans_result(make_napari_viewer: Any, qtbot: Any, env: tuple[Path, Path]
                                                      ) -> None:
    from anomalens.app.state import get_state
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.scoring import score_scan

    v1, _ = env
    vol = _volume()
    viewer, _ = _viewer(make_napari_viewer, vol)
    det_w = _dock(viewer, "Detector")
    _load(qtbot, det_w, v1)
    _score_volume(qtbot, det_w)
    want = score_scan(load_bundle(v1), vol)
    heat, mask = viewer.layers["phantom · patchcore v1 anomaly"], viewer.layers["phantom · patchcore v1 mask"]
    assert np.array_equal(heat.data, want.map)
    assert np.array_equal(mask.data.astype(bool), want.lesion_mask)
    assert heat.metadata["anomalens_unit"] == want.unit.value == "normal-quantile"
    res = get_state(viewer).results
    assert res is not None and res.slice_scores == {s.z: s.score for s in want.slices}
    assert "patchcore v1" in det_w.model_label.text() and "normal-quantile" in det_w.model_label.text()
    assert det_w.plot.unit_label == "normal quantile" == det_w.plot.plot.getAxis("left").labelText
    assert det_w.plot.threshold.value() == pytest.approx(want.calibration.threshold)


@pytest.mark.gui
def test_a_second_model_adds_its_own_layers_and_keeps_the_first(make_napari_viewer: Any, qtbot: Any,
                                                                env: tuple[Path, Path]) -> None:
    from anomalens.app.state import get_state
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.scoring import score_scan

    v1, v2 = env
    vol = _volume()
    viewer, _ = _viewer(make_napari_viewer, vol)
    det_w, scr_w = _dock(viewer, "Detector"), _dock(viewer, "SCR")
    state = get_state(viewer)
    _load(qtbot, det_w, v1)
    _score_volume(qtbot, det_w)
    first = state.results
    first_map = viewer.layers[first.heatmap_name].data.copy()
    _load(qtbot, det_w, v2)
    assert state.results is None  # v2 has not scored this scan yet: the docks show nothing of v1 as if it were v2
    assert not scr_w.lam_slider.isEnabled()
    _score_volume(qtbot, det_w)
    second = state.results
    names = {lyr.name for lyr in viewer.layers}
    assert {"phantom · patchcore v1 anomaly", "phantom · patchcore v1 mask", "phantom · patchcore v2 anomaly",
            "phantom · patchcore v2 mask"} <= names
    assert second is not first and second.label == "patchcore v2"
    assert np.array_equal(viewer.layers["phantom · patchcore v1 anomaly"].data, first_map)  # untouched
    assert np.array_equal(viewer.layers["phantom · patchcore v2 anomaly"].data, score_scan(load_bundle(v2), vol).map)
    assert not np.array_equal(first_map, second.maps)
    assert det_w.plot.title == "patchcore v2"
    # loading the first model again makes its result the followed one (score curve, SCR) without rescoring
    _load(qtbot, det_w, v1)
    assert state.results is first and first.detector is state.detector
    assert det_w.plot.title == "patchcore v1" and scr_w.lam_slider.isEnabled()


@pytest.mark.gui
def test_fine_tune_rescores_what_is_shown_or_marks_it_stale(make_napari_viewer: Any, qtbot: Any,
                                                            env: tuple[Path, Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from napari.utils.notifications import notification_manager

    import anomalens.app.rescore as rescore
    from anomalens.app.state import get_state
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.progress import check
    from anomalens.engine.scoring import score_scan

    v1, _ = env
    vol = _volume(n=5, seed=9)
    viewer, _ = _viewer(make_napari_viewer, vol)
    det_w, cal_w = _dock(viewer, "Detector"), _dock(viewer, "Calibration")
    state = get_state(viewer)
    _load(qtbot, det_w, v1)
    _score_volume(qtbot, det_w)
    before = state.results
    old_threshold = state.detector.calibration.threshold
    cal_w.mark_range(0, 3)
    assert cal_w.fine_tune()
    qtbot.waitUntil(lambda: cal_w.last_update is not None and not cal_w.jobs.running, timeout=120_000)
    new_path = cal_w.last_update.info.path
    assert state.model_path == new_path
    fresh = load_bundle(new_path)
    assert fresh.calibration.threshold != old_threshold or fresh.calibration.scr != before.calibration.scr
    want = score_scan(fresh, vol)
    res = state.results
    assert res is not None and res is not before and res.model.fingerprint == want.model.fingerprint
    label = want.model.label
    shown = viewer.layers[f"phantom · {label} anomaly"]
    assert np.array_equal(shown.data, want.map) and np.array_equal(res.maps, want.map)
    assert np.array_equal(viewer.layers[f"phantom · {label} mask"].data.astype(bool), want.lesion_mask)
    old_layers = [viewer.layers[before.heatmap_name], viewer.layers[before.mask_name]]
    assert not any(lyr.visible for lyr in old_layers)  # kept (hand edits survive), hidden
    lines = cal_w.last_update.recalibration.describe()
    assert all(line in cal_w.fp_label.text() for line in lines)

    # a second fine-tune whose re-scoring is cancelled: the shown layers say they are stale
    def slow(detector: Any, volume: Any, indices: Any, settings: Any, progress: Any, cancel: Any) -> Any:
        # runs until the test cancels it (a loaded machine may take seconds to get there), 5 minutes at most
        for _ in range(30_000):
            check(cancel)
            time.sleep(0.01)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(rescore, "score_work", slow)
    shown_before = state.results
    cal_w.last_update = None
    # Other normals, so another calibration: the same marks would remake the same model (PatchCore does not adapt
    # its bank), whose result is already shown, and nothing would need re-scoring.
    assert cal_w.undo()
    cal_w.mark_range(1, 4)
    assert cal_w.fine_tune()
    qtbot.waitUntil(lambda: cal_w.last_update is not None and cal_w.jobs.running, timeout=120_000)
    assert rescore.JOB_NAME in cal_w.status.text()
    records = len(notification_manager.records)
    cal_w.jobs.cancel()
    _wait(qtbot, cal_w, timeout=10)
    assert shown_before.stale and state.results is None
    stale = [lyr.name for lyr in viewer.layers if lyr.name.endswith(STALE)]
    assert sorted(stale) == sorted([f"phantom · {label} anomaly {STALE}", f"phantom · {label} mask {STALE}"])
    assert "stale" in det_w.status.text() and "previous model" in det_w.status.text()
    assert any("stale" in str(n.message) for n in notification_manager.records[records:])


@pytest.mark.gui
def test_poincare_status_says_the_heatmaps_unit_and_value(make_napari_viewer: Any, qtbot: Any,
                                                          env: tuple[Path, Path]) -> None:
    from anomalens.app.state import get_state

    v1, _ = env
    vol = _volume()
    viewer, _ = _viewer(make_napari_viewer, vol)
    det_w, disk = _dock(viewer, "Detector"), _dock(viewer, "Poincaré disk")
    _load(qtbot, det_w, v1)
    _score_volume(qtbot, det_w)
    assert disk.wait(20)
    res = get_state(viewer).results
    heat = viewer.layers[res.heatmap_name]
    proj = disk.patch_projection
    assert proj is not None and len(proj) == len(res.embeddings) > 0
    assert disk.colour_limits() == pytest.approx(tuple(heat.contrast_limits))  # one colour scale
    assert "normal quantile" in disk.legend.text()
    # the most anomalous patch: its point says the heatmap's own value there, in the heatmap's unit
    i = int(np.argmax(proj.scores))
    z = int(proj.slice_index[i])
    y, x = (round(float(v)) for v in proj.centers[i])  # nearest pixel, as the disk samples the map
    value = float(heat.data[z, y, x])
    assert value > 1.0  # beyond every normal pixel: not a raw distance
    disk.select_point(i)
    assert f"{value:.3f} normal quantile" in disk.status.text()
    assert f"slice {z}" in disk.status.text()
    disk.status.setText("")
    disk.on_points_hovered(disk.scatter, [type("P", (), {"data": lambda self: i})()])
    assert f"{value:.3f} normal quantile" in disk.status.text()
    raw = res.embeddings.slices[z]
    assert not np.allclose(raw.values, 0)  # values come from the map, not the detector's raw patch scores


@pytest.mark.gui
def test_a_ct_scan_scored_with_an_mr_model_warns(make_napari_viewer: Any, qtbot: Any, env: tuple[Path, Path]) -> None:
    from napari.utils.notifications import notification_manager

    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.scoring import score_scan

    v1, _ = env
    ct = _volume(modality="CT")
    warnings = score_scan(load_bundle(v1), ct, [0]).warnings
    assert any("CT" in w and "MR" in w for w in warnings), warnings  # what the engine says about this pair
    viewer, _ = _viewer(make_napari_viewer, ct, name="ct")
    det_w = _dock(viewer, "Detector")
    _load(qtbot, det_w, v1)
    start = len(notification_manager.records)
    assert det_w.score_slice()
    _wait(qtbot, det_w)
    told = [str(n.message) for n in notification_manager.records[start:]]
    from anomalens.app.widgets.detector import short_warning

    for w in warnings:  # told whole; the status line gives its first clause, the whole of it on hover
        assert any(w in m for m in told), (w, told)
        assert short_warning(w) in det_w.status.text() and w in det_w.status.toolTip()
    again = len(notification_manager.records)
    _score_volume(qtbot, det_w)  # the same image and model: told once, still in the status line
    assert not any(any(w in str(n.message) for w in warnings) for n in notification_manager.records[again:])
    assert all(short_warning(w) in det_w.status.text() for w in warnings)
