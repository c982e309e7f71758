"""The Export dock and File → Export with real Qt/OpenGL (run under ``xvfb-run -a``).

A DICOM CT series is scored with a tiny calibrated PatchCore bundle through the Detector dock, the mask is
edited by hand, and every export is read back: NIfTI on the scan's geometry, a DICOM SEG whose pixels are
the edited mask on the source images, a non-blank PNG and one CSV row per scored slice.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes import calibrated_patchcore, use_model_folders
from tests.io_support import write_ct_series
from tests.phantoms import phantom_slices

pytestmark = pytest.mark.gui

FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.78"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    det = calibrated_patchcore(4, modality="CT")
    return det.save(tmp_path_factory.mktemp("data") / "models" / "phantom-patchcore")


@pytest.fixture
def env(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_model_folders(monkeypatch, bundle, tmp_path)


def _ct_series(folder: Path) -> Path:
    """A 4-slice CT series (phantoms with lesions, in HU) carrying a frame of reference, as real CT does."""
    import pydicom

    slices, _ = phantom_slices(4, 64, seed=5, lesion=True)
    for p in write_ct_series(folder, slices * 1000.0 - 500.0, z0=-10.0, dz=3.0):
        ds = pydicom.dcmread(p)
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
        ds.PositionReferenceIndicator = ""
        ds.save_as(p, enforce_file_format=True)
    return folder


def _docks(viewer: Any) -> tuple[Any, Any]:
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.app.widgets.export import ExportWidget

    det_w, exp_w = DetectorWidget(viewer), ExportWidget(viewer)
    viewer.window.add_dock_widget(det_w, name="Detector")
    viewer.window.add_dock_widget(exp_w, name="Export")
    return det_w, exp_w


def _wait(qtbot: Any, widget: Any) -> None:
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=30_000)


def test_exports_of_a_scored_dicom_series_read_back(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                    tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk
    from PIL import Image

    from anomalens.app.reader import image_layer_data
    from anomalens.app.state import get_state
    from anomalens.engine.io import read_scan

    src = _ct_series(tmp_path / "series")
    vol = read_scan(src)
    viewer = make_napari_viewer(show=True)
    data, kwargs, _ = image_layer_data(vol, name="ct")
    viewer.add_image(data, **kwargs)
    det_w, exp_w = _docks(viewer)
    state = get_state(viewer)
    assert not exp_w.mask_button.isEnabled() and "score" in exp_w.mask_button.toolTip()
    assert not exp_w.export_mask(tmp_path / "early.nii.gz") and not (tmp_path / "early.nii.gz").exists()

    assert det_w.set_bundle(env)
    _wait(qtbot, det_w)
    assert det_w.score_volume()
    _wait(qtbot, det_w)
    assert state.results is not None and state.results.scored.all()
    assert exp_w.seg_button.isEnabled() and exp_w.mask_button.isEnabled()
    mask_layer = viewer.layers["ct · patchcore v1 mask"]
    mask_layer.paint((1, 20, 20), 3, refresh=True)  # a hand edit: the export must hold it
    mask_layer.paint((2, 40, 30), 1, refresh=True)
    shown = np.asarray(mask_layer.data) != 0
    assert shown[1, 20, 20] and shown.any()

    out = tmp_path / "out"
    out.mkdir()
    # NIfTI heatmap and mask on the scan's geometry
    assert exp_w.export_heatmap(out / "heat")  # the suffix is added
    _wait(qtbot, exp_w)
    assert exp_w.last_written == (out / "heat.nii.gz").resolve(), exp_w.status.text()
    assert exp_w.export_mask(out / "mask.nii.gz")
    _wait(qtbot, exp_w)
    for name in ("heat.nii.gz", "mask.nii.gz"):
        img = sitk.ReadImage(str(out / name))
        assert img.GetSize() == tuple(reversed(vol.shape))
        assert img.GetSpacing() == pytest.approx(vol.spacing)
        assert img.GetOrigin() == pytest.approx(vol.origin)
        assert img.GetDirection() == pytest.approx(tuple(np.asarray(vol.direction).ravel()))
    heat_img = sitk.ReadImage(str(out / "heat.nii.gz"))
    np.testing.assert_allclose(sitk.GetArrayFromImage(heat_img), state.results.maps, rtol=1e-6)
    assert "normal quantile" in heat_img.GetMetaData("descrip")  # the file says its unit
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mask.nii.gz"))).astype(bool), shown)
    # the mask file says what it is, as the CLI's do (the viewer's header was empty)
    assert sitk.ReadImage(str(out / "mask.nii.gz")).GetMetaData("descrip").startswith("AnomaLens mask as shown")

    # DICOM SEG on the source images, pixels equal to the mask layer
    assert exp_w.export_seg(out / "mask_seg.dcm")
    _wait(qtbot, exp_w)
    assert exp_w.last_written == (out / "mask_seg.dcm").resolve(), exp_w.status.text()
    sop_by_z = {}
    for p in src.iterdir():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        sop_by_z[round(float(ds.ImagePositionPatient[2]), 3)] = ds.SOPInstanceUID
    sops = [sop_by_z[round(vol.origin[2] + vol.spacing[2] * z, 3)] for z in range(vol.n_slices)]
    seg = hd.seg.segread(out / "mask_seg.dcm")
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == FRAME_OF_REFERENCE
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, segment_numbers=[1],
                                            ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    assert np.array_equal(arr[..., 0].astype(bool), shown)

    # PNG snapshot of the viewer, and the slice scores
    assert exp_w.export_snapshot(out / "view.png")
    _wait(qtbot, exp_w)
    png = np.asarray(Image.open(out / "view.png"))
    assert png.ndim == 3 and png.shape[0] > 50 and png[..., :3].std() > 5
    assert exp_w.export_scores(out / "scores.csv")
    _wait(qtbot, exp_w)
    from anomalens.engine.outputs import SCORE_COLUMNS, read_scores_csv

    rows = read_scores_csv(out / "scores.csv")  # the CLI's table: same columns, same header lines
    assert tuple(rows[0]) == SCORE_COLUMNS
    assert [int(r["slice"]) for r in rows] == sorted(state.results.slice_scores) == list(range(vol.n_slices))
    assert [float(r["score"]) for r in rows] == pytest.approx([state.results.slice_scores[z] for z in range(4)],
                                                              rel=1e-5)
    assert [int(r["mask_voxels"]) for r in rows] == [int(shown[z].sum()) for z in range(4)]
    assert [r["flagged"] for r in rows] == [str(int(shown[z].any())) for z in range(4)]
    header = [ln for ln in (out / "scores.csv").read_text().splitlines() if ln.startswith("#")]
    assert any("normal-quantile" in ln for ln in header) and any("patchcore v1" in ln for ln in header)
    assert any("as shown in the viewer" in ln for ln in header)

    # the source DICOM folder is never written into; a failing write is a message, not a crash
    before = sorted(p.name for p in src.iterdir())
    assert not exp_w.export_mask(src / "mask.nii.gz")
    assert "source DICOM series" in exp_w.status.text()
    assert not exp_w.export_seg(src / "sub" / "seg.dcm")
    assert sorted(p.name for p in src.iterdir()) == before
    (tmp_path / "a-file").write_text("not a folder")
    assert exp_w.export_heatmap(tmp_path / "a-file" / "heat.nii.gz")
    _wait(qtbot, exp_w)
    assert "failed" in exp_w.status.text() and exp_w.isVisible()

    # the dialog step: an injected chooser gets a suggestion outside the source folder; cancel writes nothing
    asked: list[tuple[str, str]] = []
    exp_w.choose_path = lambda kind, title, filters, suggested: asked.append((kind, suggested)) or None
    assert not exp_w.export_mask()
    assert asked[0][0] == "mask" and not Path(asked[0][1]).resolve().is_relative_to(src.resolve())


def test_file_export_menu_and_seg_needs_dicom(make_napari_viewer: Any, qtbot: Any, env: Path,
                                              tmp_path: Path) -> None:
    from anomalens.app.desktop import setup_viewer
    from anomalens.app.reader import image_layer_data
    from anomalens.app.recent import RecentFiles
    from anomalens.engine.volume import Volume

    viewer = make_napari_viewer(show=True)
    files = setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))
    exp_w, det_w = viewer.window.anomalens_docks["Export"], viewer.window.anomalens_docks["Detector"]
    assert files.export_menu.title() == "Export" and files.export_menu.menuAction() in viewer.window.file_menu.actions()
    vol = Volume(phantom_slices(3, 64, seed=4)[0], spacing=(0.9, 0.9, 3.0), modality="CT",
                 metadata={"format": "NIfTI"})
    data, kwargs, _ = image_layer_data(vol, name="nifti")
    viewer.add_image(data, **kwargs)
    assert det_w.set_bundle(env)
    _wait(qtbot, det_w)
    assert det_w.score_slice()
    _wait(qtbot, det_w)
    files._sync_export()
    assert files.export_actions["mask"].isEnabled()
    assert not files.export_actions["seg"].isEnabled() and not exp_w.seg_button.isEnabled()
    assert "DICOM" in exp_w.seg_button.toolTip() and "DICOM" in files.export_actions["seg"].toolTip()

    chosen: list[str] = []
    exp_w.choose_path = lambda kind, title, filters, suggested: (chosen.append(kind)
                                                                 or tmp_path / "menu_scores.csv")
    files.export_actions["csv"].trigger()  # the menu calls the dock's own function
    _wait(qtbot, exp_w)
    from anomalens.engine.outputs import read_scores_csv

    assert chosen == ["csv"] and len(read_scores_csv(tmp_path / "menu_scores.csv")) == 1  # the one slice scored


def test_detector_dock_follows_a_model_set_elsewhere(make_napari_viewer: Any, env: Path) -> None:
    from anomalens.app.state import get_state
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.engine.detectors import load_bundle

    viewer = make_napari_viewer(show=True)
    w = DetectorWidget(viewer)
    viewer.window.add_dock_widget(w, name="Detector")
    others = [w.detector_combo.itemText(i) for i in range(w.detector_combo.count()) if
              w.detector_combo.itemText(i) != "patchcore"]
    if others:
        w.detector_combo.setCurrentText(others[0])
    state = get_state(viewer)
    state.set_model(load_bundle(env), env)  # as the demo or the Calibration dock do
    assert w.detector_combo.currentText() == "patchcore"
    assert w.bundle_combo.currentData() == str(env)
    assert "Model patchcore v1 (phantom-patchcore)" in w.model_label.text()
    assert "normal-quantile units" in w.model_label.text()
    assert not w.jobs.running  # mirroring the state loaded nothing again


@contextlib.contextmanager
def _refusing_folder(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Callable[[], str]]]:
    """A folder whose disk will refuse writes once ``refuse()`` is called; yields (folder, refuse).

    Real faults where the machine allows them: a small tmpfs filled to the brim (root with the capability to
    mount), else a folder made read-only (chmod is ignored by root). Only where neither works does
    ``engine.fileio``'s rename fail with ENOSPC instead (acceptable for this GUI test; the CLI's tests in
    test_full_disk.py use real faults only). ``refuse()`` returns which fault it set.
    """
    folder = base / f"fs-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(folder)], capture_output=True).returncode == 0

    def refuse() -> str:
        if mounted:
            with contextlib.suppress(OSError), (folder / "filler").open("wb") as fh:
                fh.write(b"\0" * (shutil.disk_usage(folder).free + 4096))
            return "full tmpfs"
        if os.geteuid() != 0:
            folder.chmod(0o500)
            return "read-only folder"
        from anomalens.engine import fileio

        real = os.replace

        def no_space(src: Any, dst: Any) -> None:
            if Path(dst).parent == folder:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(src, dst)

        monkeypatch.setattr(fileio.os, "replace", no_space)
        return "rename refused"

    try:
        yield folder, refuse
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        else:
            folder.chmod(0o700)


def test_an_export_over_a_file_on_a_refusing_disk_replaces_nothing_and_says_so(
        make_napari_viewer: Any, qtbot: Any, env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    from anomalens.app.reader import image_layer_data
    from anomalens.app.state import get_state
    from anomalens.engine.volume import Volume

    viewer = make_napari_viewer(show=True)
    vol = Volume(phantom_slices(3, 64, seed=4, lesion=True)[0], spacing=(0.9, 0.9, 3.0), modality="CT",
                 metadata={"format": "NIfTI"})
    data, kwargs, _ = image_layer_data(vol, name="scan")
    viewer.add_image(data, **kwargs)
    det_w, exp_w = _docks(viewer)
    assert det_w.set_bundle(env)
    _wait(qtbot, det_w)
    assert det_w.score_volume()
    _wait(qtbot, det_w)
    assert get_state(viewer).results is not None

    with _refusing_folder(tmp_path, monkeypatch) as (folder, refuse):
        exports = {"heat.nii.gz": exp_w.export_heatmap, "mask.nii.gz": exp_w.export_mask,
                   "scores.csv": exp_w.export_scores}
        for name, export in exports.items():  # the earlier results, written while the disk had room
            assert export(folder / name)
            _wait(qtbot, exp_w)
            assert exp_w.last_written == (folder / name).resolve(), exp_w.status.text()
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert set(before) == set(exports) and all(before.values())
        get_state(viewer).results.maps[...] += 0.5  # the new export would differ from the file on disk
        fault = refuse()

        for name, export in exports.items():
            exp_w.last_written = None
            shown = len(notification_manager.records)
            assert export(folder / name)  # started: the write fails in the worker
            _wait(qtbot, exp_w)
            errors = [str(n.message) for n in notification_manager.records[shown:]
                      if n.severity == NotificationSeverity.ERROR]
            assert len(errors) == 1 and "\n" not in errors[0], (fault, errors)
            assert errors[0].startswith("Export") and " failed: " in errors[0], (fault, errors)
            assert exp_w.status.text() == errors[0] and exp_w.last_written is None
            if fault != "read-only folder":
                assert f"disk full while writing {name}: nothing was replaced" in errors[0], (fault, errors)
            else:
                assert "no permission" in errors[0], errors
            assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "filler"} == before, fault
    assert exp_w.isVisible() and not exp_w.jobs.running
