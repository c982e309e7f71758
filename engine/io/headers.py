"""Header checks that run before a native reader sees a file: MetaImage, NRRD and NIfTI.

ITK's readers trust their headers: a MetaImage ``NDims = -1`` segfaults the process, ``NDims = 100``
corrupts the heap, an ``ElementDataFile`` naming ``/dev/zero`` or a FIFO blocks forever, and a printf
pattern with ``%s`` in a data-file name is handed to ``sprintf``. Each check here parses the header itself,
in Python and cheaply (a few KiB of text or 540 bytes), and refuses nonsense with a one-line
``CorruptFileError`` naming the field, so only plausible headers ever reach native code. They do not try
to accept less than ITK does: fields ITK never writes are left alone unless they can do harm.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import stat
import struct
import zlib
from pathlib import Path, PureWindowsPath

from ..errors import CorruptFileError
from .safety import file_kind

#: How much of a text header is read: ITK writes a few hundred bytes; a LIST of data files may be long.
HEADER_LIMIT = 1024 * 1024
#: Largest size of one axis (ITK's size type is signed 64-bit, but no scan axis comes near 2^31).
MAX_AXIS = 2**31 - 1
#: Most voxels a header may claim: far above any memory budget, far below where 64-bit products overflow.
MAX_VOXELS = 2**48
#: Most data files a LIST or a pattern may name (one per slice of a very large volume).
MAX_DATA_FILES = 100_000

_INT = re.compile(r"^[+-]?\d+$")
_PATTERN = re.compile(r"%(0?\d{0,3})d")


def _refuse(path: Path, fmt: str, message: str) -> CorruptFileError:
    return CorruptFileError(f"{path.name} looks like {fmt} but {message}")


def _show(value: str) -> str:
    value = value.strip()
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _int(path: Path, fmt: str, field: str, value: str, low: int, high: int) -> int:
    value = value.strip()
    if not _INT.match(value):
        raise _refuse(path, fmt, f"its {field} {_show(value)} is not a whole number")
    n = int(value)
    if not low <= n <= high:
        raise _refuse(path, fmt, f"its {field} = {n} is out of range ({low} to {high})")
    return n


def _ints(path: Path, fmt: str, field: str, value: str, count: int, low: int, high: int) -> list[int]:
    tokens = value.split()
    if len(tokens) != count:
        raise _refuse(path, fmt, f"its {field} has {len(tokens)} values for {count} dimensions")
    return [_int(path, fmt, field, t, low, high) for t in tokens]


def _floats(path: Path, fmt: str, field: str, tokens: list[str], count: int | None) -> list[float]:
    if count is not None and len(tokens) != count:
        raise _refuse(path, fmt, f"its {field} has {len(tokens)} values where {count} are needed")
    out = []
    for t in tokens:
        try:
            out.append(float(t))
        except ValueError:
            raise _refuse(path, fmt, f"its {field} value {_show(t)} is not a number") from None
    return out


def _read_head(path: Path, limit: int = HEADER_LIMIT) -> bytes:
    with path.open("rb") as fh:
        return fh.read(limit)


# --------------------------------------------------------------------------------------------- data files


def check_data_file(header: Path, name: str, fmt: str, field: str) -> int:
    """Refuse a detached data file that lies outside the header's folder or is not a regular file.

    Returns:
        its size in bytes.
    """
    name = name.strip()
    if not name:
        raise _refuse(header, fmt, f"its {field} is empty")
    if "\0" in name or PureWindowsPath(name).is_absolute() or Path(name).is_absolute() or \
            PureWindowsPath(name).drive:
        raise _refuse(header, fmt, f"its {field} {_show(name)} points outside the header's folder")
    folder = os.path.normpath(os.path.abspath(header.parent))
    target = os.path.normpath(os.path.join(folder, name))
    if os.path.commonpath([folder, target]) != folder:
        raise _refuse(header, fmt, f"its {field} {_show(name)} points outside the header's folder")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        raise _refuse(header, fmt, f"the data file {_show(name)} named by its {field} does not exist") from None
    except OSError as exc:
        raise _refuse(header, fmt, f"the data file {_show(name)} named by its {field} cannot be read "
                                   f"({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(header, fmt, f"the data file {_show(name)} named by its {field} is {file_kind(st.st_mode)}")
    return int(st.st_size)


def _pattern_names(header: Path, fmt: str, field: str, tokens: list[str]) -> list[str]:
    """The file names a ``name%03d.raw min max step`` pattern expands to (the C side calls sprintf on it)."""
    pattern = tokens[0]
    if pattern.count("%") != 1 or not _PATTERN.search(pattern):
        raise _refuse(header, fmt, f"its {field} pattern {_show(pattern)} is not of the form name%03d.raw")
    if len(tokens) not in (4, 5):  # MetaIO divides by a missing step (SIGFPE): all three numbers are required
        raise _refuse(header, fmt, f"its {field} pattern needs a first, last and step number")
    lo, hi, step = (_int(header, fmt, field, t, -MAX_AXIS, MAX_AXIS) for t in tokens[1:4])
    if step == 0 or (hi - lo) * step < 0:
        raise _refuse(header, fmt, f"its {field} pattern runs from {lo} to {hi} in steps of {step}")
    count = (hi - lo) // step + 1
    if count > MAX_DATA_FILES:
        raise _refuse(header, fmt, f"its {field} pattern names {count:,} files")
    if len(tokens) == 5:
        _int(header, fmt, field, tokens[4], 1, 16)
    return [pattern % (lo + k * step) for k in range(count)]


def _check_names(header: Path, fmt: str, field: str, names: list[str]) -> int:
    if not names:
        raise _refuse(header, fmt, f"its {field} LIST names no files")
    if len(names) > MAX_DATA_FILES:
        raise _refuse(header, fmt, f"its {field} LIST names {len(names):,} files")
    return sum(check_data_file(header, n, fmt, field) for n in names)


# --------------------------------------------------------------------------------------------- MetaImage

#: MetaIO element types ITK turns into image pixels (vector images add ElementNumberOfChannels).
MET_TYPES = frozenset({
    "MET_CHAR", "MET_UCHAR", "MET_SHORT", "MET_USHORT", "MET_INT", "MET_UINT", "MET_LONG", "MET_ULONG",
    "MET_LONG_LONG", "MET_ULONG_LONG", "MET_FLOAT", "MET_DOUBLE",
})
_MET_VECTOR = {"elementspacing": 1, "elementsize": 1, "offset": 1, "position": 1, "origin": 1,
               "centerofrotation": 1, "transformmatrix": 2, "rotation": 2, "orientation": 2}
_MET_BOOL = ("binarydata", "binarydatabyteordermsb", "elementbyteordermsb", "compresseddata")


def check_metaimage(path: Path) -> None:
    """Validate a MetaImage header (``.mha``/``.mhd``) before MetaIO parses it.

    Raises:
        CorruptFileError: naming the first field that is missing, malformed or out of range.
    """
    fmt = "MetaImage"
    data = _read_head(path)
    fields: list[tuple[str, str, str]] = []  # (lower-case key, key as written, value)
    rest = b""
    offset = 0
    for raw in data.split(b"\n"):
        offset += len(raw) + 1
        line = raw.decode("latin-1").strip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        fields.append((key.strip().lower(), key.strip(), value.strip()))
        if key.strip().lower() == "elementdatafile":
            rest = data[offset:]
            break
    else:
        raise _refuse(path, fmt, "its header has no ElementDataFile line (damaged or not a MetaImage header)")
    first: dict[str, str] = {}
    for key, _, value in fields:
        first.setdefault(key, value)
    for required in ("NDims", "DimSize", "ElementType"):
        if required.lower() not in first:
            raise _refuse(path, fmt, f"its header has no {required}")
    ndims = 0
    for key, shown, value in fields:
        if key == "ndims":
            ndims = _int(path, fmt, shown, value, 1, 5)
    channels = 1
    for key, shown, value in fields:
        if key == "elementnumberofchannels":
            channels = _int(path, fmt, shown, value, 1, 1024)
    for key, shown, value in fields:
        if key == "dimsize":
            _check_voxels(path, fmt, [*_ints(path, fmt, shown, value, ndims, 1, MAX_AXIS), channels])
        elif key == "elementtype" and value.upper() not in MET_TYPES:
            raise _refuse(path, fmt, f"its {shown} {_show(value)} is not a pixel type (MET_UCHAR, MET_SHORT, ...)")
        elif key == "headersize":
            _int(path, fmt, shown, value, -1, 2**40)
        elif key == "compresseddatasize":
            _int(path, fmt, shown, value, 0, 2**40)
        elif key in _MET_VECTOR:
            _floats(path, fmt, shown, value.split(), ndims ** _MET_VECTOR[key])
        elif key in ("elementmin", "elementmax"):
            _floats(path, fmt, shown, value.split(), 1)
        elif key in _MET_BOOL and value.lower() not in ("true", "false", "1", "0"):
            raise _refuse(path, fmt, f"its {shown} {_show(value)} is not True or False")
        elif key == "anatomicalorientation" and (len(value) != ndims or set(value.upper()) - set("RLAPSI?")):
            raise _refuse(path, fmt, f"its {shown} {_show(value)} is not {ndims} letters from RLAPSI")
    name = fields[-1][2]
    available = _met_data_bytes(path, fmt, fields[-1][1], name, rest, len(data), offset)
    size = first.get("compresseddatasize")
    if size is not None and int(size) > available:
        raise _refuse(path, fmt, f"its CompressedDataSize ({int(size):,} bytes) is larger than its data "
                                 f"({available:,} bytes)")


def _met_data_bytes(path: Path, fmt: str, field: str, name: str, rest: bytes, read: int, offset: int) -> int:
    """Bytes of pixel data the header's ElementDataFile makes available (checking every file it names).

    Only the spellings MetaIO itself takes for "data follows" and "a list follows" are treated so; any
    other value is a file name and must name a regular file in the header's folder.
    """
    tokens = name.split()
    if not tokens:
        raise _refuse(path, fmt, f"its {field} is empty")
    if name in ("LOCAL", "Local", "local"):
        return max(0, path.stat().st_size - min(offset, read))
    if tokens[0] == "LIST":
        if len(tokens) > 1:
            _int(path, fmt, field, tokens[1], 1, 16)
        if read >= HEADER_LIMIT:
            raise _refuse(path, fmt, f"its {field} LIST is longer than {HEADER_LIMIT // 1024} KiB")
        return _check_names(path, fmt, field, rest.decode("latin-1").split())
    if "%" in name:
        return _check_names(path, fmt, field, _pattern_names(path, fmt, field, tokens))
    return check_data_file(path, name, fmt, field)


def _check_voxels(path: Path, fmt: str, sizes: list[int]) -> None:
    """Refuse sizes whose product overflows the native side's arithmetic (the memory budget comes later)."""
    total = math.prod(sizes)
    if total > MAX_VOXELS:
        dims = "×".join(str(s) for s in sizes)
        raise _refuse(path, fmt, f"its header claims {dims} voxels, more than any scan holds")


