"""DICOM: a folder of slices (grouped into series and sorted in space) or one file, single- or multi-frame.

Every image, whether a single-frame file or one frame of an enhanced multi-frame object, becomes a
``Frame`` with its own position, orientation and rescale. A volume is then built the same way for all:
sort the frames along the slice normal, keep the first image at each position, check the spacing for
gaps, and only then read pixels. Headers are read with ``stop_before_pixels`` so grouping a large folder
never touches pixel data of series the user did not ask for.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ConfigError,
    CorruptFileError,
    EmptyInputError,
    InvalidVolumeError,
    MultipleSeriesError,
    NotAScanError,
    ScanReadError,
    TooLargeError,
)
from ..logredact import remember
from ..progress import CancelToken, ProgressCallback, check, report
from ..volume import Volume, Window
from .base import (
    Reader,
    check_budget,
    geometry_or_default,
    library_errors,
    resolve_max_bytes,
    short_reason,
    sitk_module,
    to_grey,
)
from .metadata import dicom_metadata, identifying_words, scrub
from .safety import FolderListing, native_output, walk_regular_files

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: Two frames closer than this along the slice normal (mm) are taken to be at the same position.
POSITION_TOLERANCE_MM = 0.01
#: A step between neighbouring slices this many times the usual step means slices are missing.
GAP_FACTOR = 1.5
#: What to do with missing slices (see ``layout``): insert empty ones at their true positions, refuse the
#: series, or stack the slices one after another as if nothing were missing (positions then wrong).
GAP_MODES = ("fill", "refuse", "stack")
#: A slice further than this fraction of the slice step from its place on a uniform grid is at an
#: irregular position: no uniform grid holds it where the scanner put it.
IRREGULAR_FRACTION = 0.1
#: Slices off the grid by more than this fraction (but less than the above) are placed with a warning.
NOTE_FRACTION = 0.02
#: Scanners that write positions rounded to 0.1 mm put thin slices up to 0.05 mm (plus the fit's own error) off
#: any grid: never noted nor refused, whatever the slice step.
ROUNDING_MM = 0.075


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:  # pragma: no cover - a declared dependency
        raise NotAScanError("reading DICOM needs the 'pydicom' package: pip install pydicom") from None
    return pydicom


@dataclass
class Frame:
    """One 2-D image of a series with everything needed to place it in space and in intensity."""

    path: Path
    index: int | None  # frame number inside a multi-frame file; None when the file holds one image
    rows: int
    cols: int
    position: np.ndarray | None  # ImagePositionPatient (mm, LPS)
    orientation: np.ndarray | None  # (6,) unit row cosines then column cosines
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns), as DICOM orders it
    step: float | None  # SpacingBetweenSlices, else SliceThickness: the z spacing when positions are missing
    slope: float
    intercept: float
    order: tuple  # acquisition order, to keep the first image when several share a position
    windows: list[Window] = field(default_factory=list)


@dataclass
class FileHeader:
    """What one DICOM file says about itself, read without its pixel data."""

    path: Path
    uid: str
    description: str
    modality: str
    series_number: int | None
    photometric: str
    forced: bool  # read without a DICOM preamble; pixel reading must force too
    frames: list[Frame]
    metadata: dict[str, Any]


# --------------------------------------------------------------------------------------------- headers


def is_dicom_file(path: Path) -> bool:
    """Cheap test: the ``DICM`` magic after the 128-byte preamble, or a DICOM suffix."""
    if not path.is_file():
        return False
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _may_force(path: Path) -> bool:
    """Files worth parsing without a preamble: DICOM suffixes, or no suffix at all (``IM0001``)."""
    suffix = path.suffix.lower()
    return suffix in DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit()


def dcmread(path: Path, **kwargs: Any) -> Any:
    """``pydicom.dcmread`` without its warnings about quirks it recovered from (they mean nothing to users)."""
    pydicom = _pydicom()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(str(path), **kwargs)


def probe(path: Path) -> tuple[Any, bool] | None:
    """The header dataset of a DICOM file and whether it needed ``force``; None if it is not DICOM."""
    _pydicom()
    from pydicom.errors import InvalidDicomError

    with library_errors(path, "DICOM"):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            if not _may_force(path):
                return None
        else:
            if len(ds) == 0:
                raise CorruptFileError(f"{path.name} holds nothing after its DICOM file header (truncated?)")
            return ds, False
    try:
        ds = dcmread(path, stop_before_pixels=True, force=True)
        if "Rows" not in ds or "Columns" not in ds:
            return None
    except Exception:  # without a preamble, failing to parse just means "not DICOM"
        return None
    return ds, True


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        seq = list(value) if not isinstance(value, str | bytes) and hasattr(value, "__iter__") else [value]
        arr = np.array([float(v) for v in seq], dtype=float)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _float(value: Any) -> float | None:
    arr = _floats(value, 1)
    return None if arr is None else float(arr[0])


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def _orientation(value: Any) -> np.ndarray | None:
    iop = _floats(value, 6)
    if iop is None:
        return None
    row, col = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(row), np.linalg.norm(col)
    if nr < 1e-6 or nc < 1e-6:
        return None
    row, col = row / nr, col / nc
    if abs(float(row @ col)) > 1e-2:
        return None
    return np.concatenate([row, col])


def _windows(center: Any, width: Any, explanation: Any) -> list[Window]:
    def as_list(v: Any) -> list:
        if v is None:
            return []
        return list(v) if not isinstance(v, str | bytes) and hasattr(v, "__iter__") else [v]

    names = [str(n) for n in as_list(explanation)]
    out: list[Window] = []
    for i, (c, w) in enumerate(zip(as_list(center), as_list(width), strict=False)):
        c, w = _float(c), _float(w)
        if c is None or w is None or w <= 0:
            continue
        win = Window(center=c, width=w, name=names[i] if i < len(names) else "")
        if win not in out:
            out.append(win)
    return out


def _item(groups: Iterable[Any], sequence: str, attr: str) -> Any:
    """``attr`` from the first functional group (per-frame, then shared) whose ``sequence`` has it."""
    for group in groups:
        if group is None:
            continue
        seq = group.get(sequence)
        if seq is None or len(seq) == 0:
            continue
        value = seq[0].get(attr)
        if value is not None:
            return value
    return None


def header_from_dataset(ds: Any, path: Path, forced: bool, max_bytes: int) -> FileHeader | None:
    """A ``FileHeader`` for a dataset that holds an image; None for reports, structure sets, DICOMDIRs."""
    with library_errors(path, "DICOM"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values are parsed lazily, here: pydicom's complaints would surface
        if "Rows" not in ds or "Columns" not in ds:
            return None
        rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
        if rows <= 0 or cols <= 0:
            raise CorruptFileError(f"{path.name}: the image size {rows}×{cols} is impossible")
        n = max(1, _int(ds.get("NumberOfFrames"), 1))
        check_budget((n, rows, cols), max_bytes, f"{path.name}")
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq is not None and len(shared_seq) else None
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        per_frame = list(per_frame) if per_frame is not None else []
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        iop = _orientation(ds.get("ImageOrientationPatient"))
        offsets = _floats(ds.get("GridFrameOffsetVector"), n) if n > 1 else None  # RT dose grids
        base_order = (_int(ds.get("TemporalPositionIdentifier")), _int(ds.get("AcquisitionNumber")),
                      _int(ds.get("InstanceNumber")))
        frames: list[Frame] = []
        for i in range(n):
            groups = (per_frame[i] if i < len(per_frame) else None, shared)
            position = _floats(_item(groups, "PlanePositionSequence", "ImagePositionPatient"), 3)
            orientation = _orientation(_item(groups, "PlaneOrientationSequence", "ImageOrientationPatient"))
            orientation = orientation if orientation is not None else iop
            if position is None and ipp is not None:
                if offsets is not None and orientation is not None:
                    position = ipp + np.cross(orientation[:3], orientation[3:]) * offsets[i]
                elif n == 1:
                    position = ipp
            spacing = _floats(_item(groups, "PixelMeasuresSequence", "PixelSpacing"), 2)
            if spacing is None:
                spacing = _floats(ds.get("PixelSpacing"), 2)
            if spacing is None:
                spacing = _floats(ds.get("ImagerPixelSpacing"), 2)
            step = next((v for v in (
                _float(_item(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")),
                _float(ds.get("SpacingBetweenSlices")),
                _float(_item(groups, "PixelMeasuresSequence", "SliceThickness")),
                _float(ds.get("SliceThickness")),
            ) if v is not None and v > 0), None)
            slope = _float(_item(groups, "PixelValueTransformationSequence", "RescaleSlope"))
            slope = slope if slope is not None else _float(ds.get("RescaleSlope"))
            intercept = _float(_item(groups, "PixelValueTransformationSequence", "RescaleIntercept"))
            intercept = intercept if intercept is not None else _float(ds.get("RescaleIntercept"))
            windows = _windows(_item(groups, "FrameVOILUTSequence", "WindowCenter"),
                               _item(groups, "FrameVOILUTSequence", "WindowWidth"),
                               _item(groups, "FrameVOILUTSequence", "WindowCenterWidthExplanation"))
            if not windows:
                windows = _windows(ds.get("WindowCenter"), ds.get("WindowWidth"),
                                   ds.get("WindowCenterWidthExplanation"))
            temporal = _int(_item(groups, "FrameContentSequence", "TemporalPositionIndex"), base_order[0])
            frames.append(Frame(
                path=path, index=i if n > 1 else None, rows=rows, cols=cols, position=position,
                orientation=orientation,
                pixel_spacing=None if spacing is None or np.any(spacing <= 0) else (spacing[0], spacing[1]),
                step=step,
                slope=slope if slope not in (None, 0.0) else 1.0, intercept=intercept or 0.0,
                order=(temporal, *base_order[1:], i, path.name), windows=windows,
            ))
        meta = dicom_metadata(ds)
        return FileHeader(
            path=path, uid=str(ds.get("SeriesInstanceUID", "") or ""),
            # typed by a technician, it may hold the patient's name: it is shown in errors and lists of series
            description=scrub(str(ds.get("SeriesDescription", "") or ""), identifying_words(ds)),
            modality=str(ds.get("Modality", "") or "OT").upper(),
            series_number=_int(ds.get("SeriesNumber"), -1) if ds.get("SeriesNumber") not in (None, "") else None,
            photometric=str(ds.get("PhotometricInterpretation", "") or "").upper(),
            forced=forced, frames=frames, metadata=meta,
        )


def read_header(path: Path, max_bytes: int) -> FileHeader:
    """The header of a file the user named as DICOM; errors say what is wrong with it."""
    probed = probe(path)
    if probed is None:
        raise NotAScanError(f"{path.name} is not a DICOM image file")
    header = header_from_dataset(probed[0], path, probed[1], max_bytes)
    if header is None:
        raise EmptyInputError(f"{path.name} is a DICOM object without an image (a report, structure set or index?)")
    return header


# --------------------------------------------------------------------------------------------- folders


@dataclass
class FolderScan:
    headers: list[FileHeader]
    n_files: int
    other: list[Path]  # not DICOM, or DICOM without an image
    damaged: list[tuple[Path, ScanReadError | TooLargeError]]
    special: list[Path] = field(default_factory=list)  # FIFOs, devices, sockets, broken links: never opened


def _walk(folder: Path) -> FolderListing:
    return walk_regular_files(folder, skip=frozenset({"DICOMDIR"}))


def scan_folder(folder: Path, max_bytes: int, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> FolderScan:
    """Read the header of every file below ``folder`` (recursively), sorting them into usable and not."""
    listing = _walk(folder)
    files = listing.files
    scan = FolderScan(headers=[], n_files=len(files), other=[], damaged=[], special=listing.special)
    for i, path in enumerate(files):
        check(cancel)
        try:
            probed = probe(path)
            header = None if probed is None else header_from_dataset(probed[0], path, probed[1], max_bytes)
        except (ScanReadError, TooLargeError) as exc:  # one bad file must not hide the rest of the folder
            scan.damaged.append((path, exc))
            continue
        if header is None:
            scan.other.append(path)
        else:
            scan.headers.append(header)
        if i % 16 == 0:
            report(progress, (i + 1) / max(len(files), 1), f"read {i + 1}/{len(files)} DICOM headers")
    return scan


def _group(headers: list[FileHeader]) -> dict[str, list[FileHeader]]:
    groups: dict[str, list[FileHeader]] = {}
    for h in headers:
        groups.setdefault(h.uid, []).append(h)
    return groups


def _series_rows(groups: dict[str, list[FileHeader]]) -> list[dict]:
    rows = []
    for uid, hs in groups.items():
        first = hs[0]
        rows.append({
            "uid": uid, "description": first.description, "modality": first.modality, "n_files": len(hs),
            "n_images": sum(len(h.frames) for h in hs), "series_number": first.series_number,
            "size": f"{first.frames[0].cols}×{first.frames[0].rows}",
        })
    rows.sort(key=lambda r: (r["series_number"] is None, r["series_number"] or 0, r["uid"]))
    return rows


def list_series_in(path: Path, max_bytes: int) -> list[dict]:
    """The series below a folder (or in one file): UID, description, modality, file and image counts."""
    if path.is_file():
        return _series_rows(_group([read_header(path, max_bytes)]))
    scan = scan_folder(path, max_bytes)
    return _series_rows(_group(scan.headers))


def _describe_series(rows: list[dict]) -> str:
    """The series of a folder on one line (an error is one line: ``1.2.3 'AX T1' (MR, 24 files, …); 1.2.4 …``)."""
    lines = []
    for r in rows:
        desc = f" {r['description']!r}" if r["description"] else ""
        lines.append(f"{r['uid'] or '(no UID)'}{desc} ({r['modality']}, {r['n_files']} files, {r['size']})")
    return "; ".join(lines)


def _example(paths: list[Path], folder: Path) -> str:
    """A few of ``paths`` by name, for a message the user acts on (which file to move away).

    Each is registered for redaction: the CLI's error lines and every log show them as ``<path:…>`` tokens
    unless ``--keep-paths`` (a file beside a series, ``Doe^John report.pdf``, reached the batch manifest).
    """
    for p in paths[:3]:
        remember(p)
    names = [str(p.relative_to(folder)) for p in paths[:3]]
    return ", ".join(names) + (", ..." if len(paths) > 3 else "")


def read_folder(folder: Path, series_uid: str | None, max_bytes: int,
                progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                gaps: str = "fill") -> Volume:
    scan = scan_folder(folder, max_bytes, lambda f, m: report(progress, 0.3 * f, m), cancel)
    if scan.n_files == 0:
        if scan.special:
            raise EmptyInputError(f"the folder {folder} holds no regular files, only {len(scan.special)} pipe(s), "
                                  f"device(s), socket(s) or broken link(s) such as {_example(scan.special, folder)}")
        raise EmptyInputError(f"the folder {folder} holds no files")
    if not scan.headers:
        if scan.damaged:
            exc = scan.damaged[0][1]
            remember(scan.damaged[0][0])  # its reader's message names it
            if len(scan.damaged) == 1 and scan.n_files == 1:
                raise exc
            raise type(exc)(f"none of the {scan.n_files} files in {folder} could be read as DICOM; e.g. {exc}")
        raise NotAScanError(
            f"the folder {folder} holds no DICOM images ({scan.n_files} other files, e.g. "
            f"{_example(scan.other, folder)}); to read another format, give the file itself"
        )
    groups = _group(scan.headers)
    rows = _series_rows(groups)
    if series_uid is not None:
        if series_uid not in groups:
            raise ConfigError(f"series {series_uid} is not in {folder}; it holds: {_describe_series(rows)}")
        uid = series_uid
    elif len(groups) > 1:
        raise MultipleSeriesError(
            f"the folder {folder} holds {len(groups)} series; pick one with --series UID "
            f"(series_uid= in Python): {_describe_series(rows)}",
            series=rows,
        )
    else:
        uid = next(iter(groups))
    warnings: list[str] = []
    if scan.damaged:
        warnings.append(f"skipped {len(scan.damaged)} damaged DICOM file(s): "
                        f"{_example([p for p, _ in scan.damaged], folder)} ({scan.damaged[0][1]})")
    if scan.other:  # counted, not named: files beside a series are often named after the patient
        warnings.append(f"ignored {len(scan.other)} file(s) in the folder that are not DICOM images")
    if scan.special:
        warnings.append(f"skipped {len(scan.special)} entr{'y' if len(scan.special) == 1 else 'ies'} that are not "
                        f"regular files (pipes, devices, sockets or broken links): {_example(scan.special, folder)}")
    volume = stack(groups[uid], max_bytes, warnings, lambda f, m: report(progress, 0.3 + 0.7 * f, m), cancel,
                   gaps=gaps)
    volume.source = folder
    return volume


# --------------------------------------------------------------------------------------------- stacking


def _same_orientation(frames: list[Frame]) -> np.ndarray | None:
    oriented = [f.orientation for f in frames if f.orientation is not None]
    if len(oriented) != len(frames):
        return None
    ref = oriented[0]
    distinct = [ref]
    for o in oriented[1:]:
        if all(np.abs(o - d).max() > 1e-3 for d in distinct):
            distinct.append(o)
    if len(distinct) > 1:
        raise InvalidVolumeError(
            f"the series mixes {len(distinct)} slice orientations (a multi-plane localiser?) and cannot be "
            "stacked into one volume; choose another series"
        )
    return ref


def _common_step(diffs: np.ndarray) -> float:
    """The most frequent distance between neighbouring slices (ties: the smallest) — robust to a few gaps."""
    rounded = np.round(diffs, 2)
    counts = Counter(rounded.tolist())
    best = max(counts.values())
    step = min(v for v, c in counts.items() if c == best)
    close = diffs[np.abs(diffs - step) <= 0.011]
    return float(close.mean()) if close.size else float(step)


def order_frames(frames: list[Frame], warnings: list[str]) -> tuple[list[Frame], np.ndarray | None, np.ndarray | None]:
    """Frames sorted along the normal with one per position; returns (frames, orientation, distances)."""
    orientation = _same_orientation(frames)
    if len(frames) == 1:
        return frames, orientation, None
    if orientation is None or any(f.position is None for f in frames):
        warnings.append("the slices carry no usable position/orientation; they are stacked in instance-number "
                        "order, assumed axial, with the spacing from SpacingBetweenSlices/SliceThickness")
        return sorted(frames, key=lambda f: f.order[1:]), orientation, None
    normal = np.cross(orientation[:3], orientation[3:])
    dist = np.array([float(f.position @ normal) for f in frames])
    idx = np.argsort(dist, kind="stable")
    groups: list[list[int]] = []
    for i in idx:
        if groups and dist[i] - dist[groups[-1][0]] < POSITION_TOLERANCE_MM:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    sizes = {len(g) for g in groups}
    if sizes != {1}:
        if len(sizes) == 1:
            k = sizes.pop()
            warnings.append(f"the series holds {k} images at each of its {len(groups)} positions (time points, "
                            "echoes or b-values?); using the first of each")
        else:
            extra = sum(len(g) - 1 for g in groups)
            warnings.append(f"{extra} image(s) share a position with another; using the first at each position")
    keep = [min(g, key=lambda i: frames[i].order) for g in groups]
    return [frames[i] for i in keep], orientation, dist[keep]


def _check_spacing(dist: np.ndarray, warnings: list[str]) -> float:
    """The common step, warning about gaps and uneven steps: ``gaps="stack"``, where slices stay consecutive."""
    diffs = np.diff(dist)
    step = _common_step(diffs)
    gaps = np.nonzero(diffs > GAP_FACTOR * step)[0]
    for g in gaps[:5]:
        missing = round(diffs[g] / step) - 1
        warnings.append(
            f"missing slices: a gap of {diffs[g]:.2f} mm between slices {g} and {g + 1} (positions "
            f"{dist[g]:.2f} and {dist[g + 1]:.2f} mm along the slice normal) where the spacing is otherwise "
            f"{step:.2f} mm; about {missing} slice(s) missing, distances across the gap are wrong"
        )
    if len(gaps) > 5:
        warnings.append(f"... and {len(gaps) - 5} more gaps")
    regular = np.delete(diffs, gaps)
    if regular.size and (regular.max() - regular.min()) > 0.1 * step:
        warnings.append(f"the slice spacing varies from {regular.min():.2f} to {regular.max():.2f} mm; "
                        f"using {step:.2f} mm")
    return step


@dataclass
class Layout:
    """Where each frame of a sorted series goes on the volume's uniform z grid.

    ``slots[i]`` is the grid index of frame ``i``; grid indices that no frame fills are ``gaps`` (filled
    with background, not part of the scan). ``step`` is the grid's z spacing in mm, None when the frames
    carry no positions.
    """

    slots: list[int]
    n: int
    step: float | None
    gaps: list[int] = field(default_factory=list)


def layout(dist: np.ndarray | None, warnings: list[str], gaps: str = "fill") -> Layout:
    """Place sorted frames (``dist``: their positions along the slice normal) on a uniform grid.

    A clean gap (a step that is a whole multiple of the usual one) gets empty slices at the missing
    positions with ``gaps="fill"``, so every read slice lies where the scanner put it; ``"refuse"`` refuses
    such a series and ``"stack"`` stacks the slices one after another with a warning (the old behaviour:
    positions across the gap are wrong). Positions that fit no uniform grid (more than
    ``IRREGULAR_FRACTION`` of a step off) are refused unless ``gaps="stack"``.

    Raises:
        InvalidVolumeError: missing slices with ``gaps="refuse"``, irregular positions, or more missing
            slices than slices present, each with a line saying how to proceed.
        ConfigError: an unknown ``gaps`` mode.
    """
    if gaps not in GAP_MODES:
        raise ConfigError(f"gaps must be one of {', '.join(GAP_MODES)}, got {gaps!r}")
    if dist is None or len(dist) < 2:
        n = 1 if dist is not None else 0
        return Layout(slots=list(range(n)), n=n, step=None)
    if gaps == "stack":
        step = _check_spacing(dist, warnings)
        return Layout(slots=list(range(len(dist))), n=len(dist), step=step)
    diffs = np.diff(dist)
    step = _common_step(diffs)
    steps = np.rint(diffs / step).astype(np.int64)
    index = np.concatenate([[0], np.cumsum(steps)])
    offsets = dist - dist[0]
    if index[-1] > 0:  # least squares through the first slice: the grid that fits all positions best
        step = float(offsets @ index / float(index @ index))
    off_grid = np.abs(offsets - index * step)
    worst = int(np.argmax(off_grid))
    if (steps < 1).any() or off_grid[worst] > max(IRREGULAR_FRACTION * step, ROUNDING_MM):
        lo, hi = float(diffs.min()), float(diffs.max())
        raise InvalidVolumeError(
            f"the slices lie at irregular positions (steps from {lo:.2f} to {hi:.2f} mm; the slice at "
            f"{dist[worst]:.2f} mm is {off_grid[worst]:.2f} mm off a uniform {step:.2f} mm grid), so they cannot "
            "be placed where the scanner put them; read with gaps='stack' (--gaps stack) to stack them "
            f"{step:.2f} mm apart anyway, distances along the slices then being approximate"
        )
    if off_grid[worst] > max(NOTE_FRACTION * step, ROUNDING_MM):
        warnings.append(f"the slice positions deviate by up to {off_grid[worst]:.2f} mm from a uniform "
                        f"{step:.2f} mm grid; each slice is placed at its nearest grid position")
    n = int(index[-1]) + 1
    slots = [int(i) for i in index]
    missing = sorted(set(range(n)) - set(slots))
    if not missing:
        return Layout(slots=slots, n=n, step=step)
    holes = np.flatnonzero(steps > 1)
    where = [f"{dist[g]:.2f} and {dist[g + 1]:.2f} mm" for g in holes[:5]]
    spans = " and between ".join(where) + (f" (and {len(holes) - 5} more gaps)" if len(holes) > 5 else "")
    if gaps == "refuse":
        raise InvalidVolumeError(
            f"slices are missing between positions {spans} along the slice normal ({len(missing)} of {n} slices "
            "of the series' grid); an incomplete transfer? read with gaps='fill' (--gaps fill) to insert empty "
            "slices at the missing positions, or gaps='stack' to stack the slices as they are"
        )
    if len(missing) > len(slots):
        raise InvalidVolumeError(
            f"{len(missing)} slices of a {step:.2f} mm grid are missing but only {len(slots)} are present "
            f"(gaps between positions {spans}); this does not look like one scan with missing slices; read with "
            "gaps='stack' (--gaps stack) to stack the slices as they are"
        )
    shown = ", ".join(str(i) for i in missing[:12]) + (", ..." if len(missing) > 12 else "")
    warnings.append(
        f"slices missing between positions {spans} along the slice normal: {len(missing)} empty slice"
        f"{'s were' if len(missing) > 1 else ' was'} inserted (z indices {shown}) so every slice lies at its "
        "true position; they are not part of the scan"
    )
    return Layout(slots=slots, n=n, step=step, gaps=missing)


def _sheared(frames: list[Frame], normal: np.ndarray) -> bool:
    delta = frames[-1].position - frames[0].position
    length = float(np.linalg.norm(delta))
    return length > 0 and float(np.linalg.norm(delta - (delta @ normal) * normal)) > 0.01 * length


def stack(headers: list[FileHeader], max_bytes: int, warnings: list[str],
          progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
          gaps: str = "fill") -> Volume:
    """Build one volume from the files of one series (see the module docstring and ``layout`` for the rules).

    Missing slices (``gaps="fill"``) become background slices listed in ``metadata["gap_slices"]``.
    """
    frames = [f for h in headers for f in h.frames]
    shapes = Counter((f.rows, f.cols) for f in frames)
    if len(shapes) > 1:
        listed = ", ".join(f"{c}×{r} ({n} images)" for (r, c), n in shapes.most_common())
        raise InvalidVolumeError(f"the images of this series differ in size ({listed}); they cannot be stacked")
    frames, orientation, dist = order_frames(frames, warnings)
    rows, cols = frames[0].rows, frames[0].cols
    grid = layout(dist, warnings, gaps) if dist is not None else Layout(list(range(len(frames))), len(frames), None)
    check_budget((grid.n, rows, cols), max_bytes, "this series")

    first = frames[0]
    if orientation is None:  # for several slices ``order_frames`` has already warned
        orientation = np.array([1.0, 0, 0, 0, 1.0, 0])
    normal = np.cross(orientation[:3], orientation[3:])
    if grid.step is not None:
        dz = grid.step
        if _sheared(frames, normal):
            warnings.append("the slices are shifted in-plane from one to the next (gantry tilt?); the volume is "
                            "stacked without correcting it")
    else:
        dz = next((f.step for f in frames if f.step), None) or 1.0
    spacings = {f.pixel_spacing for f in frames}
    if first.pixel_spacing is None:
        warnings.append("no pixel spacing in the files; assuming 1 mm")
        dy, dx = 1.0, 1.0
    else:
        dy, dx = first.pixel_spacing
        if len(spacings) > 1:
            warnings.append("the pixel spacing differs between slices; using the first slice's")

    by_path = {h.path: h for h in headers}
    slots: dict[Path, list[tuple[int, Frame]]] = {}
    for slot, f in zip(grid.slots, frames, strict=True):
        slots.setdefault(f.path, []).append((slot, f))
    out = np.empty((grid.n, rows, cols), dtype=np.float32)
    if grid.gaps:
        out[grid.gaps] = np.nan  # placeholders that min/max ignore until the background is known
    for done, (path, items) in enumerate(slots.items()):
        check(cancel)
        try:
            pixels, rescaled = read_pixels(by_path[path], rows, cols)
        except CorruptFileError as exc:
            if len(headers) == 1:
                raise
            raise CorruptFileError(f"{exc} (one file of {len(headers)} in this series: move it away to read the "
                                   "others)") from exc
        for slot, f in items:
            k = f.index or 0
            if k >= pixels.shape[0]:
                raise CorruptFileError(f"{path.name}: frame {k + 1} is missing from the pixel data")
            out[slot] = pixels[k]
            if not rescaled and f.slope != 1.0:
                out[slot] *= np.float32(f.slope)
            if not rescaled and f.intercept != 0.0:
                out[slot] += np.float32(f.intercept)
        report(progress, (done + 1) / len(slots), f"read {done + 1}/{len(slots)} DICOM files")

    head = headers[0]
    windows = list(first.windows)
    meta = dict(head.metadata)
    if head.photometric == "MONOCHROME1":
        # Stored so that high values display dark; invert so that "brighter = denser" holds for every scan.
        lo, hi = float(np.nanmin(out)), float(np.nanmax(out))
        out = (lo + hi) - out
        windows = [Window(center=lo + hi - w.center, width=w.width, name=w.name) for w in windows]
        meta["inverted_monochrome1"] = True
    if grid.gaps:
        out[grid.gaps] = _background(out, grid.slots)
        meta["gap_slices"] = list(grid.gaps)
    sp, org, direction = geometry_or_default(
        [dx, dy, dz], (first.position if first.position is not None else np.zeros(3)).tolist(),
        np.column_stack([orientation[:3], orientation[3:], normal]).ravel().tolist(), warnings)
    meta.update({"format": "DICOM", "series_uid": head.uid, "n_files": len(headers), "n_images": len(frames)})
    return Volume(array=out, spacing=sp, origin=org, direction=direction, modality=head.modality or "OT",
                  windows=windows, metadata=meta, source=head.path, warnings=warnings)


def _background(out: np.ndarray, slots: list[int]) -> float:
    """The lowest finite value of the read slices: what a gap filler holds (normalisation ignores it)."""
    lows = [float(np.min(out[i], where=np.isfinite(out[i]), initial=np.inf)) for i in slots]
    finite = [v for v in lows if np.isfinite(v)]
    return min(finite) if finite else 0.0


def read_pixels(header: FileHeader, rows: int, cols: int) -> tuple[np.ndarray, bool]:
    """Pixels of one file as (frames, rows, cols) and whether the rescale was already applied.

    pydicom decodes what its installed plugins can; for compressed syntaxes they cannot (12-bit lossy
    JPEG, for instance) SimpleITK's bundled GDCM takes over — it applies the rescale itself, hence the flag.
    """
    path = header.path
    with library_errors(path, "DICOM"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, force=header.forced)
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise CorruptFileError(f"{path.name} has no pixel data")
        try:
            with native_output():  # decoders of compressed syntaxes may be native and print
                arr = ds.pixel_array
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            if syntax is None or not getattr(syntax, "is_compressed", False):
                raise
            return _decode_with_sitk(path, exc, rows, cols), True
        samples = _int(ds.get("SamplesPerPixel"), 1)
        if header.photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
            samples = 3
        n = len(header.frames)
        arr = np.asarray(arr)
        if samples > 1:
            arr = arr.reshape(n, rows, cols, samples) if arr.size == n * rows * cols * samples else arr
            arr, _ = to_grey(arr, samples)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.shape != (n, rows, cols):
            raise CorruptFileError(f"{path.name}: pixel data of shape {arr.shape} does not match the header "
                                   f"({n} frame(s) of {rows}×{cols})")
        return arr, False


def _decode_with_sitk(path: Path, first_error: Exception, rows: int, cols: int) -> np.ndarray:
    sitk = sitk_module()

    try:
        with native_output():  # GDCM prints its complaints; the error line below says what failed
            img = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
        arr = sitk.GetArrayFromImage(img)
    except Exception:
        raise CorruptFileError(f"{path.name}: its compressed pixel data could not be decoded "
                               f"({short_reason(first_error)})") from None
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr, _ = to_grey(arr, img.GetNumberOfComponentsPerPixel())
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[1:] != (rows, cols):
        raise CorruptFileError(f"{path.name}: decoded pixel data {arr.shape} does not match the header")
    return arr


# --------------------------------------------------------------------------------------------- readers


class DicomFolderReader(Reader):
    """A folder (searched recursively) of DICOM files; one series is read."""

    name = "dicom-folder"
    suffixes = ()

    def verify(self, path: Path) -> bool:
        return path.is_dir()

    def read(self, path: Path, **opts: Any) -> Volume:
        return read_folder(path, opts.get("series_uid"), resolve_max_bytes(opts.get("max_bytes")),
                           opts.get("progress"), opts.get("cancel"), gaps=opts.get("gaps") or "fill")


class DicomFileReader(Reader):
    """One DICOM file: a single slice or a whole multi-frame (enhanced CT/MR, RT dose...) volume."""

    name = "dicom"
    suffixes = DICOM_SUFFIXES

    def verify(self, path: Path) -> bool:
        if is_dicom_file(path):
            return True
        if not path.is_file() or path.suffix:
            return False
        with path.open("rb") as fh:  # no preamble, no suffix: implicit-VR files start with group 0x0008
            return fh.read(2) in (b"\x08\x00", b"\x02\x00")

    def read(self, path: Path, **opts: Any) -> Volume:
        max_bytes = resolve_max_bytes(opts.get("max_bytes"))
        header = read_header(path, max_bytes)
        series_uid = opts.get("series_uid")
        warnings: list[str] = []
        if series_uid is not None and series_uid != header.uid:
            raise ConfigError(f"{path.name} belongs to series {header.uid or '(no UID)'}, not {series_uid}")
        volume = stack([header], max_bytes, warnings, opts.get("progress"), opts.get("cancel"),
                       gaps=opts.get("gaps") or "fill")
        volume.source = path
        return volume
