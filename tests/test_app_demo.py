"""``anomalens-viewer --demo``'s result in the docks, with real Qt/OpenGL (run under ``xvfb-run -a``).

The real demo trains on brain1 (minutes), so ``run_demo`` is replaced by one returning a small ``DemoOutput``: a
phantom scan scored on two of its slices by ``score_scan`` with a tiny calibrated PatchCore bundle. What is
checked is that the demo goes through the same path as the Detector dock: its layers carry the model's
label, the Export dock lists it and writes exactly its arrays, and the SCR dock re-cuts its mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume
from tests.fakes import calibrated_patchcore, use_model_folders
from tests.phantoms import phantom_slices

pytestmark = pytest.mark.gui

EVALUATED = np.array([1, 2])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrated_patchcore(4, modality="MR").save(tmp_path_factory.mktemp("data") / "models" / "demo-fake")


@pytest.fixture
def env(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_model_folders(monkeypatch, bundle, tmp_path)


def fake_demo_output(model: Path) -> Any:
    """What ``run_demo`` returns, in miniature: ``score_scan`` of two slices of a phantom with lesions."""
    from anomalens.engine.demo import DemoOutput
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.scoring import score_scan

    slices, _ = phantom_slices(4, 64, seed=3, lesion=True)
    vol = Volume(slices, spacing=(0.8, 0.8, 6.5), origin=(-10.0, 5.0, 2.0), modality="MR")
    return DemoOutput(result=score_scan(load_bundle(model), vol, EVALUATED), metrics={}, model=model)


def _wait(qtbot: Any, widget: Any) -> None:
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=30_000)


def test_demo_result_is_exported_and_recut_by_the_docks(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import SimpleITK as sitk

    from anomalens.app.desktop import setup_viewer, show_demo
    from anomalens.app.recent import RecentFiles
    from anomalens.app.results import HIGHLIGHT_LAYER
    from anomalens.app.state import get_state

    out = fake_demo_output(env)
    viewer = make_napari_viewer(show=True)
    setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))
    docks = viewer.window.anomalens_docks
    exp_w, scr_w = docks["Export"], docks["SCR"]
    assert not exp_w.heatmap_button.isEnabled()  # nothing scored yet

    monkeypatch.setattr("anomalens.engine.demo.run_demo", lambda **_: out)  # the real job trains for minutes
    show_demo(viewer)
    state = get_state(viewer)
    res = state.results
    result = out.result
    assert res is not None and res.calibrated and state.detector is res.detector
    assert state.model_path == env and state.volume is out.volume
    assert list(np.flatnonzero(res.scored)) == list(EVALUATED)
    assert res.slice_scores == {s.z: s.score for s in result.slices}
    assert res.heatmap_name == "brain1 · patchcore v1 anomaly" and res.mask_name == "brain1 · patchcore v1 mask"
    # the scan, its map and mask; and the (empty) points layer the Poincaré dock rings a hovered patch in, added
    # once its projection lands (so the first hover does not stall on adding a layer)
    assert {lyr.name for lyr in viewer.layers} - {HIGHLIGHT_LAYER} == {"brain1", res.heatmap_name, res.mask_name}
    assert HIGHLIGHT_LAYER not in viewer.layers or len(viewer.layers[HIGHLIGHT_LAYER].data) == 0
    assert np.array_equal(viewer.layers[res.heatmap_name].data, result.map)
    assert np.array_equal(viewer.layers[res.mask_name].data, result.lesion_mask)  # the demo's own cut, not re-cut
    assert sorted(docks["Detector"].plot._z) == list(EVALUATED)
    assert docks["Detector"].plot.unit_label == "normal quantile"

    # the Export dock sees the demo's result and writes exactly its arrays on the scan's geometry
    for button in (exp_w.heatmap_button, exp_w.mask_button, exp_w.csv_button):
        assert button.isEnabled(), button.toolTip()
    assert not exp_w.seg_button.isEnabled() and "DICOM" in exp_w.seg_button.toolTip()  # not read from DICOM
    assert exp_w.export_heatmap(tmp_path / "heat.nii.gz")
    _wait(qtbot, exp_w)
    assert exp_w.last_written == (tmp_path / "heat.nii.gz").resolve(), exp_w.status.text()
    img = sitk.ReadImage(str(tmp_path / "heat.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(img), result.map)
    assert img.GetSpacing() == pytest.approx(out.volume.spacing)
    assert img.GetOrigin() == pytest.approx(out.volume.origin)
    assert exp_w.export_scores(tmp_path / "scores.csv")
    _wait(qtbot, exp_w)
    from anomalens.engine.outputs import read_scores_csv

    rows = read_scores_csv(tmp_path / "scores.csv")
    assert [int(r["slice"]) for r in rows] == list(EVALUATED)
    assert [int(r["mask_voxels"]) for r in rows] == [s.mask_voxels for s in result.slices]

    # the SCR dock acts on it: a higher threshold re-cuts the shown slice only, with the engine's scr_refine
    from anomalens.app.results import current_index
    from anomalens.engine.postprocess.scr import scr_refine

    z = current_index(viewer, viewer.layers["brain1"])
    other = int(next(e for e in EVALUATED if e != z))
    lesion = result.lesion_mask
    assert z in EVALUATED and lesion[z].any() and scr_w.threshold_slider.isEnabled()
    cal = state.detector.calibration.scr
    lo, hi = scr_w.threshold_slider.minimum(), scr_w.threshold_slider.maximum()
    assert lo < cal.threshold < hi  # the slider's range follows the calibrated point
    scr_w.threshold_slider.setValue(hi)
    mask_layer = viewer.layers[res.mask_name]
    want = scr_refine(result.map[z], hi, cal.lam, cal.tau, intensities=result.prepared.slices[z],
                      foreground=result.prepared.foreground[z], temperature=cal.temperature)
    assert np.array_equal(mask_layer.data[z].astype(bool), want)
    assert mask_layer.data[z].sum() < lesion[z].sum()
    assert np.array_equal(mask_layer.data[other], lesion[other])
    assert exp_w.export_mask(tmp_path / "mask.nii.gz")
    _wait(qtbot, exp_w)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))
    assert np.array_equal(written, np.asarray(mask_layer.data != 0, np.uint8))  # the re-cut mask, as shown