# --------------------------------------------------------------------------------------------- NRRD

NRRD_TYPES = frozenset({
    "signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t",
    "short", "short int", "signed short", "signed short int", "int16", "int16_t",
    "ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t",
    "int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
    "longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
    "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
    "float", "double",
})
NRRD_ENCODINGS = frozenset({"raw", "txt", "text", "ascii", "hex", "gz", "gzip", "bz2", "bzip2"})
#: Per-axis fields: one entry per dimension.
_NRRD_AXIS_NUMBERS = ("spacings", "thicknesses", "axis mins", "axismins", "axis maxs", "axismaxs")
_NRRD_AXIS_WORDS = ("centers", "centerings", "kinds")
#: NRRD space names (teem's, lower case) and their dimension.
_NRRD_SPACES = {
    **dict.fromkeys(("right-anterior-superior", "ras", "left-anterior-superior", "las", "left-posterior-superior",
                     "lps", "scanner-xyz", "3d-right-handed", "3dr", "3d-left-handed", "3dl"), 3),
    **dict.fromkeys(("right-anterior-superior-time", "rast", "left-anterior-superior-time", "last",
                     "left-posterior-superior-time", "lpst", "scanner-xyz-time", "3d-right-handed-time", "3drt",
                     "3d-left-handed-time", "3dlt"), 4),
}
_VECTOR = re.compile(r"\(([^()]*)\)|none", re.IGNORECASE)


