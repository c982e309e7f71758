"""File → Open from PACS… and the Export dock's "Send to PACS", with real Qt (Xvfb) against a real Orthanc.

Run under ``xvfb-run -a -s '-screen 0 1366x768x24'`` (never QT_QPA_PLATFORM=offscreen). The dialog is
driven as a user would: fields filled, Search, a study row selected, its series listed, Open; each request
runs in a worker while the test waits on the job runner. The session's Orthanc (``tests.pacs_fixture``)
gets two studies of its own here: a 4-slice MR series with a text report beside it, and a study holding
only a report. Faults use a private Orthanc that is stopped, a port where nothing listens, a server that
never answers, and a wrong password. The PACS cache goes to this test's own folder, so clearing it touches
nothing of other tests.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import pacs_fixture
from tests.pacs_fixture import PATIENT_NAME, PROFILE, write_mr_series, write_sr_only_study
from tests.phantoms import phantom_slices

pytestmark = [pytest.mark.gui, pytest.mark.pacs]

orthanc = pacs_fixture.orthanc  # the session's Orthanc, a fixture

STUDY = {"mr": "1.2.826.0.1.3680043.8.498.8101", "report": "1.2.826.0.1.3680043.8.498.8102",
         "private": "1.2.826.0.1.3680043.8.498.8103"}
PATIENT = "PID-APP-1"
DZ = 3.0
NAME_PARTS = ("Müller", "Jürgen")


@pytest.fixture(scope="module")
def studies(orthanc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The MR study (with a report series beside the images) and a report-only study, on the session's Orthanc."""
    import pydicom

    d = tmp_path_factory.mktemp("app-pacs")
    vol, _ = phantom_slices(4, 64, seed=5, lesion=True)
    series = f"{STUDY['mr']}.1"
    orthanc.upload(write_mr_series(d / "mr", vol, study_uid=STUDY["mr"], series_uid=series, frame_uid=f"{series}.9",
                                   patient_id=PATIENT, description="T2 app", study_date="20260210", dz=DZ))
    report = write_sr_only_study(d / "mr-report.dcm", study_uid=STUDY["mr"], patient_id=PATIENT, study_date="20260210")
    ds = pydicom.dcmread(report)
    ds.StudyDescription = "Kopf T2 app"  # as a scanner's report would carry it (Orthanc keeps the latest)
    ds.save_as(report, enforce_file_format=True)
    orthanc.upload([report,
                    write_sr_only_study(d / "report.dcm", study_uid=STUDY["report"], patient_id="PID-APP-2",
                                        study_date="20260211")])
    return {"series": series, "server": orthanc}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.fakes import calibrated_patchcore

    return calibrated_patchcore(modality="MR").save(tmp_path_factory.mktemp("data") / "models" / "pacs-patchcore")


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Series pulled by this test land in its own cache (clearing it must not touch other tests' pulls)."""
    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _window(make_napari_viewer: Any, tmp_path: Path) -> tuple[Any, Any]:
    from anomalens.app.desktop import setup_viewer
    from anomalens.app.recent import RecentFiles

    viewer = make_napari_viewer(show=True)
    return viewer, setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))


def _idle(qtbot: Any, runner: Any, timeout_s: float = 30) -> None:
    qtbot.waitUntil(lambda: not runner.running, timeout=int(timeout_s * 1000))


def _dialog(files: Any, qtbot: Any) -> Any:
    """File → Open from PACS…, as the menu entry does it; waits for the profile list."""
    assert files.open_pacs_action in files.file_menu.actions()
    files.open_pacs_action.trigger()
    dialog = files.pacs_dialog
    assert dialog is not None and dialog.isVisible()
    _idle(qtbot, dialog.jobs)
    return dialog


def _search(dialog: Any, qtbot: Any, *, patient: str = "", since: str = "", until: str = "",
            modality: str = "") -> list[Any]:
    dialog.patient_edit.setText(patient)
    dialog.since_edit.setText(since)
    dialog.until_edit.setText(until)
    dialog.modality_combo.setEditText(modality)
    assert dialog.search_button.isEnabled()
    dialog.search_button.click()
    _idle(qtbot, dialog.jobs)
    return dialog.studies


def _cells(table: Any) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount())] for r in range(table.rowCount())]


