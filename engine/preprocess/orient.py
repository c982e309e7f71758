"""Bringing scans to one anatomical orientation, so slices from different sources look alike.

A detector fitted on MNI slices (RAS) and scoring a scan stored as LAS sees mirrored anatomy; resampling
is not needed for that, only axis flips and permutations, which SimpleITK's DICOMOrient does exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..volume import Volume


def orientation_of(volume: Volume) -> str:
    """The three-letter orientation code (e.g. ``LPS``) of a volume's direction cosines."""
    import SimpleITK as sitk

    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(volume.direction)


def reorient(volume: Volume, code: str = "LPS") -> Volume:
    """The same voxels permuted/flipped so the axes point as ``code`` says; geometry kept exact."""
    import SimpleITK as sitk

    code = code.upper()
    if len(code) != 3 or sorted(set(code) & set("LRAPSI")) != sorted(code) or \
            len({c.translate(str.maketrans("LRAPSI", "LLAASS")) for c in code}) != 3:
        raise ConfigError(f"{code!r} is not an orientation code such as LPS or RAS")
    if orientation_of(volume) == code:
        return volume
    img = sitk.DICOMOrient(volume.to_sitk(), code)
    out = Volume(sitk.GetArrayFromImage(img).astype(np.float32), spacing=img.GetSpacing(), origin=img.GetOrigin(),
                 direction=img.GetDirection(), modality=volume.modality, windows=list(volume.windows),
                 metadata=dict(volume.metadata), source=volume.source, warnings=list(volume.warnings),
                 intensity_reference=volume.intensity_reference)
    gaps = _gaps_after(volume, out)
    out.metadata.pop("selected_slices", None)
    if gaps is None:
        out.metadata.pop("gap_slices", None)
    else:
        out.metadata["gap_slices"] = gaps
    return out


def slices_before(before: Volume, after: Volume) -> list[int] | None:
    """For each slice of ``after`` (``reorient(before, …)``), the slice of ``before`` it is; None if none is.

    When the slice axis stayed the slice axis (kept or flipped), every reoriented slice is one slice of the
    scan as read, so what was learnt from it can still be named by the file's slice number (provenance,
    gap fillers); when the slices became another axis, no slice of ``after`` is a slice of ``before``.
    """
    z_before = np.asarray(before.direction).reshape(3, 3)[:, 2]
    z_after = np.asarray(after.direction).reshape(3, 3)[:, 2]
    n = after.n_slices
    if n != before.n_slices:
        return None
    if np.allclose(z_after, z_before, atol=1e-6):
        return list(range(n))
    if np.allclose(z_after, -z_before, atol=1e-6):
        return list(range(n - 1, -1, -1))
    return None


def _gaps_after(before: Volume, after: Volume) -> list[int] | None:
    """The gap-filler slices (``io.base.gap_indices``) in the reoriented array, when z stayed the slice axis."""
    from ..io.base import gap_indices

    gaps = set(gap_indices(before))
    if not gaps:
        return None
    mapping = slices_before(before, after)
    if mapping is None:
        return None  # the slices became another axis: nothing is a whole empty slice any more
    return sorted(k for k, b in enumerate(mapping) if b in gaps)