def check_nrrd(path: Path) -> None:
    """Validate a NRRD header (``.nrrd`` with attached data, ``.nhdr`` with a data file) before teem parses it.

    Raises:
        CorruptFileError: naming the first field that is missing, malformed or out of range.
    """
    fmt = "NRRD"
    data = _read_head(path)
    lines = data.split(b"\n")
    if not re.match(rb"^NRRD000[1-9]\r?$", lines[0]):
        raise _refuse(path, fmt, "its first line is not a NRRD magic (NRRD0001 to NRRD0009)")
    fields: dict[str, str] = {}
    offset = len(lines[0]) + 1
    rest: list[str] = []
    ended = False
    for i, raw in enumerate(lines[1:], start=1):
        line = raw.decode("latin-1").rstrip("\r")
        offset += len(raw) + 1
        if not line.strip():
            ended = True
            break
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise _refuse(path, fmt, f"its header line {_show(line)} is not a 'field: value' line")
        key = key.strip().lower()
        if key in ("data file", "datafile") and value.strip().split()[:1] and \
                value.strip().split()[0].upper() == "LIST":
            rest = [ln.decode("latin-1").strip() for ln in lines[i + 1:] if ln.strip()]
            fields[key] = value.strip()
            ended = True
            break
        if key in fields:
            raise _refuse(path, fmt, f"its header gives the field {key!r} twice")
        fields[key] = value.strip()
    if not ended and len(data) >= HEADER_LIMIT:
        raise _refuse(path, fmt, f"its header is longer than {HEADER_LIMIT // 1024} KiB")
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise _refuse(path, fmt, f"its header has no {required!r} field")
    dim = _int(path, fmt, "dimension", fields["dimension"], 1, 16)
    _check_voxels(path, fmt, _ints(path, fmt, "sizes", fields["sizes"], dim, 1, MAX_AXIS))
    if fields["type"].lower() not in NRRD_TYPES:
        raise _refuse(path, fmt, f"its type {_show(fields['type'])} is not a pixel type ITK reads")
    if fields["encoding"].lower() not in NRRD_ENCODINGS:
        raise _refuse(path, fmt, f"its encoding {_show(fields['encoding'])} is not one ITK reads")
    if "endian" in fields and fields["endian"].lower() not in ("little", "big"):
        raise _refuse(path, fmt, f"its endian {_show(fields['endian'])} is not little or big")
    for key in ("byte skip", "byteskip"):
        if key in fields:
            _int(path, fmt, key, fields[key], -1, 2**40)
    for key in ("line skip", "lineskip"):
        if key in fields:
            _int(path, fmt, key, fields[key], 0, 2**31)
    for key in _NRRD_AXIS_NUMBERS:
        if key in fields:
            _floats(path, fmt, key, fields[key].split(), dim)
    for key in _NRRD_AXIS_WORDS:
        if key in fields and len(fields[key].split()) != dim:
            raise _refuse(path, fmt, f"its {key} has {len(fields[key].split())} entries for {dim} axes")
    space_dim = _nrrd_space(path, fmt, fields, dim)
    if space_dim is not None:
        for key in ("space origin",):
            if key in fields:
                _nrrd_vectors(path, fmt, key, fields[key], 1, space_dim, allow_none=False)
        if "space directions" in fields:
            _nrrd_vectors(path, fmt, "space directions", fields["space directions"], dim, space_dim, allow_none=True)
        if "measurement frame" in fields:
            _nrrd_vectors(path, fmt, "measurement frame", fields["measurement frame"], space_dim, space_dim,
                          allow_none=False)
    elif "space directions" in fields or "space origin" in fields:
        raise _refuse(path, fmt, "its header gives space directions or an origin without a space")
    _nrrd_data(path, fmt, fields, rest, ended, offset)