def _select(dialog: Any, qtbot: Any, study_uid: str) -> None:
    assert dialog.select_study(study_uid)
    _idle(qtbot, dialog.jobs)
    qtbot.waitUntil(lambda: dialog._series_of == study_uid, timeout=30_000)


def _messages(start: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[start:]]


def _n_messages() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def _open_mr(files: Any, qtbot: Any) -> Any:
    """Search by patient ID and date, select the MR study, open its image series; returns the new layer."""
    dialog = _dialog(files, qtbot)
    found = _search(dialog, qtbot, patient=PATIENT, since="2026-02-01", until="2026-02-28", modality="MR")
    assert [s.uid for s in found] == [STUDY["mr"]]
    _select(dialog, qtbot, STUDY["mr"])
    assert dialog.open_button.isEnabled()
    before = len(files.viewer.layers)
    dialog.open_button.click()
    assert not dialog.isVisible()  # the open goes on in the status bar, with its Cancel button
    _idle(qtbot, files.jobs, 60)
    assert len(files.viewer.layers) == before + 1, files.status.text()
    return files.viewer.layers[-1]


def test_a_series_opens_from_the_dialog_in_millimetres(make_napari_viewer: Any, qtbot: Any, studies: dict,
                                                       tmp_path: Path, own_cache: Path) -> None:
    from anomalens.app.reader import ROLE_KEY, VOLUME_KEY
    from anomalens.engine.pacs.cache import cache_dir

    _viewer, files = _window(make_napari_viewer, tmp_path)
    dialog = _dialog(files, qtbot)
    assert dialog.profile == PROFILE and dialog.profile_combo.currentText() == f"{PROFILE} (default)"
    assert studies["server"].dicomweb in dialog.profile_note.text()

    # both of this module's studies, newest first; no patient name anywhere in the tables
    found = _search(dialog, qtbot, since="2026-02-01", until="2026-02-28")
    assert [s.uid for s in found] == [STUDY["report"], STUDY["mr"]]
    rows = _cells(dialog.study_table)
    assert [r[0] for r in rows] == ["2026-02-11", "2026-02-10"]
    assert rows[1][1] == "Kopf T2 app" and "MR" in rows[1][2] and rows[1][4] == "5"  # 4 images and the report
    assert "2 studies" in dialog.status.text()

    # a study holding only a report: no series to open, said in the dialog and as a message
    start = _n_messages()
    _select(dialog, qtbot, STUDY["report"])
    assert dialog.series == [] and not dialog.open_button.isEnabled()
    assert "no image series" in dialog.series_note.text() and "only SR" in dialog.series_note.text()
    assert any("no image series" in m for m in _messages(start))

    # the MR study: its image series only (the report beside it is not listed), chosen as the only one
    _select(dialog, qtbot, STUDY["mr"])
    assert [s.uid for s in dialog.series] == [studies["series"]]
    assert _cells(dialog.series_table) == [["2", "MR", "T2 app", "4"]]
    assert dialog.open_button.isEnabled()
    qtbot.wait(50)  # the layout settles once the finished job's progress bar is hidden
    shot = dialog.grab().toImage()  # the dialog draws at its size on a 1366×768 screen
    assert shot.width() <= 1366 and shot.height() <= 768 and shot.width() >= 800
    shot.save(str(tmp_path / "pacs_dialog.png"))
    texts = " ".join(" ".join(r) for r in _cells(dialog.study_table) + _cells(dialog.series_table))
    texts += dialog.status.text() + dialog.series_note.text() + dialog.profile_note.text()
    assert not any(part in texts for part in (*NAME_PARTS, PATIENT_NAME))

    # a narrower search (patient ID, dates, modality), then Open: the scan as if read from disk
    layer = _open_mr(files, qtbot)
    volume = layer.metadata[VOLUME_KEY]
    assert layer.metadata[ROLE_KEY] == "scan" and layer.name == "T2 app"
    assert np.allclose(np.abs(layer.scale), volume.spacing_zyx) and np.allclose(volume.spacing_zyx, (DZ, 1.0, 1.0))
    assert volume.shape == (4, 64, 64)
    assert volume.metadata["pacs"] == {"profile": PROFILE, "study_uid": STUDY["mr"], "series_uid": studies["series"]}
    assert "done" in files.status.text()

    # the series stays in this user's cache until "Clear PACS cache…"
    folder = cache_dir() / STUDY["mr"] / studies["series"]
    assert folder.is_relative_to(own_cache) and len(list(folder.glob("*.dcm"))) == 4
    dialog = _dialog(files, qtbot)  # shown again: the last search is still listed
    assert [s.uid for s in dialog.studies] == [STUDY["mr"]]
    asked: list[str] = []
    dialog.confirm = lambda title, question: asked.append(question) or True
    assert dialog.clear_cache()
    _idle(qtbot, dialog.jobs)
    assert "T2 app" in asked[0]  # warned: the shown scan was read from the cache
    assert not folder.exists() and "1 series" in dialog.status.text()


