"""A patient-named folder leaves no trace in the viewer's log or in what it exports (issue #18; under Xvfb).

``DOE^JOHN 12345/`` holds a NIfTI scan named after it and a DICOM series in a folder named after it whose
headers say PatientName ``DOE^JOHN``, PatientID ``12345``. Both are opened as a user would (File → Open and
napari's reader), scored with a small calibrated PatchCore, a slice is marked normal, everything is exported
under the names the viewer suggests into another folder, and errors naming the files are provoked (a corrupt
scan opened by a relative path, an export refused inside the DICOM folder). ``viewer.log`` and every file
written (decompressed where gzipped; the case library too) are then searched for the name's parts.

The DICOM SEG is the one file that must name the patient: DICOM requires a segmentation to carry its source's
patient module (a PACS files it under that patient), so its PatientName/PatientID are checked to be the
source's and everything else in it is searched like the other files.
"""

from __future__ import annotations

import gzip
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes import calibrated_patchcore, use_model_folders
from tests.io_support import write_ct_series
from tests.phantoms import phantom_slices
from tests.test_datasets import write_volume

pytestmark = pytest.mark.gui

NAME = "DOE^JOHN 12345"
PARTS = ("DOE", "JOHN", "12345")
#: DICOM elements that must copy the source's patient (a SEG is filed under its source's patient).
PATIENT_ELEMENTS = ("PatientName", "PatientID")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrated_patchcore(4, modality="MR").save(tmp_path_factory.mktemp("data") / "models" / "phantom-pc")


def _dicom_series(folder: Path) -> Path:
    """A 3-slice CT series whose headers name the patient (and carry the frame of reference a SEG needs)."""
    import pydicom

    slices, _ = phantom_slices(3, 64, seed=5, lesion=True)
    for p in write_ct_series(folder, slices * 1000.0 - 500.0, z0=-10.0, dz=3.0, description="AX CT"):
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = "DOE^JOHN", "12345"
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.78"
        ds.PositionReferenceIndicator = ""
        ds.save_as(p, enforce_file_format=True)
    return folder


def _contents(path: Path) -> bytes:
    """A written file's bytes as a reader would see them: gunzipped; a DICOM SEG without its patient module."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.suffix == ".dcm":
        return _seg_without_patient(path)
    return data


def _seg_without_patient(path: Path) -> bytes:
    """The SEG's bytes with its patient elements, UIDs and times blanked.

    UIDs hold random digits and times the clock's ("12345" occurs in a SEG written at 12:34:5x): neither is
    the patient's.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    assert str(ds.PatientName) == "DOE^JOHN" and ds.PatientID == "12345"  # the source's patient, as DICOM requires

    def blank(dataset: Any, elem: Any) -> None:
        if elem.keyword in PATIENT_ELEMENTS:
            elem.value = ""
        elif elem.VR == "UI" and elem.value:
            elem.value = "1.2"  # a placeholder UID: the element stays, its random digits go
        elif elem.VR in ("DA", "TM", "DT") and elem.value:
            elem.value = ""  # when it was written, not whom it is about

    ds.walk(blank)
    ds.file_meta.walk(blank)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _leaks(files: list[Path]) -> list[str]:
    return [f"{p}: {part}" for p in files for part in PARTS if part.encode() in _contents(p)]


