"""Names the viewer makes up for what it writes: from the series description or a hash, never from file names.

Sites name scan folders and files after patients (``DOE^JOHN 12345/``), and napari names a layer after the
file it was read from, so a suggested export name or a profile folder built from a layer name would carry
the patient's name into every file written and every log line about it. What identifies a study here is
the series description the scanner wrote (``AX CT``, ``T2 FLAIR``: the protocol, not the person), else a
short hash of the study (``engine.caselib.study_key``, the key the case library uses), plus the model.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.volume import Volume

#: Longest series description kept in a name (descriptions are short; a long one is free text).
MAX_DESCRIPTION = 40
#: Characters of ``study_key`` used when there is no description (``s-1a2b3c4d``: kind and 8 hex digits).
HASH_CHARS = 10


def sanitise(text: str, limit: int = 80) -> str:
    """``text`` as a file-name part: letters, digits, dots and dashes, runs of anything else as one ``_``."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_.-")[:limit].strip("_.-")


def series_text(volume: Volume | None) -> str:
    """The scan's series description (DICOM ``SeriesDescription``; a sample: its name), one line of ≤ 40 characters."""
    if volume is None:
        return ""
    meta = volume.metadata or {}
    # A sample case has no series description, but its name is public and says what it is.
    text = " ".join(str(meta.get("SeriesDescription") or (f"sample {meta['sample']}" if meta.get("sample") else ""))
                    .split())
    return "".join(c for c in text if c.isprintable())[:MAX_DESCRIPTION].strip()


def series_description(volume: Volume | None) -> str:
    """The scan's series description as a file-name part (``AX_CT``); empty when it has none."""
    return sanitise(series_text(volume), MAX_DESCRIPTION)


def study_hash(volume: Volume) -> str:
    """A short, non-identifying key of the study (the case library's key, cut to ``HASH_CHARS``)."""
    from ..engine.caselib import study_key

    return study_key(volume)[:HASH_CHARS]


def study_name(volume: Volume) -> str:
    """What names a study in suggested file names and labels: its series description, else a short hash."""
    return series_description(volume) or study_hash(volume)


def export_stem(volume: Volume, model_label: str, study: str | None = None) -> str:
    """A file-name stem for an export of ``volume`` scored by ``model_label``: ``AX_CT_patchcore_v1``.

    ``study`` is ``study_name(volume)`` when the caller already has it (hashing a scan without a source
    file reads every voxel).
    """
    return sanitise(f"{study or study_name(volume)}_{model_label}") or "anomalens"


def modality_text(modality: str | None) -> str:
    """The modality as a reader says it: ``MR``, ``CT``; DICOM's "OT" (other) and none as "modality unknown".

    A NIfTI or NRRD file has no modality, and the reader records "OT": "(25 slices, OT)" meant nothing.
    """
    value = str(modality or "").strip().upper()
    return "modality unknown" if value in ("", "OT") else value
