"""Which slices of which study a model was fitted or calibrated on, kept in the model by hashed study key.

Scores on those slices are not a test of the model: a calibration slice's top pixel is the top of the
normal range by construction, so "Score volume" on the demo's scan opened on the vertex, a calibration slice,
instead of the lesion. The model keeps, in ``training["seen_slices"]``, the case library's non-identifying
key of each study (``caselib.study_key``: a hash, never a path) and the slice numbers as in the file; scoring
a study it has seen names those slices (``ScanResult.seen_slices``) and warns when they were scored.

The study key hashes the file's head, so the same scan in another container (gzipped, converted from NRRD
to NIfTI) had another key and ``eval`` counted fitted slices as test slices. So the model also keeps a digest
of each such slice's voxels (``training["seen_slice_digests"]``: 16-byte hashes, which cannot be turned back
into an image): a slice with the same voxels is known whatever file it came in.

A bundle is untrusted input: a malformed record is ignored (nothing is known), never an error, and its size
is bounded before it is read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .volume import Volume

#: ``Detector.training`` key of the record: ``{study key: [slice numbers as in the file]}``.
SEEN_KEY = "seen_slices"
#: ``Detector.training`` key of the slices' voxel digests (hex), whichever file each slice came in.
DIGESTS_KEY = "seen_slice_digests"
_HEX = re.compile(r"[0-9a-f]{32}")
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


def seen_warning(overlap: Iterable[int]) -> str:
    """The warning that scored slices were fitted or calibrated on ("" when none were)."""
    from .protocol import format_selection

    z = sorted({int(k) for k in overlap})
    if not z:
        return ""
    verb = "was" if len(z) == 1 else "were"
    return (f"{len(z)} of the scored slices ({format_selection(z)}) {verb} used to fit or calibrate this "
            f"model{SEEN_WARNING_TAIL}")


def slice_digest(voxels: np.ndarray) -> str | None:
    """A 16-byte hash of one slice's voxels (float32), or None for a constant slice (blank slices are alike)."""
    a = np.ascontiguousarray(voxels, dtype=np.float32)
    if a.size == 0 or not np.isfinite(a).all() or float(a.max()) == float(a.min()):
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _digests(record: Any) -> set[str]:
    """A digest list as a set; empty when it is not one (a forged or damaged bundle)."""
    if not isinstance(record, list | tuple) or len(record) > MAX_SLICES:
        return set()
    if not all(isinstance(d, str) and _HEX.fullmatch(d) for d in record):
        return set()
    return set(record)


def record_seen(training: dict[str, Any], volume: Volume, array_z: Iterable[int]) -> None:
    """Add ``volume``'s array slices ``array_z`` (mapped to the file's numbering, and by their voxels)."""
    from .caselib import original_slices, study_key

    z = [int(k) for k in array_z]
    if not z:
        return
    record = _valid(training.get(SEEN_KEY))
    key = study_key(volume)
    record[key] = sorted({*record.get(key, []), *original_slices(volume, z)})
    training[SEEN_KEY] = record
    digests = _digests(training.get(DIGESTS_KEY)) | {d for k in z if (d := slice_digest(volume.array[k]))}
    training[DIGESTS_KEY] = sorted(digests)[:MAX_SLICES]


def merge_seen(training: dict[str, Any], other: Mapping[str, Any] | None) -> None:
    """Add another model's or reading's records (``other`` holds ``SEEN_KEY`` and ``DIGESTS_KEY``)."""
    other = other or {}
    more = _valid(other.get(SEEN_KEY))
    if more:
        record = _valid(training.get(SEEN_KEY))
        for key, slices in more.items():
            record[key] = sorted({*record.get(key, []), *slices})
        training[SEEN_KEY] = record
    digests = _digests(other.get(DIGESTS_KEY))
    if digests:
        training[DIGESTS_KEY] = sorted(_digests(training.get(DIGESTS_KEY)) | digests)[:MAX_SLICES]


def seen_in(training: Mapping[str, Any] | None, volume: Volume, among: Iterable[int] | None = None) -> list[int]:
    """The array slices of ``volume`` the model was fitted or calibrated on ([] when none or unknown).

    By the study's key and slice numbers, and by each slice's voxels (the same scan in another file). Voxels
    are hashed only for the slices ``among`` when given (the ones being scored): a viewer's "Score slice" on
    a 500-slice CT would otherwise hash the whole volume for one slice.
    """
    training = training or {}
    record = _valid(training.get(SEEN_KEY))
    found: set[int] = set()
    digests = _digests(training.get(DIGESTS_KEY))
    if record:
        from .caselib import array_slices, legacy_study_key, study_key

        found.update(array_slices(volume, record.get(study_key(volume), [])))
        legacy = legacy_study_key(volume)
        if legacy is not None and not digests:  # a model from before both keys and digests: its key alone
            found.update(array_slices(volume, record.get(legacy, [])))
    if digests:
        candidates = range(volume.n_slices) if among is None else sorted({int(k) for k in among})
        found.update(k for k in candidates if 0 <= k < volume.n_slices and slice_digest(volume.array[k]) in digests)
    return sorted(found)
