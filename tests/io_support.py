"""Small synthetic scans for the reader tests: DICOM written with pydicom, everything else with SimpleITK."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pydicom_test_file(name: str) -> Path:
    """A file bundled inside the pydicom package (never downloaded)."""
    import pydicom.data

    path = Path(pydicom.data.__file__).parent / "test_files" / name
    assert path.is_file(), f"pydicom no longer bundles {name}"
    return path


def _base_dataset(*, modality: str, series_uid: str, description: str, rows: int, cols: int,
                  patient_name: str = "Doe^Jane", sop_class: str | None = None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    sop_class = sop_class or CTImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient_name
    ds.PatientID = "ID-12345"
    ds.PatientBirthDate = "19700101"
    ds.InstitutionName = "General Hospital"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.SeriesNumber = 3
    ds.Modality = modality
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_ct_slice(path: Path, stored: np.ndarray, *, z: float, series_uid: str, instance: int,
                   slope: float = 1.0, intercept: float = -1024.0, pixel_spacing=(0.75, 0.5),
                   origin_xy=(-40.0, -30.0), description: str = "AX CT", modality: str = "CT",
                   window=(40.0, 400.0), orientation=(1, 0, 0, 0, 1, 0), position=None,
                   acquisition: int | None = None) -> Path:
    """One axial CT slice whose stored values map to HU through slope/intercept."""
    rows, cols = stored.shape
    ds = _base_dataset(modality=modality, series_uid=series_uid, description=description, rows=rows, cols=cols)
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = list(position) if position is not None else [origin_xy[0], origin_xy[1], z]
    ds.ImageOrientationPatient = list(orientation)
    if acquisition is not None:
        ds.AcquisitionNumber = acquisition
    ds.PixelSpacing = list(pixel_spacing)
    ds.SliceThickness = 2.5
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.RescaleType = "HU"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = stored.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(folder: Path, hu: np.ndarray, *, series_uid: str = "1.2.826.0.1.3680043.8.498.10",
                    z0: float = -20.0, dz: float = 2.5, slope: float = 2.0, intercept: float = -1024.0,
                    skip: tuple[int, ...] = (), shuffle_seed: int | None = 0, description: str = "AX CT",
                    name: str = "IM") -> list[Path]:
    """A CT series with HU volume ``hu`` (z, y, x), files written in shuffled order with scrambled names."""
    folder.mkdir(parents=True, exist_ok=True)
    order = np.arange(hu.shape[0])
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(order)
    paths = []
    for k, i in enumerate(order):
        if i in skip:
            continue
        stored = np.round((hu[i] - intercept) / slope).astype(np.int16)
        # File names and instance numbers deliberately disagree with the spatial order.
        paths.append(write_ct_slice(folder / f"{name}{k:04d}.dcm", stored, z=z0 + dz * i, series_uid=series_uid,
                                    instance=int(k + 1), slope=slope, intercept=intercept, description=description))
    return paths


def write_enhanced_ct(path: Path, hu: np.ndarray, *, z0: float = 10.0, dz: float = 3.0, slope: float = 1.0,
                      intercept: float = -1000.0) -> Path:
    """An enhanced (multi-frame) CT whose frames are stored in reverse spatial order."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import EnhancedCTImageStorage

    n, rows, cols = hu.shape
    ds = _base_dataset(modality="CT", series_uid="1.2.826.0.1.3680043.8.498.30", description="enhanced",
                       rows=rows, cols=cols, sop_class=EnhancedCTImageStorage)
    ds.NumberOfFrames = n
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.6, 0.6]
    measures.SliceThickness = dz
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    transform = Dataset()
    transform.RescaleSlope = slope
    transform.RescaleIntercept = intercept
    transform.RescaleType = "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    stored = []
    for k in range(n):
        i = n - 1 - k  # frame k shows slice i
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [0.0, 0.0, z0 + dz * i]
        item.PlanePositionSequence = Sequence([pos])
        per_frame.append(item)
        stored.append(np.round((hu[i] - intercept) / slope).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(stored).astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def phantom(shape=(5, 16, 20), seed: int = 0) -> np.ndarray:
    """A float volume with distinct slices (so a wrong order shows) and a bright block."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    vol = rng.normal(0, 5, size=shape) + np.arange(z)[:, None, None] * 100.0 - 1000.0
    vol[:, y // 4: y // 2, x // 4: x // 2] += 500.0
    return vol.astype(np.float32)


def write_sitk(path: Path, array: np.ndarray, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0),
               direction=(-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), is_vector: bool = False) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(array, isVector=is_vector)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return path


# --------------------------------------------------------------------------------------------- fuzz worker


def read_outcome(path: Path, nan_policy: str = "refuse", max_bytes: int = 16 * 1024**2) -> dict:
    """What ``read_scan`` does with one file: a usable volume, an ``AnomaLensError``, or a traceback (a bug)."""
    import traceback

    from anomalens.engine.errors import AnomaLensError
    from anomalens.engine.io import describe, read_scan

    try:
        volume = read_scan(path, nan_policy=nan_policy, max_bytes=max_bytes)
    except AnomaLensError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    except BaseException:  # anything else is a bug: report it whole
        return {"traceback": traceback.format_exc()}
    problems = []
    if volume.array.dtype != np.float32 or volume.array.ndim != 3:
        problems.append(f"array {volume.array.dtype} {volume.array.shape}")
    if not np.isfinite(volume.array).all():
        problems.append("non-finite voxels")
    if not (all(np.isfinite(volume.spacing)) and min(volume.spacing) > 0):
        problems.append(f"spacing {volume.spacing}")
    if len(describe(volume)["orientation"]) != 3:
        problems.append("no orientation")
    return {"read": list(volume.shape), "problems": problems}


def fuzz_worker(manifest: str, results: str) -> None:
    """Read every case of a manifest (JSON list of {id, path, nan_policy}) and log each outcome as a JSON line.

    Runs in a child process (``python -c``) so that a native crash or hang shows as the child's exit code
    or a timeout, with the last "started" line naming the culprit, instead of taking the test run down.
    Nothing is printed: the parent checks that stdout and stderr stay empty (no native-library lines).
    """
    import json

    cases = json.loads(Path(manifest).read_text())
    with open(results, "a", encoding="utf-8") as log:
        for case in cases:
            log.write(json.dumps({"id": case["id"], "started": True}) + "\n")
            log.flush()
            outcome = read_outcome(Path(case["path"]), case.get("nan_policy", "refuse"))
            log.write(json.dumps({"id": case["id"], **outcome}) + "\n")
            log.flush()
