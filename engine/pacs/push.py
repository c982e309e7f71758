"""A scan's result as DICOM objects for its PACS, and storing them there (STOW-RS) without duplicates.

Three objects go back, each in its own series of the source study, all made with highdicom from the
source images (so they reference the source series and share its Frame of Reference):

* ``seg``: a binary DICOM SEG of the calibrated mask: segment 1 the lesion mask (SCR when it was cut), and
  segment 2 the plain-threshold mask when both exist (``engine.export.segmentation``);
* ``pmap``: a Parametric Map of the heatmap, float voxels with a real-world value mapping that names the unit
  (normal-quantile units: 1.0 is the top of the normal range);
* ``sr``: a Comprehensive 3D SR measurement report (TID 1500): the lesion volume in mL measured on the SEG's
  segment, the number of flagged slices and each flagged slice's score on its source image, and the
  model (name, version, fingerprint, calibration date) as the algorithm.

Every UID is derived from the model's fingerprint, the source series and the scored slices (``stable_uid``):
the same result pushed twice has the same UIDs, and the push asks the PACS first and skips what it already
holds, so a second push leaves one copy of each. A retrained or recalibrated model has another fingerprint
and so makes new objects beside the old ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError
from ..export import MANUFACTURER
from ..fileio import atomic_path
from ..progress import CancelToken, ProgressCallback, check, report
from .errors import PacsAuthError, PacsError, PacsTimeoutError, PacsUnreachableError, StowRejectedError

if TYPE_CHECKING:
    from pydicom import Dataset

    from ..export import SourceImages
    from ..scoring import ScanResult
    from .client import PacsClient

#: The objects of a result, in the order they are stored (the SR references the other two).
ROLES = ("seg", "pmap", "sr")
FILE_NAMES = {"seg": "seg.dcm", "pmap": "pmap.dcm", "sr": "sr.dcm"}
SERIES_NUMBERS = {"seg": 9901, "pmap": 9902, "sr": 9903}
DESCRIPTIONS = {"seg": "AnomaLens anomaly mask", "pmap": "AnomaLens anomaly map", "sr": "AnomaLens report"}
#: Codes of our own (a private coding scheme, as DICOM allows for concepts no standard scheme has).
SCHEME = "99ANOMALENS"
_INSTEAD = "the result's NIfTI files are written; its DICOM objects cannot be made from this series"
#: What a refusal adds when the objects are pushed alone (``score --push`` says it in its own words instead).
KEPT = "; nothing of the result is lost: it stays in the output folder"
#: Added to each object's series description when the series had missing slices (LO: 64 characters at most).
INCOMPLETE = " (incomplete series)"


def missing_slices(result: ScanResult) -> int:
    """How many slices the series lacked (gap fillers the reader inserted, never scored)."""
    from ..io.base import gap_indices

    return len(gap_indices(result.volume))


def described(kind: str, result: ScanResult) -> str:
    """An object's series description, saying when the series it was made from lacked slices.

    A result scored while the PACS held the series only in part was stored as if complete, and later sat beside
    the full result under the same descriptions (15.99 and 19.70 mL, no way to tell which was partial).
    """
    return DESCRIPTIONS[kind] + (INCOMPLETE if missing_slices(result) else "")


#: Namespace of AnomaLens's name-based UUIDs (fixed: changing it would change every pushed object's UIDs).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:anomalens:pacs-results")


def stable_uid(*parts: object) -> str:
    """A UID under the 2.25 root from ``parts``: a name-based (RFC 4122 version 5) UUID as DICOM's 2.25 form wants.

    The same parts always give the same UID, so a result pushed again is recognised instead of duplicated.
    """
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(31).join(str(p) for p in parts)).int}"


def result_key(result: ScanResult) -> tuple[str, ...]:
    """What makes a result itself: the model, the source series, and which slices were scored."""
    vol = result.volume
    series = str(vol.metadata.get("series_uid") or vol.metadata.get("SeriesInstanceUID") or "")
    if not series:
        raise ConfigError("the scan has no DICOM series UID; only scans read from DICOM can be pushed to a PACS")
    sel = vol.metadata.get("selected_slices")
    original = [int(sel[z]) for z in result.indices] if sel else [int(z) for z in result.indices]
    return (result.model.fingerprint, series, "x".join(str(s) for s in vol.shape), ",".join(map(str, original)))


@dataclass
class ResultObjects:
    """The DICOM objects of one result, by role (``ROLES``), all in the source study."""

    datasets: dict[str, Dataset]
    study_uid: str
    source_series_uid: str

    def uids(self) -> dict[str, dict[str, str]]:
        return {role: {"series_uid": str(ds.SeriesInstanceUID), "sop_uid": str(ds.SOPInstanceUID)}
                for role, ds in self.datasets.items()}

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Each object as ``<role>.dcm`` in ``folder``, atomically (kept for a later ``pacs push``)."""
        out = {}
        for role, ds in self.datasets.items():
            target = Path(folder) / FILE_NAMES[role]
            with atomic_path(target, suffix=".dcm") as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            out[role] = target
        return out


