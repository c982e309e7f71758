"""The Calibration dock with real Qt/OpenGL (run under ``xvfb-run -a``; never QT_QPA_PLATFORM=offscreen).

A PatchCore model (tiny test config) is trained once on phantom slices and saved as version v0001 of a
site profile; fine-tuning in the dock is then real engine work on a few marked slices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume
from tests.fakes import calibrated_patchcore
from tests.phantoms import phantom_slices

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def profile_v1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from anomalens.engine.modelstore import ModelStore

    root = tmp_path_factory.mktemp("data")
    return ModelStore(root / "models").save_version(calibrated_patchcore(4), "phantom",
                                                    note="trained on phantoms").path


@pytest.fixture
def env(profile_v1: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(profile_v1.parent.parent.parent))
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    return profile_v1


def _scan(viewer: Any, seed: int = 7) -> tuple[Any, Volume]:
    """A phantom scan; each seed is another study (the case library is shared by the module's tests)."""
    from anomalens.app.reader import image_layer_data

    vol = Volume(phantom_slices(5, 64, seed=seed)[0], spacing=(0.9, 0.9, 3.0), modality="MR")
    data, kwargs, _ = image_layer_data(vol, name="phantom")
    return viewer.add_image(data, **kwargs), vol


def _dock(viewer: Any) -> Any:
    from anomalens.app.widgets.calibration import CalibrationWidget

    w = CalibrationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Calibration")
    return w


def test_marks_persist_across_a_restart(make_napari_viewer: Any, qtbot: Any, env: Path) -> None:
    from anomalens.app.results import goto_index
    from anomalens.app.state import get_state
    from anomalens.app.widgets.calibration import case_library
    from anomalens.engine.caselib import CaseLibrary, default_path, study_key

    viewer = make_napari_viewer(show=True)
    layer, vol = _scan(viewer)
    w = _dock(viewer)
    state = get_state(viewer)
    assert state.volume is not None and state.volume.array is layer.data  # taken from the scan layer
    goto_index(viewer, layer, 3)
    assert w.mark_current_slice() == [3]
    assert not w.mark_slice_button.isEnabled() and w.unmark_slice_button.isEnabled()
    assert w.mark_range(0, 1) == [0, 1]
    assert state.extras["marked_slices"] == [0, 1, 3]
    assert "0-1, 3" in w.marks_label.text()
    assert not w.redo_button.isEnabled() and w.undo_button.isEnabled()  # nothing undone yet
    assert w.undo() and state.extras["marked_slices"] == [3]
    assert w.redo_button.isEnabled()
    assert w.redo() and state.extras["marked_slices"] == [0, 1, 3] and "redid mark of 2" in w.status.text()
    assert not w.redo() and w.status.text() == "nothing to redo" and not w.redo_button.isEnabled()
    assert w.undo() and state.extras["marked_slices"] == [3]
    w.mark_range(1, 0)
    assert w.unmark_current_slice() == [3] and state.extras["marked_slices"] == [0, 1]
    state.set_disk_selection([(4, 10.0, 12.0)])
    assert w.mark_selection_button.isEnabled() and w.mark_selection() == [4]

    # the scan's layer removed: nothing is marked any more (it marked slice 0 of the gone scan, and saved it)
    goto_index(viewer, layer, 2)
    viewer.layers.remove(layer)
    assert state.volume is None and "No scan" in w.study_label.text()
    assert w.mark_current_slice() == [] and w.mark_range(2, 2) == []
    assert not w.mark_slice_button.isEnabled()
    case_library(state).close()  # the viewer goes away

    lib = CaseLibrary(default_path())  # a restart
    key = study_key(vol)
    assert lib.marks(key) == [0, 1, 4] and lib.patches(key) == [(4, 10.0, 12.0)]
    lib.close()
    viewer2 = make_napari_viewer(show=True)
    _scan(viewer2)
    w2 = _dock(viewer2)
    assert w2.marked_slices() == [0, 1, 4]


def test_fine_tune_makes_a_new_version_and_rollback_restores_the_old(make_napari_viewer: Any, qtbot: Any,
                                                                     env: Path) -> None:
    from anomalens.app.state import get_state
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.modelstore import ModelStore

    viewer = make_napari_viewer(show=True)
    _scan(viewer, seed=8)
    w = _dock(viewer)
    state = get_state(viewer)
    assert not w.finetune_button.isEnabled()  # no model yet
    state.set_model(load_bundle(env), env)
    assert w.version_rows() == ["v0001"]
    w.mark_current_slice()
    assert not w.finetune_button.isEnabled() and "at least 2" in w.finetune_button.toolTip()  # one is not enough
    w.mark_range(0, 2)
    assert w.finetune_button.isEnabled()
    assert w.fine_tune()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=90_000)
    assert w.last_update is not None, w.status.text()
    v2 = env.parent / "v0002"
    assert state.model_path == v2 and v2.is_dir()
    rec = w.last_update.recalibration
    assert rec.before is not None and 0 <= rec.after.plain <= 1
    assert (rec.n_fine_tune, rec.n_calibration) == (2, 1)  # every other marked slice adapts, the rest calibrate
    assert "fine-tuned on 2 normal slices" in w.fp_label.text() and "it was" in w.fp_label.text()
    assert state.detector.calibration == rec.calibration
    manifest = json.loads((v2 / "bundle.json").read_text())
    assert manifest["parent"]["path"] == env.name and manifest["bundle_version"] == 2  # a sibling, by name
    assert "3 slices marked normal" in manifest["note"]
    assert w.version_rows() == ["v0002", "v0001"]
    assert ModelStore().active("phantom").path == v2
    # the row names the model as the rest of the viewer does (layer names, the curve): both numbers, side by side
    from anomalens.app.results import model_identity

    assert f"v0002 ({model_identity(state.detector).label})" in w.versions.item(0).text()

    w.versions.setCurrentRow(1)
    assert w.rollback_button.isEnabled()
    assert w.rollback()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=30_000)
    assert state.model_path == env
    assert json.loads((env.parent / "active.json").read_text())["version"] == "v0001"
    assert v2.is_dir()  # nothing deleted
    assert state.detector.calibration == load_bundle(env).calibration
    assert np.isfinite(state.detector.calibration.threshold)
    assert w.version_rows() == ["v0002", "v0001"] and w.versions.item(1).text().startswith("●")

    # Cancel: nothing is saved and the loaded model stays
    assert w.fine_tune()
    w.jobs.cancel()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=30_000)
    assert "cancelled" in w.status.text()
    assert not (env.parent / "v0003").exists() and state.model_path == env


