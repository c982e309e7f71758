"""Which slices of which study a model was fitted or calibrated on, kept in the model by hashed study key.

Scores on those slices are not a test of the model: a calibration slice's top pixel is the top of the
normal range by construction, so "Score volume" on the demo's scan opened on the vertex, a calibration slice,
instead of the lesion. The model keeps, in ``training["seen_slices"]``, the case library's non-identifying
key of each study (``caselib.study_key``: a hash, never a path) and the slice numbers as in the file; scoring
a study it has seen names those slices (``ScanResult.seen_slices``) and warns when they were scored.

A bundle is untrusted input: a malformed record is ignored (nothing is known), never an error, and its size
is bounded before it is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .volume import Volume

#: ``Detector.training`` key of the record: ``{study key: [slice numbers as in the file]}``.
SEEN_KEY = "seen_slices"
#: Most studies and slices per study a record may hold (a larger one in a bundle is ignored).
MAX_STUDIES = 10_000
#: How ``score_scan``'s warning about scored fitted or calibrated slices ends (``eval`` recognises it).
SEEN_WARNING_TAIL = ": their scores are no test of it"
MAX_SLICES = 100_000


def _valid(record: Any) -> dict[str, list[int]]:
    """The record as ``{key: sorted slices}``; {} when it is not one (a forged or damaged bundle)."""
    if not isinstance(record, Mapping) or len(record) > MAX_STUDIES:
        return {}
    out: dict[str, list[int]] = {}
    for key, slices in record.items():
        if not isinstance(key, str) or not 0 < len(key) <= 80 or not isinstance(slices, list | tuple) \
                or len(slices) > MAX_SLICES:
            return {}
        if not all(isinstance(z, int) and not isinstance(z, bool) and 0 <= z < MAX_SLICES for z in slices):
            return {}
        out[key] = sorted(set(slices))
    return out


def record_seen(training: dict[str, Any], volume: Volume, array_z: Iterable[int]) -> None:
    """Add ``volume``'s array slices ``array_z`` (mapped to the file's numbering) to ``training``'s record."""
    from .caselib import original_slices, study_key

    z = [int(k) for k in array_z]
    if not z:
        return
    record = _valid(training.get(SEEN_KEY))
    key = study_key(volume)
    record[key] = sorted({*record.get(key, []), *original_slices(volume, z)})
    training[SEEN_KEY] = record


def merge_seen(training: dict[str, Any], other: Mapping[str, Any] | None) -> None:
    """Add another record (e.g. the calibration normals') to ``training``'s."""
    more = _valid(other)
    if not more:
        return
    record = _valid(training.get(SEEN_KEY))
    for key, slices in more.items():
        record[key] = sorted({*record.get(key, []), *slices})
    training[SEEN_KEY] = record


def seen_in(training: Mapping[str, Any] | None, volume: Volume) -> list[int]:
    """The array slices of ``volume`` the model was fitted or calibrated on ([] when none or unknown)."""
    record = _valid((training or {}).get(SEEN_KEY))
    if not record:
        return []
    from .caselib import array_slices, study_key

    return array_slices(volume, record.get(study_key(volume), []))
