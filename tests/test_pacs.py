"""PACS over DICOMweb against a real Orthanc: find, pull (resumable), score with --push, batch, and every fault.

The Orthanc tests share one server (``tests.pacs_fixture.orthanc``, about a second to start) and skip with
the reason where it is not installed; profile, query and SPEC checks and the faults that need no PACS
(server down, a server that never answers, HTTP 403) run everywhere on loopback fakes. The model is the
tiny calibrated PatchCore of ``tests.fakes``; series are 3–6 slices of 64×64 phantoms.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.cli.main import main
from anomalens.engine.errors import Cancelled, ConfigError
from anomalens.engine.pacs.errors import SeriesChangedError, StowRejectedError
from tests import pacs_fixture
from tests.pacs_fixture import PROFILE, REJECT_ID, write_mr_series, write_sr_only_study
from tests.phantoms import phantom_slices

orthanc = pacs_fixture.orthanc  # the session's Orthanc, a fixture

NAME_PARTS = ("Müller", "Jürgen", "M\\u00fcller")


def run_cli(capsys, argv: list[str], code: int = 0) -> tuple[dict | None, str]:
    rc = main(argv)
    out = capsys.readouterr()
    assert rc == code, out.err
    data = json.loads(out.out) if "--json" in argv and out.out.strip() else None
    return data, out.err


@pytest.fixture(autouse=True)
def quiet_progress(monkeypatch):
    """No progress lines on stderr: the error checks below read it."""
    monkeypatch.setenv("ANOMALENS_PROGRESS", "0")


def one_line_error(capsys, argv: list[str]) -> str:
    """The command fails with exit status 2 and one error line (warnings about the scan may come before it)."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("anomalens: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert all(ln.startswith("anomalens: warning: ") for ln in err[:-1]), err
    return errors[0]


def content_items(ds, found=None) -> list:
    """Every content item of an SR, depth first."""
    found = [] if found is None else found
    for item in getattr(ds, "ContentSequence", []):
        found.append(item)
        content_items(item, found)
    return found


def no_names(text: str) -> None:
    for part in NAME_PARTS:
        assert part not in text


# ============================================================ profiles, queries, SPECs (no server needed)


