"""A short, identifier-free summary of a volume: what ``anomalens info`` prints."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..volume import Volume
from .base import gap_indices

#: Patient-space direction each letter names, in DICOM/ITK LPS world coordinates (+x left, +y posterior).
_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def orientation_code(direction: tuple[float, ...] | list[float] | np.ndarray) -> str:
    """Three letters naming where each image axis (x, y, z) points, e.g. ``LPS`` or ``RAS``.

    This is ITK's and nibabel's ``aff2axcodes`` convention: the identity direction is ``LPS`` because +x
    points to the patient's left in DICOM world space. An axis that is oblique gets its closest letter; an
    axis that is not a direction at all (a corrupt header) gets ``?``.
    """
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    letters = ["?"] * 3
    weight = np.where(np.isfinite(d), np.abs(d), 0.0)
    for axis in range(3):  # an axis that is not a direction at all (a corrupt header) keeps "?"
        if weight[:, axis].max() < 1e-6:
            weight[:, axis] = -1.0
    # Greedy on the strongest remaining cosine, as ITK does, so oblique scans get the same code as in ITK.
    for _ in range(3):
        world, axis = np.unravel_index(int(np.argmax(weight)), weight.shape)
        if weight[world, axis] <= 0:
            break
        letters[axis] = _LETTERS[world][0] if d[world, axis] > 0 else _LETTERS[world][1]
        weight[world, :] = -1.0
        weight[:, axis] = -1.0
    return "".join(letters)


def units(volume: Volume) -> str:
    """Intensity units a reader can vouch for: Hounsfield units for CT, PET's own units, else arbitrary."""
    if volume.modality == "CT":
        rescale_type = str(volume.metadata.get("RescaleType", "HU") or "HU").upper()
        return "HU" if rescale_type in ("HU", "US") else rescale_type
    if volume.modality == "PT" and volume.metadata.get("Units"):
        return str(volume.metadata["Units"])
    return "arbitrary"


def describe(volume: Volume) -> dict[str, Any]:
    """Shape, spacing, orientation, modality, units, intensity range, series UID and warnings.

    ``shape`` and ``spacing`` are both given in array order (z, y, x) so they read side by side;
    ``Volume.spacing`` itself keeps SimpleITK's (x, y, z).
    """
    arr = volume.array
    finite = arr[np.isfinite(arr)]
    rng = [float(finite.min()), float(finite.max())] if finite.size else [float("nan"), float("nan")]
    info: dict[str, Any] = {
        "source": str(volume.source) if volume.source is not None else "",
        "format": volume.metadata.get("format", ""),
        "axes": "z, y, x",
        "shape": list(volume.shape),
        "spacing": [round(s, 4) for s in volume.spacing_zyx],
        "spacing_xyz_mm": [round(s, 4) for s in volume.spacing],
        "orientation": orientation_code(volume.direction),
        "modality": volume.modality,
        "units": units(volume),
        "intensity_range": [round(v, 3) for v in rng],
        "series_uid": volume.metadata.get("series_uid", ""),
        "series_description": volume.metadata.get("SeriesDescription", ""),
        "windows": [f"{w.name or 'window'} C{w.center:g}/W{w.width:g}" for w in volume.windows],
    }
    if "selected_slices" in volume.metadata:
        info["selected_slices"] = list(volume.metadata["selected_slices"])
    gaps = gap_indices(volume)
    if gaps:
        info["gap_slices"] = gaps  # empty slices inserted where a DICOM series misses some; not scan data
    info["warnings"] = list(volume.warnings)
    return info