def test_the_model_a_profile_started_from_can_be_rolled_back_to(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                                tmp_path: Path) -> None:
    """After a first fine-tune of a model from outside the store, the list held only v0001: nothing led back
    to the model the site started from."""
    from anomalens.app.state import get_state
    from anomalens.engine.detectors import load_bundle

    base = tmp_path / "shipped-model"
    calibrated_patchcore(5).save(base)
    viewer = make_napari_viewer(show=True)
    _scan(viewer, seed=9)
    w = _dock(viewer)
    state = get_state(viewer)
    state.set_model(load_bundle(base), base)
    assert w.version_rows() == []  # no profile yet
    w.mark_range(0, 2)
    assert w.fine_tune()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=90_000)
    assert w.last_update is not None, w.status.text()
    v1 = state.model_path
    assert v1.name == "v0001" and v1.parent.name == "shipped-model"
    assert w.version_rows() == ["v0001", "shipped-model"]
    assert "fine-tuned from" in w.versions.item(1).text()

    w.versions.setCurrentRow(1)
    assert w.rollback_button.isEnabled() and w.rollback()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=30_000)
    assert Path(state.model_path).resolve() == base.resolve()
    assert state.detector.calibration == load_bundle(base).calibration
    # the profile stays listed, its base marked loaded; forward to v0001 again works
    assert w.version_rows() == ["v0001", "shipped-model"] and "(loaded)" in w.versions.item(1).text()
    # one model is marked in use: the base; v0001 stays what the site opens next time, said in words
    assert w.versions.item(1).text().startswith("● ") and not w.versions.item(0).text().startswith("●")
    assert "(site default)" in w.versions.item(0).text()
    w.versions.setCurrentRow(0)
    assert w.rollback()
    qtbot.waitUntil(lambda: not w.jobs.running, timeout=30_000)
    assert state.model_path == v1