@pytest.fixture
def own_config(tmp_path, monkeypatch):
    """A config folder of this test's own, and no PACS secret from the session's environment."""
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    for key in ("ANOMALENS_PACS_PASSWORD", "ANOMALENS_PACS_SITE_PASSWORD", "ANOMALENS_PACS_ORTHANC_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path / "config"


@pytest.fixture
def no_keyring():
    """The keyring's "fail" backend, as on a server without a desktop session."""
    import keyring
    from keyring.backends import fail

    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(before)


def test_profiles_are_saved_without_secrets_and_listed(capsys, own_config, monkeypatch, tmp_path, no_keyring) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    _, err = run_cli(capsys, ["pacs", "add", "site", "--url", "https://pacs.example.org/dicom-web/", "--user", "reader",
                              "--ca-bundle", str(bundle), "--default"])
    assert "no password yet" in err and "ANOMALENS_PACS_SITE_PASSWORD" in err
    run_cli(capsys, ["pacs", "add", "cloud", "--url", "https://store.example.com/v1/dicomWeb", "--token"])
    rows, _ = run_cli(capsys, ["pacs", "list", "--json"])
    by = {r["name"]: r for r in rows}
    assert by["site"]["default"] and by["site"]["url"] == "https://pacs.example.org/dicom-web"
    assert by["site"]["auth"] == "basic" and by["site"]["secret"] == "missing"
    assert by["site"]["ca_bundle"] == str(bundle.resolve()) and not by["site"]["insecure"]
    assert by["cloud"]["auth"] == "bearer" and not by["cloud"]["default"]
    monkeypatch.setenv("ANOMALENS_PACS_SITE_PASSWORD", "s3cret-value")
    rows, _ = run_cli(capsys, ["pacs", "list", "--json"])
    assert {r["name"]: r["secret"] for r in rows}["site"] == "ANOMALENS_PACS_SITE_PASSWORD"
    stored = (own_config / "pacs.json").read_text()
    assert "s3cret-value" not in stored and "password" not in stored.lower()
    _, err = run_cli(capsys, ["pacs", "add", "lab", "--url", "http://10.0.0.5:8042/dicom-web", "--insecure"])
    assert "plain http" in err and "not be verified" in err
    run_cli(capsys, ["pacs", "remove", "cloud"])
    rows, _ = run_cli(capsys, ["pacs", "list", "--json"])
    assert sorted(r["name"] for r in rows) == ["lab", "site"]


def test_bad_profiles_are_refused_in_one_line(capsys, own_config) -> None:
    assert "must not hold a user name or password" in one_line_error(
        capsys, ["pacs", "add", "x", "--url", "https://u:pw@pacs.example.org/dicom-web"])
    assert "bad PACS name" in one_line_error(capsys, ["pacs", "add", "1x", "--url", "https://pacs.example.org"])
    assert "https://" in one_line_error(capsys, ["pacs", "add", "x", "--url", "ftp://pacs.example.org"])
    assert "no PACS is configured" in one_line_error(capsys, ["pacs", "find"])
    assert "no PACS named 'nope'" in one_line_error(capsys, ["pacs", "test", "--pacs", "nope"])
    # There is no option that takes a password on the command line.
    with pytest.raises(SystemExit):
        main(["pacs", "add", "x", "--url", "https://pacs.example.org", "--password", "pw"])
    capsys.readouterr()


def test_a_missing_keyring_is_explained(capsys, own_config, monkeypatch, no_keyring) -> None:
    from anomalens.engine.pacs.profiles import get_profile, resolve_secret

    run_cli(capsys, ["pacs", "add", "site", "--url", "https://pacs.example.org/dicom-web", "--user", "reader"])
    with pytest.raises(ConfigError, match=r"ANOMALENS_PACS_SITE_PASSWORD.*keyring is not available"):
        resolve_secret(get_profile("site"))
    import io

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stdin", Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "typed-secret")
    msg = one_line_error(capsys, ["pacs", "login", "site"])
    assert "could not store the password in the OS keyring" in msg and "ANOMALENS_PACS_SITE_PASSWORD" in msg
    assert "typed-secret" not in msg
    # piped, as from a secrets manager: one line of stdin (getpass printed Python warnings and read nothing)
    monkeypatch.setattr("getpass.getpass", lambda prompt="": pytest.fail("getpass on a pipe"))
    monkeypatch.setattr("sys.stdin", io.StringIO("piped-secret\n"))
    msg = one_line_error(capsys, ["pacs", "login", "site"])
    assert "could not store the password in the OS keyring" in msg and "piped-secret" not in msg
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert "no password given" in one_line_error(capsys, ["pacs", "login", "site"])
    monkeypatch.setenv("ANOMALENS_PACS_PASSWORD", "from-env")  # the shared variable, when no own one is set
    assert resolve_secret(get_profile("site")) == "from-env"


def test_queries_specs_and_uids_are_checked() -> None:
    from anomalens.engine.pacs.push import stable_uid
    from anomalens.engine.pacs.query import check_uid, parse_query
    from anomalens.engine.pacs.spec import PacsSpec, parse_pacs_spec

    q = parse_query('modality=mr since=2026-01-01 until=20260301 description="T2*" limit=5')
    assert q.filters() == {"ModalitiesInStudy": "MR", "StudyDate": "20260101-20260301"} and q.limit == 5
    for bad in ("", "modality", "colour=red", "since=yesterday", "since=2026-02-01 until=2026-01-01", "limit=x"):
        with pytest.raises(ConfigError):
            parse_query(bad)
    assert parse_pacs_spec("pacs:1.2.3") == PacsSpec(None, "1.2.3", None)
    assert parse_pacs_spec("pacs:main:1.2.3/4.5") == PacsSpec("main", "1.2.3", "4.5")
    assert PacsSpec("main", "1.2.3", "4.5").text() == "pacs:main:1.2.3/4.5"
    for bad in ("pacs:", "pacs:1.2/../../etc", "pacs:9x:1.2", "pacs:1.2.a", "pacs:main:"):
        with pytest.raises(ConfigError):
            parse_pacs_spec(bad)
    with pytest.raises(ConfigError):
        check_uid("1." + "2" * 70)
    a, b = stable_uid("fp", "1.2.3", "seg"), stable_uid("fp", "1.2.3", "seg")
    assert a == b and a.startswith("2.25.") and len(a) <= 64 and a != stable_uid("fp2", "1.2.3", "seg")


def test_a_stow_failure_answer_is_a_rejection() -> None:
    from pydicom.dataset import Dataset

    from anomalens.engine.pacs.profiles import PacsProfile
    from anomalens.engine.pacs.push import store_datasets

    failed = Dataset()
    failed.ReferencedSOPInstanceUID, failed.FailureReason = "2.25.1", 0xA700
    answer = Dataset()
    answer.FailedSOPSequence = [failed]

    class Refusing:
        profile = PacsProfile(name="fake", url="http://127.0.0.1:9/dicom-web")

        def search_instances(self, *a, **k):
            return []

        def store(self, datasets, study_uid=None):
            return answer

    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2", "1.2.3", "2.25.1"
    with pytest.raises(StowRejectedError, match="0xA700"):
        store_datasets(Refusing(), {"seg": ds})


# ============================================================ faults on loopback fakes


@contextlib.contextmanager
def silent_server():
    """Accepts connections and never answers (an overloaded or hung PACS)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    srv.settimeout(0.05)
    stop, conns = threading.Event(), []

    def loop() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        t.join(5)
        for c in conns:
            c.close()
        srv.close()


@contextlib.contextmanager
def _serving(handler: type):
    """A loopback HTTP server answering with ``handler`` in a thread; yields its port."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def busy_once_server(status: int = 503):
    """Answers the first request with ``status`` (busy), every later one with an empty QIDO result."""
    hits: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = status if not hits else 200
            hits.append(code)
            body = b"[]" if code == 200 else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with _serving(Handler) as port:
        yield port, hits


def test_a_hung_server_is_asked_once_and_a_busy_one_twice() -> None:
    """--timeout is what the user waits (dicomweb-client's retry sent a timed-out request again: 10 s for 5)."""
    import time

    from anomalens.engine.pacs.client import PacsClient
    from anomalens.engine.pacs.errors import PacsTimeoutError
    from anomalens.engine.pacs.profiles import PacsProfile

    with silent_server() as port:
        client = PacsClient(PacsProfile(name="hung", url=f"http://127.0.0.1:{port}/dicom-web", timeout=0.5), None)
        t0 = time.monotonic()
        with pytest.raises(PacsTimeoutError, match=r"within 0\.5 s"):
            client.check()
        assert time.monotonic() - t0 < 0.95
    for code in (503, 429):
        with busy_once_server(code) as (port, hits):
            client = PacsClient(PacsProfile(name="busy", url=f"http://127.0.0.1:{port}/dicom-web"), None)
            assert client.search_studies({}, ["StudyInstanceUID"]) == []
            assert hits == [code, 200]


@contextlib.contextmanager
def forbidding_server():
    """Answers every request with HTTP 403 (the user lacks the right)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    with _serving(Handler) as port:
        yield port


def test_server_down_timeout_and_403_are_one_line_errors(capsys, own_config, monkeypatch) -> None:
    from tests.pacs_fixture import free_port

    monkeypatch.setenv("ANOMALENS_PACS_PASSWORD", "pw")
    run_cli(capsys, ["pacs", "add", "down", "--url", f"http://127.0.0.1:{free_port()}/dicom-web", "--user", "u"])
    msg = one_line_error(capsys, ["pacs", "find", "--pacs", "down"])
    assert "cannot reach the PACS 'down'" in msg and "connection refused" in msg
    with silent_server() as port:
        run_cli(capsys, ["pacs", "add", "slow", "--url", f"http://127.0.0.1:{port}/dicom-web", "--timeout", "0.5"])
        assert "did not answer within 0.5 s" in one_line_error(capsys, ["pacs", "find", "--pacs", "slow"])
        assert "did not answer" in one_line_error(capsys, ["pacs", "pull", "1.2.3", "--pacs", "slow"])
    with forbidding_server() as port:
        run_cli(capsys, ["pacs", "add", "strict", "--url", f"http://127.0.0.1:{port}/dicom-web", "--user", "u"])
        assert "HTTP 403" in one_line_error(capsys, ["pacs", "test", "--pacs", "strict"])


def test_a_server_that_stops_mid_answer_did_not_answer_in_time() -> None:
    """A streamed pull's read timeout reaches us as a ConnectionError: it reads as the timeout it is."""
    import requests
    from urllib3.exceptions import ReadTimeoutError

    from anomalens.engine.pacs.client import PacsClient
    from anomalens.engine.pacs.errors import PacsTimeoutError, PacsUnreachableError
    from anomalens.engine.pacs.profiles import PacsProfile

    client = PacsClient(PacsProfile(name="slow", url="http://127.0.0.1:1/dicom-web", timeout=5), None)
    stalled = requests.exceptions.ConnectionError(ReadTimeoutError(None, "/x", "Read timed out."))
    err = client.translate(stalled, "retrieving series 1.2.3")
    assert isinstance(err, PacsTimeoutError)
    assert "did not answer within 5 s while retrieving series 1.2.3" in str(err)
    refused = client.translate(requests.exceptions.ConnectionError("[Errno 111] Connection refused"), "finding")
    assert isinstance(refused, PacsUnreachableError) and "connection refused" in str(refused)


# ============================================================ against Orthanc


STUDY_FOR = {"main": "1.2.826.0.1.3680043.8.498.7001", "gappy": "1.2.826.0.1.3680043.8.498.7002",
             "reject": "1.2.826.0.1.3680043.8.498.7003", "changing": "1.2.826.0.1.3680043.8.498.7004",
             "partial": "1.2.826.0.1.3680043.8.498.7005", "report": "1.2.826.0.1.3680043.8.498.7006",
             **{f"batch{i}": f"1.2.826.0.1.3680043.8.498.71{i}" for i in range(3)}}


@pytest.fixture(scope="session")
def pacs(orthanc, tmp_path_factory):
    """Orthanc loaded with the test studies, and a calibrated model bundle."""
    from tests.fakes import calibrated_patchcore

    d = tmp_path_factory.mktemp("pacs-data")
    model = calibrated_patchcore(modality="MR").save(d / "model")
    plan = {  # name: (slices, seed, date, patient id, description, missing slices)
        "main": (4, 5, "20260115", "PID-1", "T2 tête ü", ()),
        "gappy": (6, 6, "20260116", "PID-2", "T2 mit Lücke", (2,)),
        "reject": (3, 7, "20260117", REJECT_ID, "T2 abgelehnt", ()),
        "changing": (3, 8, "20260118", "PID-4", "T2 wächst", ()),
        "partial": (5, 9, "20260119", "PID-5", "T2 halb", ()),
        **{f"batch{i}": (3, 20 + i, f"2026030{i + 1}", f"PID-B{i}", f"T2 Serie {i}", ()) for i in range(3)},
    }
    series = {}
    for name, (n, seed, day, pid, desc, skip) in plan.items():
        vol, _ = phantom_slices(n, 64, seed=seed, lesion=True)
        uid = f"{STUDY_FOR[name]}.1"
        paths = write_mr_series(d / name, vol, study_uid=STUDY_FOR[name], series_uid=uid, frame_uid=f"{uid}.9",
                                patient_id=pid, description=desc, study_date=day, skip=skip)
        if name != "changing":
            orthanc.upload(paths)
        else:  # one image arrives later, while the series is pulled
            orthanc.upload(paths[:-1])
        series[name] = {"uid": uid, "paths": paths}
    orthanc.upload([write_sr_only_study(d / "report.dcm", study_uid=STUDY_FOR["report"], patient_id="PID-6",
                                        study_date="20250601")])
    forget_cached_studies()  # an earlier run's pulls of these study UIDs
    yield {"dir": d, "model": Path(model), "study": STUDY_FOR, "series": series, "server": orthanc}
    forget_cached_studies()


def forget_cached_studies() -> None:
    """Remove this module's studies from the PACS cache (the test cache folder outlives the session)."""
    import shutil

    from anomalens.engine.pacs.cache import cache_dir

    for uid in STUDY_FOR.values():
        shutil.rmtree(cache_dir() / uid, ignore_errors=True)


def lesion_mask_file(out: Path) -> Path:
    return out / "mask_scr.nii.gz" if (out / "mask_scr.nii.gz").exists() else out / "mask.nii.gz"


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.pacs
def test_find_lists_studies_with_series_and_no_patient_names(capsys, pacs) -> None:
    data, err = run_cli(capsys, ["pacs", "find", "--modality", "MR", "--since", "2026-01-01", "--json"])
    by = {s["uid"]: s for s in data["studies"]}
    main_study = by[pacs["study"]["main"]]
    assert main_study["date"] == "20260115" and main_study["modalities"] == ["MR"]
    assert main_study["description"] == "Kopf T2 tête ü"
    assert [(s["uid"], s["modality"], s["description"], s["n_instances"]) for s in main_study["series"]] == \
        [(pacs["series"]["main"]["uid"], "MR", "T2 tête ü", 4)]
    assert pacs["study"]["report"] not in by  # 2025, and no MR
    dates = [s["date"] for s in data["studies"]]
    assert dates == sorted(dates, reverse=True)
    rc = main(["pacs", "find", "--patient-id", "PID-1"])
    text = capsys.readouterr().out
    assert rc == 0 and pacs["study"]["main"] in text and "T2 tête ü" in text and pacs["study"]["gappy"] not in text
    no_names(json.dumps(data) + err + text)


@pytest.mark.pacs
def test_score_and_push_store_seg_pmap_and_sr_once_on_the_source(capsys, caplog, pacs, tmp_path) -> None:
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    from anomalens.engine.pacs.cache import cache_dir
    from anomalens.engine.pacs.client import PacsClient

    caplog.set_level(logging.DEBUG)
    study, series = pacs["study"]["main"], pacs["series"]["main"]["uid"]
    out = tmp_path / "out"
    argv = ["score", "--model", str(pacs["model"]), f"pacs:{study}", "--out", str(out), "--push", "--json", "-v"]
    first, err = run_cli(capsys, argv)
    assert first["unit"] == "normal-quantile" and first["flagged_slices"]
    assert first["pushed"]["pacs"] == PROFILE and set(first["pushed"]["status"]) == {"seg", "pmap", "sr"}
    uids = first["pushed"]["objects"]
    second, _ = run_cli(capsys, argv)  # the same result again: nothing new on the PACS
    assert set(second["pushed"]["status"].values()) == {"already on the PACS"} and second["pushed"]["objects"] == uids
    server = pacs["server"]
    for role in ("seg", "pmap", "sr"):
        assert server.instances_with(uids[role]["sop_uid"]) == 1, role

    with PacsClient.open(PROFILE) as client:  # QIDO finds them, in the source study
        listed = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0]
                  for s in client.search_series(study, fields=("Modality",))}
        assert listed[uids["seg"]["series_uid"]] == "SEG" and listed[uids["sr"]["series_uid"]] == "SR"
        assert uids["pmap"]["series_uid"] in listed
        back = {role: client.retrieve_instance(study, uids[role]["series_uid"], uids[role]["sop_uid"])
                for role in ("seg", "pmap", "sr")}

    src_folder = cache_dir() / study / series
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in src_folder.glob("*.dcm")),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    frame_of_reference = sources[0].FrameOfReferenceUID
    seg = hd.seg.Segmentation.from_dataset(back["seg"])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert seg.FrameOfReferenceUID == frame_of_reference == back["pmap"].FrameOfReferenceUID
    assert back["pmap"].ReferencedSeriesSequence[0].SeriesInstanceUID == series
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[s.SOPInstanceUID for s in sources],
                                               segment_numbers=[1], ignore_spatial_locations=True,
                                               assert_missing_frames_are_empty=True)[..., 0].astype(bool)
    local = sitk.GetArrayFromImage(sitk.ReadImage(str(lesion_mask_file(out)))).astype(bool)
    assert local.any() and np.array_equal(pixels, local)  # voxel for voxel
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heatmap.nii.gz")))
    pm = back["pmap"]
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.LUTLabel == "ANOMALY" and mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in pm.PerFrameFunctionalGroupsSequence]
    np.testing.assert_allclose(pm.pixel_array[np.argsort(z)], heat, rtol=1e-6)  # frames come in highdicom's order
    sr = back["sr"]
    evidence = {i.SeriesInstanceUID for i in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert {series, uids["seg"]["series_uid"], uids["pmap"]["series_uid"]} <= evidence
    items = content_items(sr)
    volume = [i for i in items if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "118565006"]
    assert len(volume) == 1 and volume[0].MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "ml"
    assert float(volume[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(first["lesion_volume_ml"], abs=1e-3)
    scores = [i for i in items if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "SLICESCORE"]
    assert len(scores) == len(first["flagged_slices"])
    texts = " ".join(str(i.get("TextValue", "")) for i in items)
    assert first["model"]["fingerprint"] in texts and first["model"]["calibration_created"] in texts

    for role, ds in back.items():  # every object written passes dciodvfy
        path = tmp_path / f"{role}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], role
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["pmap.dcm", "seg.dcm", "sr.dcm"]

    # Patient names never in logs, messages or cache paths.
    no_names(caplog.text + err + json.dumps(first))
    assert caplog.records, "nothing was logged: the check above would prove nothing"
    for p in cache_dir().rglob("*"):
        no_names(str(p))


@pytest.mark.pacs
def test_wrong_password_and_unknown_study_are_one_line(capsys, pacs, monkeypatch) -> None:
    monkeypatch.setenv("ANOMALENS_PACS_ORTHANC_PASSWORD", "wrong")
    msg = one_line_error(capsys, ["pacs", "find"])
    assert "HTTP 401" in msg and "ANOMALENS_PACS_ORTHANC_PASSWORD" in msg and "wrong" not in msg.split("401")[1]
    monkeypatch.undo()
    assert "no study 1.2.3.4.5" in one_line_error(capsys, ["pacs", "pull", "1.2.3.4.5"])


@pytest.mark.pacs
def test_a_study_with_only_a_report_is_refused(capsys, pacs, tmp_path) -> None:
    study = pacs["study"]["report"]
    msg = one_line_error(capsys, ["score", "--model", str(pacs["model"]), f"pacs:{study}", "--out", str(tmp_path)])
    assert f"study {study} holds no image series to score (only SR)" in msg
    assert "no image series" in one_line_error(capsys, ["pacs", "pull", study])


@pytest.mark.pacs
def test_an_interrupted_pull_resumes_where_it_stopped(capsys, pacs) -> None:
    from anomalens.engine.pacs.cache import cached_instances, pull_series, series_folder
    from anomalens.engine.pacs.client import PacsClient
    from anomalens.engine.progress import CancelToken

    study, series = pacs["study"]["partial"], pacs["series"]["partial"]["uid"]
    token = CancelToken()
    seen = []

    def progress(fraction: float, message: str) -> None:
        seen.append(message)
        if message.startswith("received 2/"):
            token.cancel()

    with PacsClient.open(PROFILE) as client, pytest.raises(Cancelled):
        pull_series(client, study, series, progress=progress, cancel=token)
    folder = series_folder(study, series)
    assert len(cached_instances(folder)) == 2 and not list(folder.glob(".*.tmp"))
    no_names(" ".join(seen))
    data, _ = run_cli(capsys, ["pacs", "pull", study, "--series", series, "--json"])
    row = data["series"][0]
    assert (row["n_instances"], row["downloaded"], row["reused"]) == (5, 3, 2)
    assert len(cached_instances(folder)) == 5 and (folder / ".series.json").is_file()


@pytest.mark.pacs
def test_a_pacs_stopped_mid_pull_is_one_line_and_the_pull_resumes_after_restart(capsys, own_config, monkeypatch,
                                                                               tmp_path) -> None:
    """Orthanc killed while a series is being pulled: a clear error, what arrived is kept, nothing half-written."""
    from anomalens.engine.pacs.cache import cached_instances, pull_series, series_folder
    from anomalens.engine.pacs.client import PacsClient
    from anomalens.engine.pacs.errors import PacsError
    from anomalens.engine.pacs.profiles import make_profile, save_profile
    from anomalens.engine.progress import CancelToken

    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(tmp_path / "cache"))  # this test's own pulls
    study, series = "1.2.826.0.1.3680043.8.498.7100", "1.2.826.0.1.3680043.8.498.7100.1"
    server = pacs_fixture.start_orthanc(tmp_path / "private")
    try:
        vol, _ = phantom_slices(5, 64, seed=9)
        server.upload(write_mr_series(tmp_path / "mr", vol, study_uid=study, series_uid=series, frame_uid=f"{series}.9",
                                      patient_id="PID-STOP", description="T2 stop", study_date="20260301"))
        monkeypatch.setenv("ANOMALENS_PACS_PRIVATE_PASSWORD", server.password)
        save_profile(make_profile("private", server.dicomweb, user=server.user, timeout=5), default=True)

        token = CancelToken()  # a first pull stops after two images (the rest then come one request each)

        def first(fraction: float, message: str) -> None:
            if message.startswith("received 2/"):
                token.cancel()

        def second(fraction: float, message: str) -> None:
            if message.startswith("received 1/"):  # the first of the three still missing
                server.stop()  # the PACS goes away in the middle of the series

        with PacsClient.open("private") as client, pytest.raises(Cancelled):
            pull_series(client, study, series, progress=first, cancel=token)
        with PacsClient.open("private") as client, pytest.raises(PacsError) as err:
            pull_series(client, study, series, progress=second)
        assert "\n" not in str(err.value) and "private" in str(err.value)
        folder = series_folder(study, series)
        assert len(cached_instances(folder)) == 3 and not list(folder.glob(".*.tmp"))  # kept, nothing half-written
        assert one_line_error(capsys, ["pacs", "pull", study, "--series", series, "--pacs", "private"])
    finally:
        server.stop()
    server = pacs_fixture.start_orthanc(tmp_path / "private")  # back, same storage, another port
    try:
        save_profile(make_profile("private", server.dicomweb, user=server.user, timeout=5), default=True)
        monkeypatch.setenv("ANOMALENS_PACS_PRIVATE_PASSWORD", server.password)
        data, _ = run_cli(capsys, ["pacs", "pull", study, "--series", series, "--pacs", "private", "--json"])
        row = data["series"][0]
        assert (row["n_instances"], row["downloaded"], row["reused"]) == (5, 2, 3)
    finally:
        server.stop()


@pytest.mark.pacs
def test_a_series_that_changes_while_pulled_is_stopped_then_completed(capsys, pacs) -> None:
    from anomalens.engine.pacs.cache import cached_instances, pull_series, series_folder
    from anomalens.engine.pacs.client import PacsClient

    study, series = pacs["study"]["changing"], pacs["series"]["changing"]["uid"]
    late = pacs["series"]["changing"]["paths"][-1]

    def progress(fraction: float, message: str) -> None:
        if message.startswith("received 1/"):
            pacs["server"].upload([late])  # the modality is still sending

    with PacsClient.open(PROFILE) as client, pytest.raises(SeriesChangedError, match="1 image\\(s\\) added"):
        pull_series(client, study, series, progress=progress)
    assert len(cached_instances(series_folder(study, series))) == 2  # what was received is kept
    data, _ = run_cli(capsys, ["pacs", "pull", study, "--json"])
    assert (data["series"][0]["n_instances"], data["series"][0]["downloaded"]) == (3, 1)


@pytest.mark.pacs
def test_a_refused_push_keeps_the_result(capsys, pacs, tmp_path) -> None:
    out = tmp_path / "out"
    msg = one_line_error(capsys, ["score", "--model", str(pacs["model"]), f"pacs:{pacs['study']['reject']}", "--out",
                                  str(out), "--push", "--pacs", PROFILE, "--keep-paths"])
    assert "refused to store" in msg or "does not hold it afterwards" in msg
    assert f"anomalens pacs push {out / 'dicom'}" in msg  # with --keep-paths: a command to copy as it is
    assert (out / "heatmap.nii.gz").is_file() and (out / "scores.csv").is_file()
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["pmap.dcm", "seg.dcm", "sr.dcm"]
    assert "does not hold it afterwards" in one_line_error(capsys, ["pacs", "push", str(out / "dicom")])
    # a scan's own image (not a result) is not copied back into the archive by mistake
    scan_image = pacs["series"]["changing"]["paths"][0]
    msg = one_line_error(capsys, ["pacs", "push", str(scan_image)])
    assert "was not made by AnomaLens" in msg
    assert msg.endswith("(the files in a result's dicom folder); send other files with the PACS's own tools")
    assert Path(scan_image).name not in msg and "<path:" in msg  # a file name may name the patient


@pytest.mark.pacs
def test_missing_slices_are_warned_about_and_left_out_of_the_seg(capsys, pacs, tmp_path) -> None:
    import pydicom

    study = pacs["study"]["gappy"]
    data, err = run_cli(capsys, ["score", "--model", str(pacs["model"]), f"pacs:{study}#0-5", "--out",
                                 str(tmp_path / "o"), "--push", "--json"])
    assert any("slices missing" in w and "inserted" in w for w in data["warnings"]), data["warnings"]
    assert "anomalens: warning: slices missing" in err
    seg = pydicom.dcmread(data["dicom"]["seg"])
    refs = {item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for item in seg.PerFrameFunctionalGroupsSequence}
    real = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in pacs["series"]["gappy"]["paths"]}
    assert refs and refs <= real  # no frame for the filler of the missing slice
    assert set(data["pushed"]["status"]) == {"seg", "pmap", "sr"}
    # what the PACS holds says the series was incomplete (it was stored as COMPLETE, like the full result)
    sr = pydicom.dcmread(data["dicom"]["sr"])
    assert sr.CompletionFlag == "PARTIAL"
    for kind in ("seg", "pmap", "sr"):
        assert pydicom.dcmread(data["dicom"][kind]).SeriesDescription.endswith("(incomplete series)")


@pytest.mark.pacs
def test_worklist_lists_and_opens_a_series_for_the_viewer(pacs) -> None:
    from anomalens.engine.pacs import worklist

    rows = worklist.profiles()
    assert rows[0].name == PROFILE and rows[0].default and rows[0].secret == "ANOMALENS_PACS_ORTHANC_PASSWORD"
    studies = worklist.search(modality="MR", since="2026-03-01")
    assert {s.uid for s in studies} == {pacs["study"][f"batch{i}"] for i in range(3)}
    series = worklist.image_series(None, pacs["study"]["batch0"])
    assert [s.uid for s in series] == [pacs["series"]["batch0"]["uid"]]
    steps = []
    vol = worklist.open_series(pacs["study"]["batch0"], progress=lambda f, m: steps.append((f, m)))
    assert vol.shape == (3, 64, 64) and vol.metadata["pacs"]["series_uid"] == series[0].uid
    assert steps[-1][0] == 1.0 and all(0 <= f <= 1 for f, _ in steps)
    assert worklist.spec_for(pacs["study"]["batch0"]) == f"pacs:{PROFILE}:{pacs['study']['batch0']}"


@pytest.mark.pacs
def test_a_result_without_scr_builds_a_one_segment_seg_and_its_report(pacs, tmp_path) -> None:
    """Only the plain mask (no SCR cut): one segment, which highdicom's SR helper could not find (a bug)."""
    import dataclasses

    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.pacs import worklist
    from anomalens.engine.pacs.push import build_result_objects
    from anomalens.engine.scoring import score_scan

    vol = worklist.open_series(pacs["study"]["main"])
    result = score_scan(load_bundle(pacs["model"]), vol, np.arange(vol.shape[0]))
    plain = dataclasses.replace(result, mask_scr=None)
    assert plain.lesion_mask_kind == "plain"
    objects = build_result_objects(plain)
    assert len(objects.datasets["seg"].SegmentSequence) == 1
    for role in ("seg", "pmap", "sr"):
        path = tmp_path / f"{role}.dcm"
        objects.datasets[role].save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == [], role


# ============================================================ batch on a 2-worker LocalCluster


@pytest.fixture(scope="module")
def cluster(pacs):
    """Two worker processes on loopback; a killed worker fails its study instead of a silent retry.

    A worker is meant to hold one task at a time (saturation 1.0), but the scheduler still handed a one-thread
    worker a second study to queue (seen in CI, tasks submitted one by one are not queued centrally): the
    killed-worker test's doomed study therefore secedes from its thread before it waits (see there).
    """
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.worker-saturation": 1.0}):
        lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          host="127.0.0.1")
        c = Client(lc)
    yield c
    c.close()
    lc.close()


