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
                 metadata=dict(volume.metadata), source=volume.source, warnings=list(volume.warnings))
    out.metadata.pop("selected_slices", None)
    return out
