"""The reader interface, the registry that picks a reader for a path, and the checks all readers share.

Like MONAI's image readers: each format is a small class that says whether it can read a path
(``verify``) and turns it into a ``Volume`` (``read``). ``read_scan`` asks the registry, so a plugin can add a
format with ``register_reader`` without touching the callers.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import (
    AnomaLensError,
    ConfigError,
    CorruptFileError,
    InvalidVolumeError,
    NonFiniteVoxelsError,
    NotAScanError,
    ScanReadError,
    TooLargeError,
)
from ..volume import Volume
from .safety import collect_native, native_reason

#: Default memory budget for one scan as float32: large enough for a whole-body CT, small enough that a
#: corrupt header claiming billions of voxels fails fast instead of exhausting memory.
DEFAULT_MAX_BYTES = 4 * 1024**3
MAX_BYTES_ENV = "ANOMALENS_MAX_SCAN_BYTES"
NAN_POLICIES = ("refuse", "clean")

#: ITU-R BT.601 luma weights, the usual grey level of an RGB picture.
_LUMA = np.array([0.299, 0.587, 0.114])


def sitk_module() -> Any:
    """SimpleITK, imported on first use, with ITK's own warnings off.

    ITK prints warnings such as "... is Analyze file and it's deprecated" with C++ source paths straight
    to stderr; readers turn what matters into ``Volume.warnings`` instead.
    """
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - a declared dependency
        raise NotAScanError("reading this format needs the 'SimpleITK' package: pip install SimpleITK") from None
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    return sitk


class Reader:
    """One scan format.

    Subclasses set ``name`` and ``suffixes`` and implement ``read``; ``verify`` defaults to a suffix test and
    may also look at magic bytes. ``read`` gets ``max_bytes`` (already resolved) and may get other options
    such as ``series_uid``, ``progress`` and ``cancel``; readers ignore options that do not apply to them.
    """

    name: ClassVar[str] = ""
    suffixes: ClassVar[tuple[str, ...]] = ()

    def verify_suffix(self, path: Path) -> bool:
        """Whether the file name ends with one of ``suffixes`` (case-insensitive, ``.nii.gz`` style too)."""
        lower = path.name.lower()
        return any(lower.endswith(s) for s in self.suffixes)

    def verify(self, path: Path) -> bool:
        """Whether this reader should handle ``path``; cheap (name and at most a few header bytes)."""
        return path.is_file() and self.verify_suffix(path)

    def read(self, path: Path, **opts: Any) -> Volume:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: list[Reader] = []


def register_reader(reader: Reader, *, first: bool = False) -> Reader:
    """Add ``reader`` to the registry (replacing one of the same name); ``first`` gives it priority."""
    if not reader.name:
        raise ConfigError("a reader needs a name")
    _REGISTRY[:] = [r for r in _REGISTRY if r.name != reader.name]
    if first:
        _REGISTRY.insert(0, reader)
    else:
        _REGISTRY.append(reader)
    return reader


def registered_readers() -> list[Reader]:
    """The readers in the order they are asked."""
    return list(_REGISTRY)


def reader_for(path: str | Path) -> Reader:
    """The first registered reader that accepts ``path``.

    Raises:
        NotAScanError: the path does not exist or no reader knows it.
    """
    p = Path(path)
    if not p.exists():
        raise NotAScanError(f"{p} does not exist")
    for reader in _REGISTRY:
        try:
            if reader.verify(p):
                return reader
        except OSError:
            continue
    known = sorted({s for r in _REGISTRY for s in r.suffixes})
    raise NotAScanError(f"{p.name} is not a scan format AnomaLens can read (known: DICOM folders, {', '.join(known)})")


def resolve_max_bytes(max_bytes: int | None = None) -> int:
    """The memory budget: the argument, else ``ANOMALENS_MAX_SCAN_BYTES``, else 4 GiB."""
    if max_bytes is None:
        env = os.environ.get(MAX_BYTES_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_BYTES
        try:
            max_bytes = int(float(env))
        except ValueError:
            raise ConfigError(f"{MAX_BYTES_ENV}={env!r} is not a number of bytes") from None
    if max_bytes <= 0:
        raise ConfigError(f"the memory budget must be positive, got {max_bytes} bytes")
    return int(max_bytes)


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_budget(shape: tuple[int, ...], max_bytes: int, what: str) -> None:
    """Refuse a scan whose float32 volume would exceed ``max_bytes``, before any pixel is read."""
    voxels = math.prod(int(s) for s in shape)
    need = voxels * 4
    if need > max_bytes:
        dims = "×".join(str(int(s)) for s in shape)
        raise TooLargeError(
            f"{what} would need {format_bytes(need)} as float32 ({dims} voxels), over the memory budget of "
            f"{format_bytes(max_bytes)}; raise it with {MAX_BYTES_ENV} (bytes) if this machine has the memory"
        )


@contextmanager
def library_errors(path: Path, fmt: str) -> Iterator[None]:
    """Turn whatever a third-party reader raises on a damaged file into a ``CorruptFileError``.

    Parsers of binary formats fail in many ways (``RuntimeError`` from ITK, ``ValueError``/``struct.error``/
    ``KeyError`` from pydicom...). To a user they all mean the same thing, and to the caller anything that
    is not an ``AnomaLensError`` is a bug, so the reader boundary translates them here. What native code
    prints (MetaIO, libpng, libjpeg write to the process's stdout/stderr) is captured by ``native_output``
    around each native call inside the block, not around the block: the text of those captures is folded
    into the error line when the read fails, dropped when it succeeds.
    """
    with collect_native() as native:
        try:
            yield
        except AnomaLensError:
            raise
        except MemoryError:
            raise TooLargeError(f"{path.name}: not enough memory to read this {fmt} file") from None
        except (PermissionError, IsADirectoryError) as exc:
            raise ScanReadError(f"cannot read {path}: {exc.strerror or exc}") from None
        except Exception as exc:
            reason = short_reason(exc, native.text, path)
            raise CorruptFileError(f"{path.name} looks like {fmt} but could not be read: {reason}") from exc


#: ITK ends every IO error with ``Reason: <strerror(errno)>``; errno is usually stale, so "Success" or a
#: random errno text says nothing about the file.
_ITK_REASON = re.compile(r"^Reason:\s*", re.IGNORECASE)
_ITK_PREFIX = re.compile(r"^ITK ERROR:\s*\w+\(0x[0-9a-fA-F]+\):\s*")


def short_reason(exc: BaseException, native: str = "", path: Path | None = None) -> str:
    """One line saying why a library failed: what native code printed first, else the library's last line.

    ITK messages carry long source paths and an errno text (``Reason: Success``) that is not the cause;
    the line native code printed before failing (``data not read completely``) usually is.
    """
    told = native_reason(native, path)
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not (_ITK_REASON.match(ln) and "success" in ln.lower())] or [type(exc).__name__]
    last = lines[-1]
    if last.startswith("-") and len(lines) > 1:  # a continuation ("Expected 327680 bytes, got … from F\n - could
        last = f"{lines[-2]} ({last.lstrip('- ').rstrip()})"  # the file be damaged?"): the reason is the line before
    if "ITK ERROR" in last:
        last = _ITK_PREFIX.sub("", last[last.index("ITK ERROR"):])
    if path is not None:
        last = last.replace(str(path), path.name)
    return (told or last)[:300]


def to_grey(array: np.ndarray, components: int) -> tuple[np.ndarray, str | None]:
    """Collapse a trailing channel axis to one grey value per voxel.

    RGB(A) becomes luma (alpha dropped); grey+alpha keeps the grey; any other vector image (diffusion
    directions, tensors) keeps its first component with a warning, since no single grey is meaningful.
    """
    if components <= 1:
        return array, None
    if components in (3, 4):
        return luma(array), None
    first = array[..., 0]
    if components == 2:
        return first, None
    return first, f"the image holds {components} values per voxel; using the first"


#: Voxels converted at a time by ``luma``: its temporaries stay a few tens of megabytes whatever the picture.
LUMA_CHUNK = 1 << 22


def luma(array: np.ndarray) -> np.ndarray:
    """The float32 luma of an (..., 3 or 4) colour array, a block of rows at a time.

    Converting the whole picture to float64 first held three float64 copies beside the source: a 12,000²
    RGB PNG (a 576-MB float32 slice) peaked at 5 GB. In blocks the peak is the source plus the result.
    """
    rows = array.reshape(-1, array.shape[-1])
    out = np.empty(rows.shape[0], np.float32)
    weights = _LUMA.astype(np.float32)
    for start in range(0, rows.shape[0], LUMA_CHUNK):
        block = rows[start:start + LUMA_CHUNK, :3]
        out[start:start + LUMA_CHUNK] = block.astype(np.float32) @ weights
    return out.reshape(array.shape[:-1])


def geometry_or_default(spacing: list[float], origin: list[float], direction: list[float],
                        warnings: list[str]) -> tuple[list[float], list[float], list[float]]:
    """Replace impossible geometry (zero, negative or NaN spacing; NaN origin; singular direction) by defaults.

    Files from sloppy converters carry such headers; refusing them would stop a user who only wants a
    heatmap, so the reader warns that distances in millimetres are not to be trusted instead.
    """
    sp = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s > 0 for s in sp):
        warnings.append(f"the file's voxel spacing {tuple(sp)} is invalid; assuming 1 mm where it is")
        sp = [s if math.isfinite(s) and s > 0 else 1.0 for s in sp]
    org = [float(o) for o in origin]
    if not all(math.isfinite(o) for o in org):
        warnings.append("the file's origin is not finite; using 0")
        org = [o if math.isfinite(o) else 0.0 for o in org]
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or np.abs(d).max() > 1.001 or abs(np.linalg.det(d)) < 1e-6:
        warnings.append("the file's direction cosines are invalid; assuming the identity orientation")
        d = np.eye(3)
    return sp, org, d.ravel().tolist()


#: Environment variable of the NaN policy readers use when a caller names none (``anomalens --nan`` sets it,
#: so batch workers in other processes read scans the same way).
NAN_ENV = "ANOMALENS_NAN"
#: What a refused scan's message tells the user to do (every entry point can do one of these).
NAN_REMEDY = "pass --nan clean (the anomalens command), set ANOMALENS_NAN=clean, or read with nan_policy='clean'"


def default_nan_policy() -> str:
    """The NaN policy when none is named: ``$ANOMALENS_NAN`` (``refuse`` or ``clean``), else ``refuse``."""
    value = os.environ.get(NAN_ENV, "").strip().lower() or "refuse"
    if value not in NAN_POLICIES:
        raise ConfigError(f"{NAN_ENV} must be 'refuse' or 'clean', got {value!r}")
    return value


def apply_nan_policy(volume: Volume, nan_policy: str | None = None) -> Volume:
    """Refuse or clean NaN/inf voxels, which would poison normalisation and every score computed after it."""
    nan_policy = default_nan_policy() if nan_policy is None else nan_policy
    if nan_policy not in NAN_POLICIES:
        raise ConfigError(f"nan_policy must be 'refuse' or 'clean', got {nan_policy!r}")
    finite = np.isfinite(volume.array)
    if finite.all():
        return volume
    bad = int(finite.size - np.count_nonzero(finite))
    total = finite.size
    if nan_policy == "refuse":
        raise NonFiniteVoxelsError(
            f"{bad} of {total} voxels are NaN or infinite; to replace them by the lowest finite value, {NAN_REMEDY}",
            bad=bad, total=total)
    if not finite.any():
        raise InvalidVolumeError("every voxel is NaN or infinite; there is nothing to clean up")
    low = float(volume.array[finite].min())
    volume.array[~finite] = low
    volume.warnings.append(f"replaced {bad} NaN/infinite voxels by the lowest finite value {low:g}")
    return volume


def gap_indices(volume: Volume) -> list[int]:
    """Array z indices of ``volume`` that are gap fillers (empty slices a reader inserted), not scan data.

    ``metadata["gap_slices"]`` numbers them on the grid as read; a slice selection (``selected_slices``)
    renumbers the array, so they are mapped through it here. Scoring and training skip these slices.
    """
    gaps = {int(i) for i in volume.metadata.get("gap_slices") or ()}
    if not gaps:
        return []
    selected = volume.metadata.get("selected_slices")
    numbering = range(volume.n_slices) if selected is None else [int(i) for i in selected]
    return [k for k, original in enumerate(numbering) if original in gaps and k < volume.n_slices]