@pytest.mark.pacs
def test_batch_query_scores_and_pushes_every_study(capsys, pacs, cluster, tmp_path) -> None:
    from anomalens.engine.batch import read_batch_manifest

    out = tmp_path / "batch"
    data, _ = run_cli(capsys, ["score", "--model", str(pacs["model"]), "--pacs", PROFILE, "--query",
                               "modality=MR since=2026-03-01", "--scheduler", cluster.scheduler.address, "--push",
                               "--out", str(out), "--json"])
    assert data["ok"] == 3 and not data["failed"] and data["already_on_pacs"] == 0
    manifest = read_batch_manifest(out)
    text = (out / "manifest.json").read_text()
    no_names(text)
    records = list(manifest["studies"].values())
    assert {r["pacs"]["study_uid"] for r in records} == {pacs["study"][f"batch{i}"] for i in range(3)}
    for r in records:
        assert r["status"] == "ok" and r["pushed"]["pacs"] == PROFILE
        for role in ("seg", "pmap", "sr"):
            assert pacs["server"].instances_with(r["pushed"]["objects"][role]["sop_uid"]) == 1
            assert (out / r["outputs"][f"dicom_{role}"]).is_file()
    again, _ = run_cli(capsys, ["score", "--model", str(pacs["model"]), "--pacs", PROFILE, "--query",
                                "modality=MR since=2026-03-01", "--scheduler", cluster.scheduler.address, "--push",
                                "--out", str(out), "--json"])
    assert again["skipped"] == 3 and again["ok"] == 0  # resumable: keyed by UID, nothing redone
    # Scored again into a new folder: the same UIDs, all on the PACS already, and the summary says so
    argv = ["score", "--model", str(pacs["model"]), "--pacs", PROFILE, "--query", "modality=MR since=2026-03-01",
            "--scheduler", cluster.scheduler.address, "--push", "--out", str(tmp_path / "batch2")]
    assert main(argv) == 0
    assert "3 scored and pushed (3 of them already on the PACS)" in capsys.readouterr().out


