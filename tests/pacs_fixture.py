"""A real PACS for the tests: Orthanc with its DICOMweb plugin, on a free loopback port, with small MR series.

Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``, listed in ``.ci/apt-packages.txt``) starts
as a subprocess from a generated configuration: storage and index in a temporary folder, HTTP on
127.0.0.1 only, basic authentication with a generated password, no DICOM port, and a Lua filter that
drops derived objects of the patient ``REJECT-ME`` (the "PACS refuses our results" case). It starts in
about a second; the session shares one and kills it at the end. Tests that need it skip, saying why,
where Orthanc or the plugin is not installed.

Series are written with pydicom as an MR scanner would (frame of reference, UTF-8 character set,
non-ASCII descriptions and patient names), from the tiny phantoms the other tests use.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
PATIENT_NAME = "Müller^Jürgen"
REJECT_ID = "REJECT-ME"
PROFILE = "orthanc"
_LUA = f"""
function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.PatientID == '{REJECT_ID}' and dicom.Modality ~= 'MR' then
    return false
  end
  return true
end
"""


def dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        p = Path(folder) / "libOrthancDicomWeb.so"
        if p.is_file():
            return p
    return None


def missing_reason() -> str | None:
    """Why the Orthanc tests cannot run here (None: they can)."""
    if not (Path(ORTHANC).is_file() and os.access(ORTHANC, os.X_OK)):
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
    if dicomweb_plugin() is None:
        return "Orthanc's DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running Orthanc: its REST root, DICOMweb root and credentials (the password only lives here)."""

    process: subprocess.Popen
    port: int
    user: str
    password: str
    folder: Path
    studies: dict[str, dict] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, **kwargs):
        import requests

        r = requests.request(method, f"{self.url}{path}", auth=(self.user, self.password), timeout=30, **kwargs)
        r.raise_for_status()
        return r

    def upload(self, paths) -> None:
        for p in paths:
            self.rest("POST", "/instances", data=Path(p).read_bytes())

    def instances_with(self, sop_uid: str) -> int:
        """How many stored instances carry this SOP Instance UID (Orthanc's own index, not DICOMweb)."""
        found = self.rest("POST", "/tools/find", json={"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        return len(found.json())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(folder: Path) -> Orthanc:
    """Start Orthanc on a free loopback port and wait until ``/system`` answers."""
    import requests

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "filter.lua").write_text(_LUA, encoding="utf-8")
    user, password = "anomalens", secrets.token_urlsafe(12)
    last: Exception | None = None
    for _ in range(3):  # a port taken between choosing and binding: choose again
        port = free_port()
        config = {
            "Name": "AnomaLensTest", "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
            "RegisteredUsers": {user: password}, "DicomServerEnabled": False, "DicomPort": free_port(),
            "Plugins": [str(dicomweb_plugin())], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [str(folder / "filter.lua")], "HttpCompressionEnabled": False, "StorageCompression": False,
            "ConcurrentJobs": 1, "HttpThreadsCount": 8,
        }
        cfg = folder / f"orthanc-{port}.json"
        cfg.write_text(json.dumps(config, indent=2), encoding="utf-8")
        log = (folder / f"orthanc-{port}.log").open("wb")
        proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        server = Orthanc(process=proc, port=port, user=user, password=password, folder=folder)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                requests.get(f"{server.url}/system", auth=(user, password), timeout=2).raise_for_status()
                return server
            except requests.RequestException as exc:
                last = exc
                time.sleep(0.1)
        server.stop()
    raise RuntimeError(f"Orthanc did not start: {last}; see the logs in {folder}")


# -- test series ---------------------------------------------------------------------------------------------


def write_mr_series(folder: Path, slices: np.ndarray, *, study_uid: str, series_uid: str, frame_uid: str,
                    patient_id: str, description: str, study_date: str, series_number: int = 2,
                    skip: tuple[int, ...] = (), dz: float = 3.0, start: int = 0) -> list[Path]:
    """An axial MR series (slices in [0, 1] stored ×1000) with what a real scanner writes, UTF-8 text included."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sl in enumerate(slices):
        if i in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, patient_id, "19700101", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study_uid, study_date, "101500", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.StudyDescription = f"Kopf {description}"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.Modality, ds.Laterality, ds.PatientPosition = "MR", "", "HFS"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_uid, ""
        ds.Manufacturer = "Phantom"
        ds.InstanceNumber = start + i + 1
        ds.ImagePositionPatient = [-32.0, -32.0, (start + i) * dz]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], dz
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.EchoNumbers = 4000.0, 90.0, 1, 1
        ds.Rows, ds.Columns = sl.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.round(np.clip(sl, 0, 1) * 1000).astype("<u2").tobytes()
        p = folder / f"IM{start + i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def write_sr_only_study(path: Path, *, study_uid: str, patient_id: str, study_date: str) -> Path:
    """A study holding nothing but a small text report (Basic Text SR)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT_NAME, patient_id
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, study_date, "090000"
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = generate_uid(), 1, "SR"
    ds.SeriesDescription = "Befund – nur Text"
    ds.InstanceNumber = 1
    ds.ValueType = "CONTAINER"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@contextlib.contextmanager
def environment(**values: str):
    """Set environment variables for the block (the session's PACS password), restoring them after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A running Orthanc with a saved profile (``PROFILE``) whose password is in the environment."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    from anomalens.engine.pacs.profiles import make_profile, save_profile

    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        with environment(ANOMALENS_PACS_ORTHANC_PASSWORD=server.password):
            save_profile(make_profile(PROFILE, server.dicomweb, user=server.user, timeout=20), default=True)
            yield server
    finally:
        server.stop()