def test_send_to_pacs_stores_a_seg_that_qido_finds(make_napari_viewer: Any, qtbot: Any, studies: dict,
                                                   bundle: Path, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    from anomalens.app.state import get_state
    from anomalens.engine.pacs.client import PacsClient

    viewer, files = _window(make_napari_viewer, tmp_path)
    det_w, exp_w = viewer.window.anomalens_docks["Detector"], viewer.window.anomalens_docks["Export"]
    _open_mr(files, qtbot)
    assert not exp_w.pacs_button.isEnabled() and "score" in exp_w.pacs_button.toolTip()
    assert det_w.set_bundle(bundle)
    _idle(qtbot, det_w.jobs)
    assert det_w.score_volume()
    _idle(qtbot, det_w.jobs, 60)
    res = get_state(viewer).results
    assert res is not None and res.calibrated and res.scored.all()
    files._sync_export()
    assert exp_w.pacs_button.isEnabled() and f"PACS {PROFILE!r} (where it came from)" in exp_w.pacs_button.toolTip()
    assert files.export_actions["pacs"].isEnabled()

    asked: list[str] = []
    exp_w.confirm = lambda title, question: asked.append(question) or False
    assert not exp_w.send_to_pacs()  # the user said no: nothing leaves
    assert asked and PROFILE in asked[0]
    exp_w.confirm = lambda title, question: True
    start = _n_messages()
    assert exp_w.send_to_pacs()
    _idle(qtbot, exp_w.jobs, 90)
    report = exp_w.last_pushed
    assert report is not None, exp_w.status.text()
    assert report.status == {"seg": "stored", "pmap": "stored", "sr": "stored"}
    assert any(f"Sent to PACS {PROFILE!r}" in m and "mask (DICOM SEG) stored" in m for m in _messages(start))

    with PacsClient.open(PROFILE) as client:  # QIDO finds the SEG in the scan's study
        listed = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0]
                  for s in client.search_series(STUDY["mr"], fields=("Modality",))}
        seg_uids = report.uids["seg"]
        seg = hd.seg.Segmentation.from_dataset(client.retrieve_instance(STUDY["mr"], seg_uids["series_uid"],
                                                                        seg_uids["sop_uid"]))
    assert listed[seg_uids["series_uid"]] == "SEG"
    assert studies["server"].instances_with(seg_uids["sop_uid"]) == 1
    # segment 1 is the mask as shown, voxel for voxel on the source images (z order: the series' positions)
    assert seg.SegmentSequence[0].SegmentLabel.startswith("Anomaly (AnomaLens")
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in Path(res.volume.source).glob("*.dcm")),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ds.SOPInstanceUID for ds in sources],
                                               segment_numbers=[1], ignore_spatial_locations=True,
                                               assert_missing_frames_are_empty=True)[..., 0].astype(bool)
    assert pixels.any() and np.array_equal(pixels, exp_w.current_mask().astype(bool))

    assert exp_w.send_to_pacs()  # the same result again: nothing new on the PACS
    _idle(qtbot, exp_w.jobs, 90)
    assert set(exp_w.last_pushed.status.values()) == {"already on the PACS"}
    assert "Already on PACS" in exp_w.status.text()
    assert studies["server"].instances_with(report.uids["seg"]["sop_uid"]) == 1