@pytest.mark.pacs
def test_a_killed_worker_loses_no_pushed_result(pacs, cluster, tmp_path) -> None:
    import os

    from anomalens.engine.batch import Study, run_batch, study_id

    specs = [f"pacs:{PROFILE}:{pacs['study'][f'batch{i}']}/{pacs['series'][f'batch{i}']['uid']}" for i in range(3)]
    doomed = specs[2]
    flag, out = tmp_path / "killed-once", tmp_path / "out"

    def arm(flag_path: str = str(flag), out_dir: str = str(out), doomed: str = doomed) -> None:
        """In each worker: the doomed study waits for the two others to finish, then its process dies.

        It secedes from the worker's thread pool first: a study the scheduler queued behind it on the same
        one-thread worker then runs (not dies with it), whichever worker each study was handed to. "Finish"
        is the client's manifest recording both as done: a study's files on disk are not enough, since a
        study beside the doomed one in its process may have written them and not yet returned (seen: it then
        died with the doomed one, 1 run in 11).
        """
        import json
        import time

        from distributed import secede

        from anomalens.engine import pipeline

        original = pipeline.load_volume

        def finished() -> int:
            try:
                studies = json.loads((Path(out_dir) / "manifest.json").read_text())["studies"]
            except (OSError, ValueError, KeyError):
                return 0
            return sum(rec.get("status") == "ok" for rec in studies.values())

        def load_volume(spec, **opts):
            if spec == doomed and not os.path.exists(flag_path):
                secede()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and finished() < 2:
                    time.sleep(0.05)
                Path(flag_path).write_text("x")
                os._exit(1)
            return original(spec, **opts)

        pipeline.load_volume = load_volume

    cluster.run(arm)
    studies = [Study(study_id(s), s) for s in specs]
    first = run_batch(pacs["model"], studies, out, client=cluster, device="cpu", push=PROFILE)
    killed = study_id(doomed)
    assert flag.exists() and killed in first.failed and len(first.ok) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    for sid in first.ok:  # every finished result is recorded, on disk and on the PACS
        rec = manifest["studies"][sid]
        assert rec["status"] == "ok" and (out / rec["outputs"]["heatmap"]).is_file()
        assert pacs["server"].instances_with(rec["pushed"]["objects"]["sr"]["sop_uid"]) == 1
    cluster.wait_for_workers(2, timeout=60)
    second = run_batch(pacs["model"], studies, out, client=cluster, device="cpu", push=PROFILE)
    assert sorted(second.skipped) == sorted(first.ok) and second.ok == [killed] and not second.failed