def build_result_objects(result: ScanResult, *, progress: ProgressCallback | None = None,
                         cancel: CancelToken | None = None) -> ResultObjects:
    """The SEG, Parametric Map and SR of a calibrated result scored on a DICOM series.

    Raises:
        ConfigError: the model is not calibrated (there is no mask, and a raw map means nothing to a reader),
            or the scan did not come from DICOM, or its source files are gone or changed.
    """
    from ..export import segmentation, source_images

    if not result.calibrated or result.lesion_mask is None:
        raise ConfigError("pushing to a PACS needs a calibrated model: the PACS gets a mask, a map in "
                          "normal-quantile units and the lesion volume; calibrate it with 'anomalens calibrate'")
    key = result_key(result)
    report(progress, 0.0, "reading the source images")
    src = source_images(result.volume, "a PACS result", _INSTEAD, cancel)
    check(cancel)
    masks = [("Anomaly (AnomaLens, SCR)" if result.lesion_mask_kind == "scr" else "Anomaly (AnomaLens)",
              result.lesion_mask)]
    if result.mask_scr is not None and result.mask is not None:
        masks.append(("Anomaly (AnomaLens, plain threshold)", result.mask))
    version = f"{result.model.label} ({result.model.fingerprint})"
    report(progress, 0.1, "building the segmentation")
    seg = segmentation(result.volume, masks, series_description=described("seg", result),
                       series_number=SERIES_NUMBERS["seg"], algorithm_version=version[:64],
                       series_instance_uid=stable_uid(*key, "seg-series"), sop_instance_uid=stable_uid(*key, "seg"),
                       sources=src, instead=_INSTEAD, cancel=cancel)
    check(cancel)
    report(progress, 0.4, "building the parametric map")
    pmap = parametric_map(result, src, key)
    check(cancel)
    report(progress, 0.7, "building the report")
    sr = measurement_report(result, src, seg, pmap, key)
    report(progress, 1.0, "built the DICOM objects")
    study = str(src.datasets[0].StudyInstanceUID)
    return ResultObjects(datasets={"seg": seg, "pmap": pmap, "sr": sr}, study_uid=study, source_series_uid=key[1])


def _unit(result: ScanResult) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")


def parametric_map(result: ScanResult, src: SourceImages, key: Sequence[str]) -> Any:
    """The heatmap as a float Parametric Map on the source images, its unit in the real-world value mapping."""
    import highdicom as hd

    from .. import __version__

    arr = src.arrange(np.asarray(result.map, np.float32), np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ANOMALY", lut_explanation=result.unit.description[:64], unit=_unit(result),
        value_range=(lo, hi if hi > lo else lo + 1.0), slope=1.0, intercept=0.0)
    voi = hd.VOILUTTransformation(window_center=1.0, window_width=2.0)  # 0-2: normal range and beyond
    try:
        pm = hd.pm.ParametricMap(
            source_images=src.datasets, pixel_array=arr, series_instance_uid=stable_uid(*key, "pmap-series"),
            series_number=SERIES_NUMBERS["pmap"], sop_instance_uid=stable_uid(*key, "pmap"), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name="AnomaLens", software_versions=__version__,
            device_serial_number="0", contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping], voi_lut_transformations=[voi], content_label="ANOMALYMAP",
            content_description=f"AnomaLens map, {result.unit.short}"[:64])
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the source DICOM images lack what a Parametric Map must reference ({exc}); "
                          f"{_INSTEAD}") from exc
    pm.SeriesDescription = described("pmap", result)
    # General Series' Laterality is type 2C; highdicom leaves it out of a map. The map shows the source's body
    # part, so it takes the source's value (present, maybe empty), as the SEG does.
    pm.Laterality = src.datasets[0].get("Laterality", "")
    return pm


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def _segment_one(hd: Any, seg: Dataset) -> Any:
    """The SR's reference to segment 1 of ``seg``, built from its UIDs.

    ``ReferencedSegment.from_segmentation`` looks for the segment in per-frame groups, where highdicom 0.28
    does not put it when the SEG has a single segment (the plain mask alone): it raised AttributeError.
    """
    series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    return hd.sr.ReferencedSegment(sop_class_uid=str(seg.SOPClassUID), sop_instance_uid=str(seg.SOPInstanceUID),
                                   segment_number=1, source_series=hd.sr.SourceSeriesForSegmentation(series))