class _Silent:
    """A port that accepts connections and never answers (a hung PACS)."""

    def __enter__(self) -> int:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def test_a_stopped_unreachable_or_hung_pacs_is_a_message(make_napari_viewer: Any, qtbot: Any, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from qtpy.QtCore import QTimer

    from anomalens.app.pacs import push_target
    from anomalens.engine.pacs.profiles import make_profile, save_profile
    from anomalens.engine.volume import Volume
    from tests.pacs_fixture import free_port, start_orthanc

    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))  # this test's own profiles
    dicom = Volume(np.zeros((2, 8, 8), np.float32), metadata={"format": "DICOM"})
    assert push_target(dicom).profile is None and "no PACS is configured" in push_target(dicom).why
    assert "DICOM" in push_target(Volume(np.zeros((2, 8, 8), np.float32))).why

    server = start_orthanc(tmp_path / "private")
    try:
        vol, _ = phantom_slices(3, 64, seed=8)
        uid = f"{STUDY['private']}.1"
        server.upload(write_mr_series(tmp_path / "private-mr", vol, study_uid=STUDY["private"], series_uid=uid,
                                      frame_uid=f"{uid}.9", patient_id="PID-P", description="T2 privat",
                                      study_date="20260220"))
        monkeypatch.setenv("ANOMALENS_PACS_STOPPED_PASSWORD", server.password)
        save_profile(make_profile("stopped", server.dicomweb, user=server.user, timeout=5), default=True)
        save_profile(make_profile("down", f"http://127.0.0.1:{free_port()}/dicom-web", timeout=5))
        assert push_target(dicom).profile == "stopped"

        viewer, files = _window(make_napari_viewer, tmp_path)
        dialog = _dialog(files, qtbot)
        assert [dialog.profile_combo.itemText(i) for i in range(dialog.profile_combo.count())] == \
            ["stopped (default)", "down"]
        assert [s.uid for s in _search(dialog, qtbot)] == [STUDY["private"]]
        _select(dialog, qtbot, STUDY["private"])
        assert dialog.open_button.isEnabled()

        monkeypatch.setenv("ANOMALENS_PACS_STOPPED_PASSWORD", "not-the-password")  # HTTP 401
        start = _n_messages()
        assert _search(dialog, qtbot) == []
        assert any("HTTP 401" in m and "ANOMALENS_PACS_STOPPED_PASSWORD" in m for m in _messages(start))
        assert "not-the-password" not in " ".join(_messages(start))
        monkeypatch.setenv("ANOMALENS_PACS_STOPPED_PASSWORD", server.password)
        _search(dialog, qtbot)
        _select(dialog, qtbot, STUDY["private"])
    finally:
        server.stop()  # the PACS goes away between listing and opening

    start = _n_messages()
    assert dialog.open_selected()
    _idle(qtbot, files.jobs, 30)
    assert len(viewer.layers) == 0 and "failed" in files.status.text()
    assert any("cannot reach the PACS 'stopped'" in m for m in _messages(start)), _messages(start)

    dialog = _dialog(files, qtbot)
    dialog.profile_combo.setCurrentIndex(1)  # "down": nothing listens there
    assert dialog.profile == "down" and dialog.studies == []
    start = _n_messages()
    assert _search(dialog, qtbot) == []
    assert any("cannot reach the PACS 'down'" in m and "connection refused" in m for m in _messages(start))

    # a PACS that never answers: the window keeps handling events while the search waits, then says so
    with _Silent() as port:
        save_profile(make_profile("hung", f"http://127.0.0.1:{port}/dicom-web", timeout=2.0))
        dialog.load_profiles()
        _idle(qtbot, dialog.jobs)
        dialog.profile_combo.setCurrentIndex([dialog.profile_combo.itemText(i)
                                              for i in range(dialog.profile_combo.count())].index("hung"))
        ticks: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(10)
        start = _n_messages()
        dialog.search_button.click()
        assert dialog.jobs.running and not dialog.search_button.isEnabled()
        _idle(qtbot, dialog.jobs, 30)
        timer.stop()
    assert any("did not answer within 2 s" in m for m in _messages(start)), _messages(start)
    gaps = np.diff(ticks)
    assert len(ticks) > 20 and gaps.max() < 1.0, (len(ticks), float(gaps.max()))
    assert dialog.search_button.isEnabled() and dialog.isVisible()