def test_a_server_that_cannot_transcode_is_asked_for_images_as_stored() -> None:
    import requests
    from pydicom.dataset import Dataset

    from anomalens.engine.pacs.client import STORED, UNCOMPRESSED, PacsClient
    from anomalens.engine.pacs.profiles import PacsProfile

    client = PacsClient(PacsProfile(name="fake", url="http://127.0.0.1:9/dicom-web"))
    asked = []

    def retrieve_instance(**kwargs):
        asked.append(kwargs["media_types"])
        if len(asked) == 1:
            refusal = requests.Response()
            refusal.status_code, refusal.reason = 406, "Not Acceptable"
            raise requests.HTTPError(response=refusal)
        return Dataset()

    client.web.retrieve_instance = retrieve_instance
    client.retrieve_instance("1.2", "1.2.3", "1.2.3.4")
    assert asked == [UNCOMPRESSED, STORED]


def test_an_image_cut_short_by_a_dropped_connection_is_never_cached(tmp_path, monkeypatch) -> None:
    """A streamed pull cut mid-image saved the partial image, said "300 received" (exit 0), and later pulls trusted
    it as cached: every reading of the series then failed on it."""
    import copy
    from typing import ClassVar

    import pydicom

    from anomalens.engine.pacs.cache import cached_instances, pull_series, series_folder
    from tests.io_support import phantom, write_ct_series

    monkeypatch.setenv("ANOMALENS_CACHE_DIR", str(tmp_path / "cache"))
    files = write_ct_series(tmp_path / "src", phantom((3, 16, 16)), shuffle_seed=None)
    full = [pydicom.dcmread(f) for f in files]
    study, series = str(full[0].StudyInstanceUID), str(full[0].SeriesInstanceUID)
    cut = copy.deepcopy(full[2])
    cut.PixelData = cut.PixelData[:100]  # the stream broke 100 bytes into the last image

    class Client:
        profile = type("P", (), {"name": "test"})()
        asked: ClassVar[list[str]] = []

        def search_instances(self, study_uid, series_uid, fields=()):
            return [{"00080018": {"vr": "UI", "Value": [str(d.SOPInstanceUID)]}} for d in full]

        def iter_series(self, study_uid, series_uid):
            yield from (full[0], full[1], cut)

        def retrieve_instance(self, study_uid, series_uid, sop):
            self.asked.append(sop)
            return next(d for d in full if str(d.SOPInstanceUID) == sop)

    result = pull_series(Client(), study, series)
    folder = series_folder(study, series)
    assert result.n_instances == 3 and len(cached_instances(folder)) == 3
    assert Client.asked == [str(full[2].SOPInstanceUID)]  # fetched again, whole, on its own
    for f in folder.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
    # a cut-short image an older version left in the cache is fetched again, not trusted
    victim = folder / f"{full[1].SOPInstanceUID}.dcm"
    short = copy.deepcopy(full[1])
    short.PixelData = short.PixelData[:10]
    short.save_as(victim, enforce_file_format=True)
    Client.asked = []
    pull_series(Client(), study, series)
    assert Client.asked == [str(full[1].SOPInstanceUID)]
    assert len(pydicom.dcmread(victim).PixelData) == full[1].Rows * full[1].Columns * 2