def measurement_report(result: ScanResult, src: SourceImages, seg: Dataset, pmap: Dataset, key: Sequence[str]) -> Any:
    """TID 1500: the lesion volume on the SEG's segment 1, the flagged slices and the model that made them."""
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom import Dataset
    from pydicom.sr.codedict import codes

    m = result.model
    cal = result.calibration
    params = [f"detector {m.detector} {m.detector_version}", f"model fingerprint {m.fingerprint}",
              f"calibration date {m.calibration_created or 'unknown'}",
              f"lesion mask {'SCR' if result.lesion_mask_kind == 'scr' else 'plain threshold'}"]
    if cal is not None:
        params.append(f"target false-positive area {cal.target_fpr:.4g}")
    missing = missing_slices(result)
    if missing:
        params.append(f"incomplete series: {missing} slice(s) missing, not scored")
    algorithm = hd.sr.AlgorithmIdentification(name=f"AnomaLens {m.name}"[:64], version=m.label[:64],
                                              parameters=[p[:64] for p in params])
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=stable_uid(m.fingerprint, "device"), name="AnomaLens",
                                                       manufacturer_name=MANUFACTURER, model_name=m.label[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    volume = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=stable_uid(*key, "lesion"), identifier="AnomaLens anomaly"),
        referenced_segment=_segment_one(hd, seg),
        finding_type=codes.SCT.MorphologicallyAbnormalStructure, algorithm_id=algorithm,
        measurements=[hd.sr.Measurement(name=codes.SCT.Volume, value=round(float(result.lesion_volume_ml or 0.0), 4),
                                        unit=CodedConcept(value="ml", scheme_designator="UCUM", meaning="milliliter"),
                                        algorithm_id=algorithm)])
    flagged = [s for s in result.slices if s.flagged]
    per_slice = []
    for s in flagged:
        ds, frame = src.image_of(s.z)
        ref = hd.sr.SourceImageForMeasurement.from_source_image(
            ds, referenced_frame_numbers=[frame] if frame is not None else None)
        per_slice.append(hd.sr.Measurement(name=_code("SLICESCORE", "Maximum anomaly score on a flagged slice"),
                                           value=round(float(s.score), 4), unit=_unit(result),
                                           referenced_images=[ref]))
    count = hd.sr.Measurement(name=_code("NFLAGGED", "Number of flagged slices"), value=len(flagged),
                              unit=CodedConcept(value="{slices}", scheme_designator="UCUM", meaning="slices"),
                              algorithm_id=algorithm)
    slices = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=stable_uid(*key, "slices"),
                                                     identifier="AnomaLens flagged slices"),
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(pmap)],
        algorithm_id=algorithm, measurements=[count, *per_slice])
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                      imaging_measurements=[volume, slices])
    try:
        sr = hd.sr.Comprehensive3DSR(
            evidence=[*src.datasets, seg, pmap], content=content, series_instance_uid=stable_uid(*key, "sr-series"),
            series_number=SERIES_NUMBERS["sr"], sop_instance_uid=stable_uid(*key, "sr"), instance_number=1,
            manufacturer=MANUFACTURER, is_complete=not missing, is_final=False, is_verified=False)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"the report could not be made from the source images ({exc}); {_INSTEAD}") from exc
    sr.SeriesDescription = described("sr", result)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = "AnomaLens concepts"
    scheme.CodingSchemeResponsibleOrganization = "AnomaLens"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


# -- storing -------------------------------------------------------------------------------------------------

@dataclass
class PushReport:
    """What a push did, by role (or file name): ``stored`` or ``already on the PACS``."""

    pacs: str
    study_uid: str
    status: dict[str, str] = field(default_factory=dict)
    uids: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def stored(self) -> list[str]:
        return [r for r, s in self.status.items() if s == "stored"]

    def to_dict(self) -> dict[str, Any]:
        return {"pacs": self.pacs, "study_uid": self.study_uid, "status": dict(self.status), "objects": self.uids}

    def line(self) -> str:
        parts = [f"{role} {state}" for role, state in self.status.items()]
        return f"pushed to the PACS {self.pacs!r}: " + ", ".join(parts)


