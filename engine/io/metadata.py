"""Which header fields a ``Volume`` may carry: an allow-list, so nothing identifying leaks by accident.

A deny-list (drop PatientName, PatientID, ...) fails open: private tags, free-text comments, dates and
institution names would slip through. Copying only fields known to be technical fails closed.
"""

from __future__ import annotations

import math
import re
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


#: Allowed attributes that are free text a person typed: scrubbed of the patient's own name and ID.
FREE_TEXT: tuple[str, ...] = ("SeriesDescription", "ContrastBolusAgent")
#: Shortest name part scrubbed from free text (one letter would cut words apart).
MIN_NAME_PART = 2


def identifying_words(ds: Any) -> list[str]:
    """The patient's name parts and ID as they may appear in free text (``DOE^JANE`` → ``DOE``, ``JANE``)."""
    words: list[str] = []
    for key in ("PatientName", "PatientID", "OtherPatientIDs"):
        try:
            value = ds.get(key)
        except Exception:  # a damaged element: nothing to learn from it
            continue
        if value is None:
            continue
        for part in re.split(r"[\^\s,=\\]+", str(value)):
            if len(part) >= MIN_NAME_PART:
                words.append(part)
    return sorted(set(words), key=len, reverse=True)


def scrub(text: str, words: list[str]) -> str:
    """``text`` without any of ``words`` (whole words, any case), spaces tidied; "" when nothing is left.

    A technician may type the patient into a series description ("AX T1 POST DOE JANE"), and the description
    names suggested export files and labels: the patient would follow it there.
    """
    for word in words:
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])", " ", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return text if any(c.isalnum() for c in text) else ""  # a lone "^" left of "Doe^Jane" says nothing


def dicom_metadata(ds: Any) -> dict[str, Any]:
    """The allow-listed attributes present in a pydicom dataset, as plain values (free text scrubbed)."""
    out: dict[str, Any] = {}
    words = identifying_words(ds)
    for key in DICOM_ALLOWED:
        try:
            value = ds.get(key)
        except Exception:  # a damaged element: leave it out rather than fail the whole read
            continue
        if value is None or value == "":
            continue
        value = plain(value)
        if isinstance(value, str) and key in FREE_TEXT and words:
            value = scrub(value, words) or None
        if value is not None:
            out[key] = value
    return out