def _nrrd_space(path: Path, fmt: str, fields: dict[str, str], dim: int) -> int | None:
    space_dim = None
    if "space" in fields:
        name = fields["space"].lower()
        if name not in _NRRD_SPACES:
            raise _refuse(path, fmt, f"its space {_show(fields['space'])} is not a NRRD space")
        space_dim = _NRRD_SPACES[name]
        if "space dimension" in fields:
            raise _refuse(path, fmt, "its header gives both a space and a space dimension")
    elif "space dimension" in fields:
        space_dim = _int(path, fmt, "space dimension", fields["space dimension"], 1, 8)
    return space_dim


def _nrrd_vectors(path: Path, fmt: str, key: str, value: str, count: int, size: int, *, allow_none: bool) -> None:
    items = _VECTOR.findall(value)
    found = _VECTOR.finditer(value)
    leftover = _VECTOR.sub("", value).strip()
    if leftover or len(items) != count:
        raise _refuse(path, fmt, f"its {key} should be {count} vector(s) like (1,0,0)")
    for m in found:
        if m.group(0).lower() == "none":
            if not allow_none:
                raise _refuse(path, fmt, f"its {key} may not be 'none'")
            continue
        _floats(path, fmt, key, [t for t in m.group(1).split(",")], size)


def _nrrd_data(path: Path, fmt: str, fields: dict[str, str], rest: list[str], ended: bool, offset: int) -> None:
    name = fields.get("data file", fields.get("datafile"))
    if name is None:
        if not ended:
            raise _refuse(path, fmt, "it has neither attached data (a blank line after the header) nor a data file")
        return
    tokens = name.split()
    field = "data file"
    if not tokens:
        raise _refuse(path, fmt, "its data file is empty")
    if tokens[0].upper() == "LIST":
        if len(tokens) > 1:
            _int(path, fmt, field, tokens[1], 1, 16)
        _check_names(path, fmt, field, rest)
    elif "%" in name:
        _check_names(path, fmt, field, _pattern_names(path, fmt, field, tokens))
    else:
        check_data_file(path, name, fmt, field)


