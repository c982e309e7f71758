"""Write results (heatmaps, masks) on the grid of the scan they came from, atomically."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import ConfigError, InvalidVolumeError
from ..fileio import atomic_path
from ..volume import Volume
from .base import short_reason, sitk_module
from .safety import native_output

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

    ``description`` goes into the header (NIfTI ``descrip``, at most 80 characters; ITK's file notes in
    NRRD/MHA), so a map says its unit wherever the file travels.

    Booleans are stored as uint8 and 64-bit floats as float32 (enough for scores, half the size). NIfTI is
    written by nibabel straight from the array (no second copy of a 600-slice map in memory); NRRD and MHA by
    SimpleITK. The file appears only when complete and read back whole (``engine.fileio.atomic_path``).
    """
    target = Path(path)
    write, verify = image_writer(volume, array, target, description)
    with atomic_path(target, verify=verify) as tmp:
        write(tmp)
    return target


def image_writer(volume: Volume, array: np.ndarray, target: str | Path,
                 description: str | None = None) -> tuple[Callable[[Path], None], Callable[[Path], None]]:
    """``write_like`` in two parts, for a result of several files (``engine.fileio.atomic_files``).

    Returns ``write(tmp)``, which writes the image for ``target`` to a temporary path, and ``verify(tmp)``,
    which reads it back.
    """
    suffix = _suffix(Path(target))
    arr = np.asarray(array)
    if arr.shape != volume.shape:
        raise InvalidVolumeError(f"array shape {arr.shape} does not match the volume grid {volume.shape}")
    if arr.dtype == bool:
        arr = np.ascontiguousarray(arr).view(np.uint8)
    elif arr.dtype == np.float64 or arr.dtype == np.float16:
        arr = arr.astype(np.float32)

    def write(tmp: Path) -> None:
        if suffix in (".nii", ".nii.gz"):
            _write_nifti(volume, arr, tmp, compress=suffix == ".nii.gz", description=description)
        else:
            _write_itk(volume, arr, tmp, suffix, description)

    return write, lambda tmp: verify_image(tmp, suffix, arr.shape)


def nifti_affine(volume: Volume) -> np.ndarray:
    """The volume's voxel-to-world matrix in NIfTI's RAS convention (ITK's geometry is LPS)."""
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(volume.spacing)
    lps[:3, 3] = volume.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _write_nifti(volume: Volume, arr: np.ndarray, path: Path, compress: bool, description: str | None) -> None:
    import gzip
    import io

    import nibabel

    affine = nifti_affine(volume)
    img = nibabel.Nifti1Image(np.ascontiguousarray(arr).transpose(2, 1, 0), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_data_offset(352)  # single-file NIfTI-1: the 348-byte header and an empty extension field
    if description:
        img.header["descrip"] = description[:79].encode("ascii", "replace")
    with path.open("wb") as raw:
        # no name, no time in the gzip header: the same volume gives the same bytes (it held the temporary name)
        fh = gzip.GzipFile(filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
        try:
            head = io.BytesIO()
            img.header.write_to(head)  # the header and its (empty) extension flag
            fh.write(head.getvalue().ljust(int(img.header.get_data_offset()), b"\0"))
            for z in range(arr.shape[0]):  # NIfTI's x fastest: each z slice of a C-ordered (z, y, x) array as is
                fh.write(np.ascontiguousarray(arr[z]).tobytes())
        finally:
            if compress:
                fh.close()


def _write_itk(volume: Volume, arr: np.ndarray, path: Path, suffix: str, description: str | None) -> None:
    sitk = sitk_module()
    img = volume.to_sitk(np.ascontiguousarray(arr))
    if description:
        img.SetMetaData("ITK_FileNotes", description[:80])
    staged = path.with_name(path.name + suffix)
    try:
        try:
            with native_output():  # ITK's own "** ERROR: … wrote only 0 of …" lines: the read-back says it once
                sitk.WriteImage(img, str(staged), useCompression=True)
        except RuntimeError as exc:  # ITK reports a full disk or a read-only folder this way
            raise OSError(f"could not write {path.name}: {short_reason(exc)}") from exc
        os.replace(staged, path)
    finally:
        if staged.exists():
            staged.unlink()


def verify_image(path: Path, suffix: str, shape: tuple[int, ...]) -> None:
    """Read a written image back far enough to know it is whole: header, grid and every voxel's bytes.

    ITK can report a full disk on stderr only ("wrote only 0 of … bytes") and return normally, and a
    truncated ``.nii.gz`` still opens: so NIfTI files are decompressed to the end (the gzip CRC and length
    are checked) and their byte count compared with what the header promises; other formats are read back.
    """
    if suffix in (".nii", ".nii.gz"):
        import gzip

        import nibabel

        opener = gzip.open if suffix == ".nii.gz" else open
        with opener(path, "rb") as fh:
            head = fh.read(352)
            total = len(head)
            while chunk := fh.read(1 << 22):
                total += len(chunk)
        import io

        hdr = nibabel.Nifti1Header.from_fileobj(io.BytesIO(head), check=False)
        dims = tuple(int(d) for d in hdr.get_data_shape())[::-1]
        if dims != tuple(shape):
            raise ValueError(f"the header says {dims}, the array was {tuple(shape)}")
        need = int(hdr.get_data_offset()) + int(np.prod(shape)) * hdr.get_data_dtype().itemsize
        if total < need:
            raise ValueError(f"{total} of {need} bytes")
        return
    sitk = sitk_module()
    reader = sitk.ImageFileReader()
    reader.SetImageIO({".nrrd": "NrrdImageIO", ".mha": "MetaImageIO"}[suffix])  # the temporary has no suffix
    reader.SetFileName(str(path))
    size = tuple(reader.Execute().GetSize())[::-1]
    if size != tuple(shape):
        raise ValueError(f"read back {size}, wrote {tuple(shape)}")