def test_a_patient_named_folder_leaves_no_trace_in_the_viewers_log_or_exports(
        make_napari_viewer: Any, qtbot: Any, bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from napari.utils.notifications import notification_manager

    from anomalens.app.desktop import LOG_NAME, log_folder, setup_logging, setup_viewer
    from anomalens.app.recent import RecentFiles
    from anomalens.app.state import get_state
    from anomalens.engine.caselib import study_key
    from anomalens.engine.logredact import forget_all

    forget_all()  # nothing registered by earlier tests: the viewer must register what it opens itself
    use_model_folders(monkeypatch, bundle, tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    handler = setup_logging()  # viewer.log where the desktop app puts it
    log_file = log_folder() / LOG_NAME
    assert log_file.is_relative_to(tmp_path / "state")

    src = tmp_path / NAME
    scans, _ = phantom_slices(3, 64, seed=7, lesion=True)
    nifti = write_volume(src / f"{NAME}.nii.gz", (scans * 1000.0).astype(np.float32))
    dicom = _dicom_series(src / f"{NAME} CT")
    (src / f"{NAME} broken.nii.gz").write_bytes(b"\x1f\x8b not a scan, cut short")
    out = tmp_path / "exports"
    out.mkdir()
    try:
        viewer = make_napari_viewer(show=True)
        files = setup_viewer(viewer, RecentFiles(tmp_path / "config" / "recent.json"))
        docks, state = viewer.window.anomalens_docks, get_state(viewer)
        det_w, exp_w, cal_w = docks["Detector"], docks["Export"], docks["Calibration"]

        # open both as a user would: File → Open (the NIfTI), napari's reader (the DICOM folder)
        assert files.open_path(nifti)
        qtbot.waitUntil(lambda: not files.jobs.running, timeout=30_000)
        [dicom_layer] = viewer.open(str(dicom), plugin="anomalens")
        nifti_layer = viewer.layers[0]
        assert NAME in nifti_layer.name and NAME in dicom_layer.name  # napari names layers after the files

        suggested: list[str] = []

        def accept(kind: str, title: str, filters: str, name: str) -> Path:
            suggested.append(Path(name).name)
            return out / Path(name).name  # the suggested name, in another folder

        exp_w.choose_path = accept
        assert det_w.set_bundle(bundle)
        qtbot.waitUntil(lambda: not det_w.jobs.running, timeout=30_000)
        for layer, exports in ((nifti_layer, ("heatmap", "mask", "scores")),
                               (dicom_layer, ("heatmap", "mask", "seg", "scores"))):
            det_w.layer_combo.setCurrentText(layer.name)
            assert state.volume is layer.metadata["anomalens_volume"]
            assert det_w.score_volume()
            qtbot.waitUntil(lambda: not det_w.jobs.running, timeout=60_000)
            assert state.results is not None and state.results.scored.all()
            det_w.goto_slice(1)
            assert cal_w.mark_current_slice() == [1]
            assert not any(part in cal_w.study_label.text() for part in PARTS)
            # the canvas (what a snapshot exports) names no file: its caption, keys and marks
            texts = [str(o.text) for o in viewer.canvas.overlays.values() if getattr(o, "visible", False)
                     and str(getattr(o, "text", ""))]
            assert any("patchcore v1" in t for t in texts), texts
            assert not [t for t in texts for part in PARTS if part in t], texts
            for kind in exports:
                assert getattr(exp_w, f"export_{kind}")()
                qtbot.waitUntil(lambda: not exp_w.jobs.running, timeout=30_000)
                assert exp_w.last_written is not None and exp_w.last_written.parent == out.resolve(), \
                    exp_w.status.text()

        nifti_stem = f"{study_key(nifti_layer.metadata['anomalens_volume'])[:10]}_patchcore_v1"
        assert suggested == [f"{nifti_stem}_anomaly.nii.gz", f"{nifti_stem}_mask.nii.gz",
                             f"{nifti_stem}_slice_scores.csv", "AX_CT_patchcore_v1_anomaly.nii.gz",
                             "AX_CT_patchcore_v1_mask.nii.gz", "AX_CT_patchcore_v1_seg.dcm",
                             "AX_CT_patchcore_v1_slice_scores.csv"]
        assert cal_w.study_label.text().startswith("Series AX CT")  # a description, not a hash

        # errors that name the files: a corrupt scan opened by a relative path, an export into the series
        monkeypatch.chdir(tmp_path)
        shown = len(notification_manager.records)
        assert files.open_path(Path(NAME) / f"{NAME} broken.nii.gz")
        qtbot.waitUntil(lambda: not files.jobs.running, timeout=30_000)
        assert not exp_w.export_mask(dicom / "mask.nii.gz")
        told = " ".join(str(n.message) for n in notification_manager.records[shown:])
        assert f"{NAME} broken.nii.gz" in told and "source DICOM series" in told  # the user sees the names
        handler.flush()
    finally:
        logging.getLogger("anomalens").removeHandler(handler)
        handler.close()

    text = log_file.read_text(encoding="utf-8")
    assert text.count("exported ") == 7 and "<path:" in text, text
    assert "Opening <path:" in text and "source DICOM series" in text, text  # both errors logged, paths as tokens
    assert "<path:" in text.split("trained on MR scans")[0].splitlines()[-1], text  # the layer named in a warning
    written = [p for p in out.iterdir()] + [p for p in Path(bundle).parent.parent.glob("cases.sqlite*")]
    assert len(written) >= 8 and any(p.name.startswith("cases.sqlite") for p in written)
    assert not [p.name for p in written if any(part in p.name for part in PARTS)]
    leaks = _leaks([*written, *log_folder().glob(f"{LOG_NAME}*")])
    assert not leaks, leaks


def test_suggested_names_come_from_the_series_description_or_a_hash_never_the_layer(bundle: Path,
                                                                                     tmp_path: Path) -> None:
    from anomalens.app.naming import export_stem
    from anomalens.app.results import score_for_viewer
    from anomalens.app.widgets.calibration import study_label
    from anomalens.engine.caselib import study_key
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.volume import Volume

    det = load_bundle(bundle)
    slices = phantom_slices(2, 64, seed=3)[0]
    source = write_volume(tmp_path / NAME / f"{NAME}.nii.gz", (slices * 1000.0).astype(np.float32))
    described = Volume(slices, modality="MR", source=source, metadata={"SeriesDescription": " T2 FLAIR / ax\n"})
    plain = Volume(slices, modality="MR", source=source)
    symbols = Volume(slices, modality="MR", source=source, metadata={"SeriesDescription": "^^ //"})
    for vol, stem, label in ((described, "T2_FLAIR_ax_patchcore_v1", "Series T2 FLAIR / ax"),
                             (plain, f"{study_key(plain)[:10]}_patchcore_v1", f"Study {study_key(plain)[:10]}…"),
                             (symbols, f"{study_key(symbols)[:10]}_patchcore_v1", None)):
        res = score_for_viewer(det, vol, np.array([0]), layer_name=NAME)  # napari's name: the file's
        assert res.title.startswith(NAME)  # on screen the layer keeps its name...
        assert res.file_stem == stem == export_stem(vol, "patchcore v1")  # ...files are named without it
        if label is not None:
            assert study_label(vol, study_key(vol)) == label
    assert study_key(plain)[:2] == "g-" and study_key(plain)[2:10].isalnum()