def on_pacs(client: PacsClient, study_uid: str, sop_uid: str) -> bool:
    """Whether the PACS already holds an instance (QIDO by SOP Instance UID)."""
    return bool(client.search_instances(study_uid, filters={"SOPInstanceUID": sop_uid}, fields=("SOPInstanceUID",),
                                        limit=1))


def store_datasets(client: PacsClient, datasets: dict[str, Dataset], *, progress: ProgressCallback | None = None,
                   cancel: CancelToken | None = None) -> PushReport:
    """Store datasets (all of one study) in order, each unless the PACS already has it.

    Raises:
        StowRejectedError: the PACS refused an object (its reason in the message); the ones before it are stored.
        PacsError and its kinds: the PACS could not be reached, timed out or refused the credentials.
    """
    studies = {str(ds.StudyInstanceUID) for ds in datasets.values()}
    if len(studies) != 1:
        raise ConfigError("the objects to push belong to several studies; push each study's objects on their own")
    study = studies.pop()
    out = PushReport(pacs=client.profile.name, study_uid=study)
    for k, (role, ds) in enumerate(datasets.items()):
        check(cancel)
        sop = str(ds.SOPInstanceUID)
        out.uids[role] = {"series_uid": str(ds.SeriesInstanceUID), "sop_uid": sop}
        if on_pacs(client, study, sop):
            out.status[role] = "already on the PACS"
        else:
            _stow(client, role, ds, study)
            out.status[role] = "stored"
        report(progress, (k + 1) / len(datasets), f"pushed {k + 1}/{len(datasets)} objects")
    return out


def _stow(client: PacsClient, role: str, ds: Dataset, study: str) -> None:
    what = f"the {role} object"
    try:
        answer = client.store([ds], study)
    except (PacsAuthError, PacsUnreachableError, PacsTimeoutError):
        raise
    except PacsError as exc:
        raise StowRejectedError(f"the PACS {client.profile.name!r} refused to store {what}: {exc}") from exc
    failed = list(getattr(answer, "FailedSOPSequence", None) or []) if answer is not None else []
    if failed:
        reasons = ", ".join(f"0x{int(item.get('FailureReason', 0)):04X}" for item in failed)
        raise StowRejectedError(f"the PACS {client.profile.name!r} refused to store {what} (failure reason {reasons})"
                                f"{KEPT}")
    confirmed = getattr(answer, "ReferencedSOPSequence", None) or []
    stored = [str(i.get("ReferencedSOPInstanceUID", "")) for i in confirmed]
    if answer is not None and stored and str(ds.SOPInstanceUID) not in stored:
        raise StowRejectedError(f"the PACS {client.profile.name!r} did not confirm storing {what}")
    # Some servers answer "stored" for an object a filter or policy then drops (Orthanc's Lua filters do):
    # only the PACS's own index says it is there.
    if not on_pacs(client, study, str(ds.SOPInstanceUID)):
        raise StowRejectedError(f"the PACS {client.profile.name!r} accepted {what} but does not hold it afterwards (a "
                                f"filter or storage rule on the PACS dropped it){KEPT}")


def push_result(client: PacsClient, objects: ResultObjects, *, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> PushReport:
    """Store a result's objects on the PACS (each unless already there)."""
    return store_datasets(client, objects.datasets, progress=progress, cancel=cancel)


def push_files(client: PacsClient, paths: Sequence[str | Path], *, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> PushReport:
    """Store DICOM files (a result's ``dicom/`` folder kept after a refused push), each unless already there."""
    import pydicom

    from ..errors import CorruptFileError

    datasets: dict[str, Any] = {}
    for p in paths:
        path = Path(p)
        try:
            head = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Manufacturer"])
            if str(head.get("Manufacturer", "")) != MANUFACTURER:
                # A scan's own files pushed by mistake would land in the archive as a copy; every object
                # AnomaLens makes (SEG, Parametric Map, SR) names it as the manufacturer.
                raise ConfigError(f"{path.name} was not made by AnomaLens: 'pacs push' stores only AnomaLens "
                                  "results (the files in a result's dicom folder); send other files with the "
                                  "PACS's own tools")
            datasets[path.name] = pydicom.dcmread(path)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise CorruptFileError(f"{path.name} is not a readable DICOM file ({exc})") from exc
    if not datasets:
        raise ConfigError("no DICOM files to push")
    ordered = dict(sorted(datasets.items(), key=lambda kv: str(kv[1].get("Modality", "")) == "SR"))
    return store_datasets(client, ordered, progress=progress, cancel=cancel)