def test_pacs_words_read_as_sentences(capsys, own_config, no_keyring) -> None:
    """"secret from missing", a keyring error cut mid-word ("non-recommend)"): said in words now."""
    from anomalens.engine.pacs.profiles import _short

    run_cli(capsys, ["pacs", "add", "site", "--url", "https://pacs.example.org/dicom-web", "--user", "reader"])
    assert main(["pacs", "list"]) == 0
    out = capsys.readouterr().out
    assert "no secret yet: anomalens pacs login site" in out and "secret from missing" not in out
    cut = _short(RuntimeError("word " * 60))
    assert cut.endswith(" …") and len(cut) <= 160 and cut[:-2].split(" ")[-1] == "word"


@pytest.mark.pacs
def test_ctrl_c_during_a_push_says_how_to_complete_it(capsys, pacs, tmp_path, monkeypatch) -> None:
    """Interrupted mid-push (the SEG stored, the rest not), it said only "interrupted"."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("anomalens.engine.pacs.push.push_result", interrupted)
    out = tmp_path / "out"
    code = main(["score", "--model", str(pacs["model"]), f"pacs:{pacs['study']['main']}", "--out", str(out),
                 "--push", "--pacs", PROFILE, "--keep-paths"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1] == (f"anomalens: interrupted: the push may be incomplete; 'anomalens pacs push "
                                       f"{out / 'dicom'} --pacs {PROFILE}' completes it"), err
