"""Formats SimpleITK reads: NIfTI, NRRD, MetaImage and 2-D pictures (PNG, JPEG, TIFF).

The header is read first (``ReadImageInformation``) so the memory budget is checked before any voxel is
loaded, and a 4-D file is cut down to its first 3-D volume while reading rather than after. Only the ITK
calls themselves run with stdout/stderr captured (``safety.native_output``); the Python header checks and
nibabel's voxel reading of NIfTI do not print natively, so other threads' output is never lost to them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import CorruptFileError, InvalidVolumeError
from ..volume import Volume
from .base import (
    Reader,
    check_budget,
    geometry_or_default,
    library_errors,
    resolve_max_bytes,
    sitk_module,
    to_grey,
)
from .headers import check_metaimage, check_nifti, check_nrrd, nifti_spacing_missing
from .safety import native_output

#: Header fields copied from SimpleITK's metadata dictionary: coordinate-system codes only. Free-text fields
#: (NIfTI ``descrip``/``aux_file``, NRRD comments, PNG text chunks) can hold names and are never copied.
ITK_ALLOWED = ("qform_code_name", "sform_code_name", "NRRD_space")

_MET_MODALITY = {"MET_MOD_CT": "CT", "MET_MOD_MR": "MR", "MET_MOD_NM": "NM", "MET_MOD_US": "US"}


def _head(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _tail(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - n))
            return fh.read(n)
    except OSError:
        return b""


#: ``voxels(path, itk_size) -> array (z, y, x)`` — an alternative pixel loader for one format.
VoxelLoader = Callable[[Path, list[int]], np.ndarray]
#: ``check(path)`` raises a ``CorruptFileError`` for a header a native reader must not see (``headers``).
HeaderCheck = Callable[[Path], None]


def read_with_sitk(path: Path, image_io: str, fmt: str, max_bytes: int,
                   voxels: VoxelLoader | None = None, check: HeaderCheck | None = None) -> Volume:
    """Read ``path`` with one named ITK ImageIO into a ``Volume`` (see the module docstring).

    ``voxels`` replaces ITK's pixel reading for single-component images while ITK still supplies the
    header and geometry: NIfTI uses it because ITK 5.4 silently zeroes NaN/inf voxels and pads truncated
    files with zeros, both of which would defeat the checks that follow. ``check`` validates the header in
    Python first: ITK crashes the process on some impossible headers instead of raising.
    """
    if check is not None:
        with library_errors(path, fmt):
            check(path)
    sitk = sitk_module()
    warnings: list[str] = []
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO(image_io)
    with library_errors(path, fmt):
        with native_output():
            reader.ReadImageInformation()
        size = [int(s) for s in reader.GetSize()]
        dim = int(reader.GetDimension())
        components = int(reader.GetNumberOfComponents())
        spacing = [float(v) for v in reader.GetSpacing()]
        origin = [float(v) for v in reader.GetOrigin()]
        direction = np.asarray(reader.GetDirection(), dtype=float).reshape(dim, dim)
        pixel_type = sitk.GetPixelIDValueAsString(reader.GetPixelID())
        header = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys() if k in ITK_ALLOWED or k == "Modality"}
    if dim < 2:
        raise InvalidVolumeError(f"{path.name} holds {dim}-D data; a scan needs at least 2 dimensions")
    if any(s <= 0 for s in size):
        raise CorruptFileError(f"{path.name} looks like {fmt} but its header gives no image size {size} (damaged?)")
    if dim > 3 and math.prod(size[3:]) > 1:
        dims = "×".join(str(s) for s in size)
        warnings.append(f"the file holds {dim}-D data ({dims}); using the first 3-D volume")
    shape = tuple(reversed(size[:3])) if dim >= 3 else (1, size[1], size[0])
    check_budget(shape + ((components,) if components > 1 else ()), max_bytes, path.name)
    if voxels is not None and components == 1:
        array, note = voxels(path, size), None
        if np.iscomplexobj(array):
            array = np.abs(array)
            warnings.append("the file holds complex values; using their magnitude")
    else:
        if dim > 3:
            reader.SetExtractIndex([0] * dim)
            reader.SetExtractSize(size[:3] + [0] * (dim - 3))
        with library_errors(path, fmt):
            with native_output():
                image = reader.Execute()
            # A view on ITK's buffer, made grey and float32 (what Volume keeps) before the buffer goes: no
            # second copy of the source beside them (a numpy copy of ITK's voxels was one).
            array, note = _grey_float32(sitk.GetArrayViewFromImage(image), components, warnings)
            del image
    if note:
        warnings.append(note)
    if dim == 2:
        array = array[None]
        spacing, origin = [*spacing, 1.0], [*origin, 0.0]
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3
    if array.shape != shape:
        raise CorruptFileError(f"{path.name}: read data of shape {array.shape}, the header said {shape}")
    spacing, origin, direction3 = geometry_or_default(spacing[:3], origin[:3], direction[:3, :3].ravel().tolist(),
                                                      warnings)
    meta: dict[str, Any] = {"format": fmt, "pixel_type": pixel_type, "file_size": size, "components": components}
    meta.update({k: v for k, v in header.items() if k in ITK_ALLOWED})
    return Volume(array=array, spacing=spacing, origin=origin, direction=direction3,
                  modality=_MET_MODALITY.get(header.get("Modality", ""), "OT"), metadata=meta, source=path,
                  warnings=warnings)


def _grey_float32(view: np.ndarray, components: int, warnings: list[str]) -> tuple[np.ndarray, str | None]:
    """``view`` (ITK's voxels, read-only) as an array of its own: magnitude if complex, grey, float32."""
    values = view
    if np.iscomplexobj(view):
        values = np.abs(view)  # an array of its own already
        warnings.append("the file holds complex values; using their magnitude")
    grey, note = to_grey(values, components)
    if np.may_share_memory(grey, view):  # still ITK's buffer, freed with its image: copy it out
        return np.array(grey, dtype=np.float32, copy=True), note
    return grey.astype(np.float32, copy=False), note


_QUIET = threading.local()


class _QuietReads(logging.Filter):
    """Drops nibabel's header-repair notes ("vox offset ... not SPM compatible") logged by our own reads.

    nibabel prints them to stderr through a handler of its own; to a user they are noise before the
    result (or the one error line). Other threads' use of nibabel keeps its messages.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "on", False)


def _quiet_nibabel() -> None:
    logger = logging.getLogger("nibabel.global")
    if not any(isinstance(f, _QuietReads) for f in logger.filters):
        logger.addFilter(_QuietReads())


def nibabel_voxels(path: Path, size: list[int]) -> np.ndarray:
    """The first 3-D volume of a NIfTI file via nibabel, in (z, y, x) order, NaN/inf kept, truncation caught."""
    import nibabel as nib

    _quiet_nibabel()
    _QUIET.on = True
    try:
        return _nibabel_voxels(nib, path, size)
    finally:
        _QUIET.on = False


def _nibabel_voxels(nib: Any, path: Path, size: list[int]) -> np.ndarray:
    with library_errors(path, "NIfTI"):
        proxy = nib.load(str(path), mmap=False).dataobj
        file_shape = tuple(int(s) for s in proxy.shape)
        if file_shape[:3] != tuple(size[:3]):
            raise CorruptFileError(f"{path.name}: its header is inconsistent (dimensions {file_shape} vs {size})")
        index = (slice(None),) * min(3, len(file_shape)) + (0,) * max(0, len(file_shape) - 3)
        data = np.asanyarray(proxy[index])
    return np.ascontiguousarray(data.T)


class SimpleITKReader(Reader):
    """A format read by one ITK ImageIO, recognised by suffix or by magic bytes at the start of the file."""

    image_io: ClassVar[str] = ""
    format_name: ClassVar[str] = ""
    header_check: ClassVar[HeaderCheck | None] = None
    magic: ClassVar[tuple[tuple[int, bytes], ...]] = ()  # (offset, bytes)

    def verify_magic(self, path: Path) -> bool:
        if not self.magic:
            return False
        head = _head(path, max(off + len(m) for off, m in self.magic))
        return any(head[off:off + len(m)] == m for off, m in self.magic)

    def verify(self, path: Path) -> bool:
        return path.is_file() and (self.verify_suffix(path) or self.verify_magic(path))

    def io_for(self, path: Path) -> str:
        return self.image_io

    def read(self, path: Path, **opts: Any) -> Volume:
        budget = resolve_max_bytes(opts.get("max_bytes"))
        return read_with_sitk(path, self.io_for(path), self.format_name, budget, check=type(self).header_check)


class NiftiReader(SimpleITKReader):
    name = "nifti"
    suffixes = (".nii", ".nii.gz")
    image_io = "NiftiImageIO"
    format_name = "NIfTI"
    magic = ((344, b"n+1\0"), (344, b"ni1\0"), (4, b"n+2\0"))

    def read(self, path: Path, **opts: Any) -> Volume:
        volume = read_with_sitk(path, self.image_io, self.format_name, resolve_max_bytes(opts.get("max_bytes")),
                                voxels=nibabel_voxels, check=check_nifti)
        if nifti_spacing_missing(path):
            volume.warnings.append("the file gives no voxel size (pixdim 0); assuming 1 mm, so volumes in mL and "
                                   "the model's field of view rest on a guess")
        return volume


class NrrdReader(SimpleITKReader):
    name = "nrrd"
    suffixes = (".nrrd", ".nhdr")
    image_io = "NrrdImageIO"
    format_name = "NRRD"
    magic = ((0, b"NRRD"),)
    header_check = staticmethod(check_nrrd)


class MetaImageReader(SimpleITKReader):
    name = "metaimage"
    suffixes = (".mha", ".mhd")
    image_io = "MetaImageIO"
    format_name = "MetaImage"
    magic = ((0, b"ObjectType"), (0, b"NDims"))
    header_check = staticmethod(check_metaimage)


class PictureReader(SimpleITKReader):
    """PNG, JPEG or TIFF: a single slice (or a TIFF stack); colour becomes grey."""

    name = "picture"
    suffixes = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
    format_name = "picture"
    magic = ((0, b"\x89PNG\r\n\x1a\n"), (0, b"\xff\xd8\xff"), (0, b"II*\0"), (0, b"MM\0*"), (0, b"II+\0"))

    def io_for(self, path: Path) -> str:
        # Magic first: pictures are often saved under the wrong suffix (a JPEG named .png).
        head = _head(path, 8)
        if head.startswith(b"\x89PNG"):
            return "PNGImageIO"
        if head.startswith(b"\xff\xd8\xff"):
            return "JPEGImageIO"
        if head[:4] in (b"II*\0", b"MM\0*", b"II+\0"):
            return "TIFFImageIO"
        suffix = path.suffix.lower()
        return {".png": "PNGImageIO", ".jpg": "JPEGImageIO", ".jpeg": "JPEGImageIO"}.get(suffix, "TIFFImageIO")

    def read(self, path: Path, **opts: Any) -> Volume:
        io = self.io_for(path)
        volume = read_with_sitk(path, io, io.removesuffix("ImageIO"), resolve_max_bytes(opts.get("max_bytes")))
        if io == "JPEGImageIO" and b"\xff\xd9" not in _tail(path, 4096):
            # libjpeg pads a cut-off JPEG with grey and only prints a warning; say so where the user sees it.
            volume.warnings.append("the JPEG file seems truncated (no end marker); its lower part may be blank")
        volume.metadata["patient_geometry"] = False  # a picture's rows and columns are no patient directions
        return volume
