"""Which header fields a ``Volume`` may carry: an allow-list, so nothing identifying leaks by accident.

A deny-list (drop PatientName, PatientID, ...) fails open: private tags, free-text comments, dates and
institution names would slip through. Copying only fields known to be technical fails closed.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

#: Technical DICOM attributes copied into ``Volume.metadata`` (keywords). No names, IDs, dates, times,
#: institutions, operators, devices' serial numbers or free-text comments.
DICOM_ALLOWED: tuple[str, ...] = (
    "Modality",
    "SOPClassUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "ImageType",
    "BodyPartExamined",
    "PatientPosition",
    "Manufacturer",
    "ManufacturerModelName",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "RescaleType",
    "Units",
    "KVP",
    "ConvolutionKernel",
    "ContrastBolusAgent",
    "MagneticFieldStrength",
    "MRAcquisitionType",
    "ScanningSequence",
    "SequenceVariant",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
)


def plain(value: Any) -> Any:
    """A JSON-friendly copy of a pydicom/SimpleITK value (MultiValue → list, DSfloat → float, UID → str)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float | Decimal):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, str):
        return str(value)[:200]
    if isinstance(value, bytes):
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return [plain(v) for v in value]
    return str(value)[:200]


def dicom_metadata(ds: Any) -> dict[str, Any]:
    """The allow-listed attributes present in a pydicom dataset, as plain values."""
    out: dict[str, Any] = {}
    for key in DICOM_ALLOWED:
        try:
            value = ds.get(key)
        except Exception:  # a damaged element: leave it out rather than fail the whole read
            continue
        if value is None or value == "":
            continue
        value = plain(value)
        if value is not None:
            out[key] = value
    return out
