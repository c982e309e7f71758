"""Readers that turn files and folders into a ``Volume``, and the writer that puts results back on its grid.

``read_scan`` is the one entry point: it finds a reader in the registry (``reader_for``), enforces the
memory budget before pixels are read, and applies the NaN policy. Formats: DICOM folders and files
(pydicom), NIfTI, NRRD, MetaImage, PNG/JPEG/TIFF (SimpleITK). Both libraries are imported only when a
file of theirs is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, EmptyInputError, NotAScanError
from ..progress import CancelToken, ProgressCallback, report
from ..volume import Volume
from .base import (
    DEFAULT_MAX_BYTES,
    MAX_BYTES_ENV,
    NAN_POLICIES,
    Reader,
    apply_nan_policy,
    gap_indices,
    reader_for,
    register_reader,
    registered_readers,
    resolve_max_bytes,
)
from .describe import describe, orientation_code
from .dicom import GAP_MODES, DicomFileReader, DicomFolderReader, list_series_in
from .itk import MetaImageReader, NiftiReader, NrrdReader, PictureReader
from .safety import check_source
from .spec import load_spec, parse_selection, split_spec
from .write import write_like

__all__ = [
    "DEFAULT_MAX_BYTES",
    "GAP_MODES",
    "MAX_BYTES_ENV",
    "NAN_POLICIES",
    "Reader",
    "describe",
    "gap_indices",
    "list_series",
    "load_spec",
    "orientation_code",
    "parse_selection",
    "read_scan",
    "reader_for",
    "register_reader",
    "registered_readers",
    "split_spec",
    "write_like",
]

for _reader in (DicomFolderReader(), DicomFileReader(), NiftiReader(), NrrdReader(), MetaImageReader(),
                PictureReader()):
    register_reader(_reader)


def read_scan(path: str | Path, *, series_uid: str | None = None, nan_policy: str | None = None,
              max_bytes: int | None = None, modality: str | None = None, gaps: str = "fill",
              progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Volume:
    """Read a scan file or DICOM folder into a float32 (z, y, x) ``Volume``.

    Args:
        path: a file in a known format, or a folder holding DICOM files (searched recursively).
        series_uid: which series to read when a DICOM folder holds several.
        nan_policy: ``"refuse"`` NaN/inf voxels (InvalidVolumeError) or ``"clean"`` them to the lowest finite
            value with a warning; None: ``$ANOMALENS_NAN``, else refuse (``io.base.default_nan_policy``).
        max_bytes: memory budget for the float32 volume; default ``ANOMALENS_MAX_SCAN_BYTES`` or 4 GiB.
        modality: override the modality, e.g. ``"CT"`` for a NIfTI file known to hold Hounsfield units.
        gaps: DICOM series with missing slices: ``"fill"`` inserts empty slices at the missing positions
            (listed in ``metadata["gap_slices"]``, with a warning), ``"refuse"`` raises, ``"stack"`` stacks
            the slices one after another as if none were missing. Irregular positions are refused unless
            ``"stack"``.
        progress: ``progress(fraction, message)`` while a DICOM folder is read.
        cancel: token checked between files.

    Raises:
        NotAScanError, CorruptFileError, EmptyInputError, MultipleSeriesError, InvalidVolumeError,
        TooLargeError, ConfigError: each with a message meant for the user.
    """
    if nan_policy is not None and nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy must be one of {', '.join(NAN_POLICIES)}, got {nan_policy!r}")
    if gaps not in GAP_MODES:
        raise ConfigError(f"gaps must be one of {', '.join(GAP_MODES)}, got {gaps!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise NotAScanError(f"{p} does not exist")
    check_source(p)  # devices, pipes, system folders: refused before anything opens them
    if p.is_file() and p.stat().st_size == 0:
        raise EmptyInputError(f"{p} is an empty file")
    budget = resolve_max_bytes(max_bytes)
    reader = reader_for(p)
    # Values beyond float32 (a double image, a damaged header's scale) become inf in the cast; the NaN
    # policy below refuses or cleans them with a message, so numpy's own overflow warning is noise here.
    with np.errstate(over="ignore", invalid="ignore"):
        volume = reader.read(p, series_uid=series_uid, max_bytes=budget, progress=progress, cancel=cancel,
                             gaps=gaps)
    if modality:
        volume.modality = modality.upper()
    volume.source = p
    volume = apply_nan_policy(volume, nan_policy)
    report(progress, 1.0, "read the scan")
    return volume


def list_series(folder: str | Path, *, max_bytes: int | None = None) -> list[dict]:
    """The DICOM series in a folder (or file): ``uid``, ``description``, ``modality``, ``n_files`` and more.

    Only technical fields: no patient names, IDs or dates, so the list can be shown or logged.
    """
    p = Path(folder).expanduser()
    if not p.exists():
        raise NotAScanError(f"{p} does not exist")
    check_source(p)
    return list_series_in(p, resolve_max_bytes(max_bytes))