# --------------------------------------------------------------------------------------------- NIfTI

#: NIfTI datatype codes ITK reads (1, binary, is not among them).
NIFTI_TYPES = frozenset({2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304})


def _nifti_head(path: Path) -> bytes:
    with path.open("rb") as fh:
        magic = fh.read(2)
        fh.seek(0)
        if magic == b"\x1f\x8b":
            try:
                with gzip.GzipFile(fileobj=fh) as gz:
                    return gz.read(540)
            except (OSError, EOFError, zlib.error) as exc:
                raise _refuse(path, "NIfTI", f"its gzip stream is damaged ({exc})") from None
        return fh.read(540)


def check_nifti(path: Path) -> None:
    """Validate a NIfTI-1/2 (or Analyze) header: header size, dimensions, datatype and data offset.

    Raises:
        CorruptFileError: naming the first field that is impossible.
    """
    fmt = "NIfTI"
    head = _nifti_head(path)
    if len(head) < 348:
        raise _refuse(path, fmt, f"its header is cut short ({len(head)} of 348 bytes)")
    for order in ("<", ">"):
        size = struct.unpack_from(f"{order}i", head, 0)[0]
        if size in (348, 540):
            break
    else:
        raise _refuse(path, fmt, "its sizeof_hdr field is neither 348 (NIfTI-1) nor 540 (NIfTI-2)")
    if size == 540:
        if len(head) < 540:
            raise _refuse(path, fmt, f"its NIfTI-2 header is cut short ({len(head)} of 540 bytes)")
        datatype = struct.unpack_from(f"{order}h", head, 12)[0]
        dims = list(struct.unpack_from(f"{order}8q", head, 16))
        vox_offset = float(struct.unpack_from(f"{order}q", head, 168)[0])
        minimum = 544
    else:
        dims = list(struct.unpack_from(f"{order}8h", head, 40))
        datatype = struct.unpack_from(f"{order}h", head, 70)[0]
        vox_offset = float(struct.unpack_from(f"{order}f", head, 108)[0])
        minimum = 0
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _refuse(path, fmt, f"its dim[0] = {ndim} is not a number of dimensions from 1 to 7")
    for i in range(1, ndim + 1):
        if not 1 <= dims[i] <= MAX_AXIS:
            raise _refuse(path, fmt, f"its dim[{i}] = {dims[i]} is not a size")
    _check_voxels(path, fmt, dims[1:ndim + 1])
    if datatype not in NIFTI_TYPES:
        raise _refuse(path, fmt, f"its datatype code {datatype} is not one ITK reads")
    if not math.isfinite(vox_offset) or vox_offset < minimum or vox_offset > 2**40:
        raise _refuse(path, fmt, f"its vox_offset = {vox_offset:g} is impossible")


def nifti_spacing_missing(path: Path) -> bool:
    """Whether a NIfTI header gives no usable voxel size (pixdim 0, negative or NaN on a spatial axis).

    ITK reads such a file as 1 mm without a word; volumes in mL and the model's field of view then rest on an
    invented spacing, which the reader must say (DICOM without PixelSpacing already does). An unreadable
    header answers False: ``check_nifti`` has refused it before.
    """
    head = _nifti_head(path)
    if len(head) < 348:
        return False
    for order in ("<", ">"):
        size = struct.unpack_from(f"{order}i", head, 0)[0]
        if size in (348, 540):
            break
    else:
        return False
    if size == 540:
        if len(head) < 540:
            return False
        ndim = struct.unpack_from(f"{order}q", head, 16)[0]
        pixdim = struct.unpack_from(f"{order}8d", head, 104)
    else:
        ndim = struct.unpack_from(f"{order}h", head, 40)[0]
        pixdim = struct.unpack_from(f"{order}8f", head, 76)
    axes = range(1, max(1, min(int(ndim), 3)) + 1)
    return not all(math.isfinite(pixdim[i]) and pixdim[i] > 0 for i in axes)
