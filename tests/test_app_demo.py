"""``anomalens-viewer --demo``'s result in the docks, with real Qt/OpenGL (run under ``xvfb-run -a``).

The real demo trains on brain1 (minutes), so ``run_demo`` is replaced by one returning a small fake ``DemoOutput``: a
phantom scan, a heatmap and mask on two of its slices, and a tiny calibrated PatchCore bundle. What is
checked is that the demo goes through the same results registry as the Detector dock: the Export dock
lists it and writes exactly its arrays, and the SCR dock re-cuts its mask.
"""

from __future__ import annotations

import csv
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
    """What ``run_demo`` returns, in miniature: maps and mask on the scan's grid, zeros off the evaluated slices."""
    from anomalens.engine.demo import DemoOutput

    slices, _ = phantom_slices(4, 64, seed=3)
    vol = Volume(slices, spacing=(0.8, 0.8, 6.5), origin=(-10.0, 5.0, 2.0), modality="MR")
    rng = np.random.default_rng(0)
    heat = np.zeros(vol.shape, np.float32)
    heat[EVALUATED] = (0.3 + 0.2 * rng.random((len(EVALUATED), 64, 64))).astype(np.float32)
    heat[1, 28:36, 26:34] = 1.6  # a "lesion" inside the phantom's tissue on each evaluated slice
    heat[2, 30:38, 30:36] = 1.4
    heat[slices == 0] = 0.0
    mask = np.zeros(vol.shape, np.uint8)
    mask[EVALUATED] = heat[EVALUATED] > 1.0
    return DemoOutput(volume=vol, heatmap=heat, mask=mask, evaluated=EVALUATED, metrics={}, model=model)


def _wait(qtbot: Any, widget: Any) -> None:
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=30_000)


def test_demo_result_is_exported_and_recut_by_the_docks(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import SimpleITK as sitk

    from anomalens.app.desktop import setup_viewer, show_demo
    from anomalens.app.recent import RecentFiles
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
    assert res is not None and res.normalised and state.detector is res.model
    assert state.model_path == env and state.volume is out.volume
    assert list(np.flatnonzero(res.scored)) == list(EVALUATED)
    assert sorted(res.slice_scores) == list(EVALUATED)
    assert {lyr.name for lyr in viewer.layers} == {"brain1", res.heatmap_name, res.mask_name}
    assert np.array_equal(viewer.layers[res.mask_name].data, out.mask)  # the demo's own cut, not re-cut
    assert sorted(docks["Detector"].plot._z) == list(EVALUATED)

    # the Export dock sees the demo's result and writes exactly its arrays on the scan's geometry
    for button in (exp_w.heatmap_button, exp_w.mask_button, exp_w.csv_button):
        assert button.isEnabled(), button.toolTip()
    assert not exp_w.seg_button.isEnabled() and "DICOM" in exp_w.seg_button.toolTip()  # not read from DICOM
    assert exp_w.export_heatmap(tmp_path / "heat.nii.gz")
    _wait(qtbot, exp_w)
    assert exp_w.last_written == (tmp_path / "heat.nii.gz").resolve(), exp_w.status.text()
    img = sitk.ReadImage(str(tmp_path / "heat.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(img), out.heatmap)
    assert img.GetSpacing() == pytest.approx(out.volume.spacing)
    assert img.GetOrigin() == pytest.approx(out.volume.origin)
    assert exp_w.export_scores(tmp_path / "scores.csv")
    _wait(qtbot, exp_w)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [int(r["slice"]) for r in rows] == list(EVALUATED)
    assert [int(r["mask_voxels"]) for r in rows] == [int(out.mask[z].sum()) for z in EVALUATED]

    # the SCR dock acts on it: a threshold above every score clears the shown slice only
    z = int(EVALUATED[len(EVALUATED) // 2])
    other = int(EVALUATED[0])
    assert out.mask[z].any() and scr_w.threshold_slider.isEnabled()
    scr_w.threshold_slider.setValue(2.0)
    mask_layer = viewer.layers[res.mask_name]
    assert not mask_layer.data[z].any()
    assert np.array_equal(mask_layer.data[other], out.mask[other])
    assert exp_w.export_mask(tmp_path / "mask.nii.gz")
    _wait(qtbot, exp_w)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))
    assert np.array_equal(written, np.asarray(mask_layer.data != 0, np.uint8))  # the re-cut mask, as shown
