"""Write results (heatmaps, masks) on the grid of the scan they came from, atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InvalidVolumeError
from ..fileio import atomic_path
from ..volume import Volume
from .base import short_reason, sitk_module

#: Single-file formats only: a header/data pair (.nhdr+.raw, .mhd+.raw) cannot be replaced atomically.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _suffix(path: Path) -> str:
    lower = path.name.lower()
    for s in WRITE_SUFFIXES:
        if lower.endswith(s):
            return s
    raise ConfigError(f"cannot write {path.name}: use one of {', '.join(WRITE_SUFFIXES)}")


def write_like(volume: Volume, array: np.ndarray, path: str | Path, description: str | None = None) -> Path:
    """Write ``array`` ((z, y, x), the volume's shape) to ``path`` with ``volume``'s spacing, origin, direction.

    ``description`` goes into the header (ITK's file notes: NIfTI ``descrip``, at most 80 characters), so a
    map says its unit wherever the file travels.

    Booleans are stored as uint8 and 64-bit floats as float32 (enough for scores, half the size). The file
    appears only when complete: SimpleITK picks its writer from the suffix, so it writes a sibling with the
    real suffix which then replaces ``atomic_path``'s temporary file.
    """
    sitk = sitk_module()
    target = Path(path)
    suffix = _suffix(target)
    arr = np.asarray(array)
    if arr.shape != volume.shape:
        raise InvalidVolumeError(f"array shape {arr.shape} does not match the volume grid {volume.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    img = volume.to_sitk(np.ascontiguousarray(arr))
    if description:
        img.SetMetaData("ITK_FileNotes", description[:80])
    with atomic_path(target) as tmp:
        staged = tmp.with_name(tmp.name + suffix)
        try:
            try:
                sitk.WriteImage(img, str(staged), useCompression=suffix != ".nii")
            except RuntimeError as exc:  # ITK reports a full disk or a read-only folder this way
                raise OSError(f"could not write {target}: {short_reason(exc)}") from exc
            os.replace(staged, tmp)
        finally:
            if staged.exists():
                staged.unlink()
    return target
