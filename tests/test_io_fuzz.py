"""Mutated scan files fed to every reader through ``read_scan``: the only exceptions allowed out are
``AnomaLensError`` subclasses, whatever is returned is a usable volume, and nothing is printed.

Two corpora. Byte mutations (truncated, bit-flipped, spliced, zeroed headers, smashed size fields) of every
format run in-process under hypothesis: 500 reproducible cases in CI, 2,000 fresh ones with ``-m slow``.
Header-field mutations of MetaImage, NRRD and NIfTI files (the crashing headers of issue #18 among them)
run in child processes, so a segfault, an abort or a hang is caught and named: 360 cases in CI (about a
second), 2,400 with ``-m slow``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anomalens.engine.errors import AnomaLensError
from anomalens.engine.io import describe, read_scan
from anomalens.engine.volume import Volume
from tests.io_support import phantom, pydicom_test_file, write_ct_series, write_enhanced_ct, write_sitk

ROOT = Path(__file__).resolve().parents[1]

#: Small budget: a mutated header may claim a huge image; the fuzz must not allocate gigabytes to find out.
FUZZ_MAX_BYTES = 16 * 1024**2

COMMON = {"deadline": None, "database": None,
          "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large,
                                    HealthCheck.function_scoped_fixture]}  # capfd is read after every case


@dataclass(frozen=True)
class Seed:
    name: str
    suffix: str
    data: bytes


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Seed]:
    root = tmp_path_factory.mktemp("seeds")
    files: dict[str, Path] = {
        "ct_small.dcm": pydicom_test_file("CT_small.dcm"),
        "mr_small.dcm": pydicom_test_file("MR_small.dcm"),
        "slice.dcm": write_ct_series(root / "series", phantom((1, 8, 8)))[0],
        "enhanced.dcm": write_enhanced_ct(root / "enhanced.dcm", phantom((3, 6, 6))),
    }
    vol = phantom((3, 6, 5))
    for suffix in (".nii", ".nii.gz", ".nrrd", ".mha"):
        files[f"vol{suffix}"] = write_sitk(root / f"vol{suffix}", vol)
    raw_nrrd = root / "raw.nrrd"
    img = sitk.GetImageFromArray(vol.astype(np.int16))
    sitk.WriteImage(img, str(raw_nrrd), useCompression=False)
    files["raw.nrrd"] = raw_nrrd
    rgb = (np.arange(12 * 10 * 3).reshape(12, 10, 3) * 7 % 256).astype(np.uint8)
    for suffix in (".png", ".jpg", ".tif"):
        files[f"pic{suffix}"] = write_sitk(root / f"pic{suffix}", rgb, is_vector=True)
    out = {}
    for name, path in files.items():
        suffix = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
        out[name] = Seed(name=name, suffix=suffix, data=path.read_bytes())
    return out


SEED_NAMES = ["ct_small.dcm", "mr_small.dcm", "slice.dcm", "enhanced.dcm", "vol.nii", "vol.nii.gz", "vol.nrrd",
              "vol.mha", "raw.nrrd", "pic.png", "pic.jpg", "pic.tif"]

SMASH = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\x01\x00",
         b"\xff\xff", b"-1", b"999999999", b"nan", b"\x7f\xc0\x00\x00"]


@st.composite
def mutations(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "zero_header", "insert", "delete", "smash"]))
    pos = draw(st.one_of(st.integers(0, 1024), st.floats(0.0, 1.0)))  # header bytes more often than not
    if kind == "truncate":
        return (kind, pos)
    if kind == "flip":
        return (kind, pos, draw(st.lists(st.tuples(st.integers(0, 64), st.integers(1, 255)), min_size=1,
                                          max_size=8)))
    if kind == "splice":
        return (kind, pos, draw(st.sampled_from(SEED_NAMES)), draw(st.floats(0.0, 1.0)), draw(st.integers(1, 512)))
    if kind == "zero_header":
        return (kind, draw(st.integers(1, 512)))
    if kind == "insert":
        return (kind, pos, draw(st.binary(min_size=1, max_size=64)))
    if kind == "delete":
        return (kind, pos, draw(st.integers(1, 256)))
    return (kind, pos, draw(st.sampled_from(SMASH)))


def _at(data: bytes, pos: int | float) -> int:
    if not data:
        return 0
    return min(int(pos * len(data)) if isinstance(pos, float) else pos, len(data) - 1)


def mutate(data: bytes, ops: list[tuple], seeds: dict[str, Seed]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        kind = op[0]
        if kind == "zero_header":
            buf[: op[1]] = bytes(min(op[1], len(buf)))
            continue
        at = _at(bytes(buf), op[1])
        if kind == "truncate":
            del buf[at:]
        elif kind == "flip":
            for offset, mask in op[2]:
                if at + offset < len(buf):
                    buf[at + offset] ^= mask
        elif kind == "splice":
            donor = seeds[op[2]].data
            start = _at(donor, op[3])
            buf[at: at + op[4]] = donor[start: start + op[4]]
        elif kind == "insert":
            buf[at:at] = op[2]
        elif kind == "delete":
            del buf[at: at + op[2]]
        else:
            buf[at: at + len(op[2])] = op[2]
    return bytes(buf)


cases = st.tuples(
    st.sampled_from(SEED_NAMES),
    st.lists(mutations(), min_size=1, max_size=3),
    st.sampled_from(["file", "file", "file", "folder"]),  # a damaged file inside a DICOM folder, sometimes
    st.sampled_from(["refuse", "clean"]),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check_case(case: tuple, seeds: dict[str, Seed], workdir: Path, capfd: pytest.CaptureFixture | None = None) -> None:
    if capfd is not None:
        capfd.readouterr()
    try:
        _check_case(case, seeds, workdir)
    finally:
        if capfd is not None:
            out, err = capfd.readouterr()
            # Native libraries (libpng, libjpeg, MetaIO, GDCM) must not print: their text goes into the error.
            assert not out and not err, f"printed while reading: {(out + err)[:500]!r}"


def _check_case(case: tuple, seeds: dict[str, Seed], workdir: Path) -> None:
    name, ops, where, nan_policy = case
    seed = seeds[name]
    data = mutate(seed.data, ops, seeds)
    if where == "folder":
        target_dir = workdir / "folder"
        if target_dir.exists():
            shutil.rmtree(target_dir)
        target_dir.mkdir()
        (target_dir / "good.dcm").write_bytes(seeds["slice.dcm"].data)
        (target_dir / f"bad{seed.suffix}").write_bytes(data)
        target = target_dir
    else:
        target = workdir / f"case{seed.suffix}"
        target.write_bytes(data)
    try:
        volume = read_scan(target, nan_policy=nan_policy, max_bytes=FUZZ_MAX_BYTES)
    except AnomaLensError as exc:
        event(f"{type(exc).__name__}")
        return
    event("read")
    assert isinstance(volume, Volume)
    assert volume.array.dtype == np.float32 and volume.array.ndim == 3
    assert np.isfinite(volume.array).all()
    assert all(np.isfinite(volume.spacing)) and min(volume.spacing) > 0
    info = describe(volume)
    assert len(info["orientation"]) == 3


@settings(max_examples=500, derandomize=True, **COMMON)
@given(case=cases)
def test_mutated_files_raise_only_anomalens_errors(case: tuple, seeds: dict[str, Seed], workdir: Path,
                                                   capfd: pytest.CaptureFixture) -> None:
    check_case(case, seeds, workdir, capfd)


@pytest.mark.slow
@settings(max_examples=2000, **COMMON)
@given(case=cases)
def test_mutated_files_raise_only_anomalens_errors_long(case: tuple, seeds: dict[str, Seed], workdir: Path,
                                                        capfd: pytest.CaptureFixture) -> None:
    check_case(case, seeds, workdir, capfd)


def test_mutations_change_the_bytes(seeds: dict[str, Seed]) -> None:
    data = seeds["vol.nii"].data
    assert mutate(data, [("truncate", 100)], seeds) == data[:100]
    assert mutate(data, [("zero_header", 348)], seeds)[:348] == bytes(348)
    flipped = mutate(data, [("flip", 0, [(0, 1)])], seeds)
    assert flipped[0] == data[0] ^ 1 and flipped[1:] == data[1:]
    assert len(mutate(data, [("delete", 0.5, 10)], seeds)) == len(data) - 10


# ------------------------------------------------------------------------------------ header fields
#
# Each case mutates header *fields* of a MetaImage, NRRD or NIfTI file (values that crashed ITK before:
# NDims -1/-100/100, huge or negative sizes, data files that are devices, pipes or outside the folder,
# printf patterns) and is read in a child process, a batch per child: a segfault or an abort shows as the
# child's exit code and a hang as a timeout, each naming the case, and the child must print nothing (native
# libraries' lines are captured into the one error line).

HEADER_CASES_CI = 360
HEADER_CASES_SLOW = 2400
BATCH = 400
BATCH_TIMEOUT_S = 120

NUMBERS = ["-1", "-100", "0", "1", "2", "3", "4", "5", "6", "7", "8", "10", "11", "16", "17", "100", "255", "256",
           "65535", "65536", "2147483647", "2147483648", "-2147483648", "4294967295", "4294967296",
           "9223372036854775807", "9223372036854775808", "-9223372036854775809", "99999999999999999999",
           "1e308", "-1e308", "1e-308", "nan", "NaN", "inf", "-inf", "1.5", "-0", "0x10", "+3", "3.0", "03"]
WORDS = ["", " ", "abc", "%s%s%s%n", "%d", "%n", "LOCAL", "LIST", "True", "False", "\t", "é", "9 " * 300,
         "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17", "(1,0,0)", "none", "???"]
DATA_FILES = ["/dev/zero", "fifo", "zero_link", "fifo_link", "../outside.raw", "missing.raw", "subdir", ".",
              "/etc/passwd", "LIST", "LIST 2", "LOCAL", "Local", "local", "slice%03d.raw 1 3 1", "slice%03d.raw 1 3",
              "slice%s.raw 1 3 1", "slice%n.raw 1 3 1", "slice%03d.raw 3 1 1", "slice%03d.raw 1 3 0",
              "slice%03d.raw 1 9999999 1", "x%d%d.raw 1 2 1", "shared.raw", "shared.raw extra", "LIST\nfifo",
              "link_to_shared", "%", "%%d 1 2 1"]
MET_FIELDS = {
    "ObjectType": ["Image", "Tube", "Scene", ""],
    "NDims": NUMBERS,
    "DimSize": None,  # vectors
    "ElementType": ["MET_UCHAR", "MET_CHAR", "MET_SHORT", "MET_USHORT", "MET_INT", "MET_UINT", "MET_LONG",
                    "MET_ULONG", "MET_LONG_LONG", "MET_ULONG_LONG", "MET_FLOAT", "MET_DOUBLE", "MET_STRING",
                    "MET_NONE", "MET_OTHER", "MET_FLOAT_ARRAY", "MET_USHORT_ARRAY", "MET_FLOAT_MATRIX",
                    "MET_ASCII_CHAR", "met_short", "MET_SHORT MET_SHORT", "MET_"],
    "ElementDataFile": DATA_FILES,
    "ElementSpacing": None, "ElementSize": None, "Offset": None, "Position": None, "Origin": None,
    "CenterOfRotation": None, "TransformMatrix": None, "Rotation": None, "Orientation": None,
    "ElementNumberOfChannels": NUMBERS,
    "HeaderSize": NUMBERS,
    "CompressedData": ["True", "False", "1", "0", "maybe"],
    "CompressedDataSize": NUMBERS,
    "BinaryData": ["True", "False", "0", "yes"],
    "BinaryDataByteOrderMSB": ["True", "False", "2"],
    "ElementByteOrderMSB": ["True", "False"],
    "AnatomicalOrientation": ["RAI", "LPS", "RA", "RAIS", "XYZ", "???", "", "R"],
    "ElementMin": NUMBERS, "ElementMax": NUMBERS,
    "Modality": ["MET_MOD_CT", "MET_MOD_MR", "MET_MOD_UNKNOWN", "CT"],
}
NRRD_FIELDS = {
    "type": ["short", "float", "double", "uchar", "int8", "uint64", "block", "bogus", "long long", "int16_t", ""],
    "dimension": NUMBERS,
    "sizes": None,
    "encoding": ["raw", "gzip", "gz", "bzip2", "hex", "txt", "ascii", "zrl", "bogus", ""],
    "endian": ["little", "big", "middle", ""],
    "data file": DATA_FILES,
    "datafile": DATA_FILES,
    "byte skip": NUMBERS,
    "line skip": NUMBERS,
    "space": ["left-posterior-superior", "RAS", "scanner-xyz-time", "3D-right-handed", "bogus", ""],
    "space dimension": NUMBERS,
    "space directions": "vectors",
    "space origin": "vectors",
    "measurement frame": "vectors",
    "spacings": None, "thicknesses": None, "axis mins": None, "axis maxs": None,
    "kinds": ["domain domain domain", "vector domain domain domain", "space space space", "bogus", "domain", ""],
    "centers": ["cell cell cell", "node", "???"],
    "block size": NUMBERS,
    "content": WORDS,
}
#: NIfTI-1 and NIfTI-2 fields: (byte offset, struct code, how many).
NII1_FIELDS = {
    "sizeof_hdr": (0, "i", 1), "dim_info": (39, "B", 1), "dim": (40, "h", 8), "intent_code": (68, "h", 1),
    "datatype": (70, "h", 1), "bitpix": (72, "h", 1), "slice_start": (74, "h", 1), "pixdim": (76, "f", 8),
    "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1), "slice_end": (120, "h", 1),
    "slice_code": (122, "B", 1), "xyzt_units": (123, "B", 1), "qform_code": (252, "h", 1), "sform_code": (254, "h", 1),
    "quatern": (256, "f", 6), "srow": (280, "f", 12), "magic": (344, "4s", 1),
}
NII2_FIELDS = {
    "sizeof_hdr": (0, "i", 1), "magic": (4, "8s", 1), "datatype": (12, "h", 1), "bitpix": (14, "h", 1),
    "dim": (16, "q", 8), "pixdim": (104, "d", 8), "vox_offset": (168, "q", 1), "scl_slope": (176, "d", 1),
    "slice_start": (224, "q", 1), "slice_end": (232, "q", 1), "qform_code": (344, "i", 1), "sform_code": (348, "i", 1),
    "quatern": (352, "d", 6), "srow": (400, "d", 12), "slice_code": (496, "i", 1), "xyzt_units": (500, "i", 1),
}
INT_VALUES = [-(2**63), -(2**31), -32768, -100, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 100, 255, 256, 348, 352, 540,
              32767, 65535, 2**31 - 1, 2**31, 2**40, 2**62, 2**63 - 1, 2, 4, 8, 16, 64, 128, 256, 512, 768, 1024, 1536,
              2304]
FLOAT_VALUES = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1.0, 0.5, 1e30, -1e30, 1e-30, 352.0,
                348.0, 3.5e38, 2.0**40, -352.0]
MAGICS = [b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0", b"n+1\0\r\n\x1a\n", b"n+2\0\r\n\x1a\n", b"abcdefgh"]


@dataclass(frozen=True)
class HeaderSeed:
    name: str
    suffix: str
    data: bytes
    kind: str  # "meta", "nrrd" or "nifti1"/"nifti2"
    gz: bool = False


def header_seeds(root: Path) -> list[HeaderSeed]:
    """Small valid files to mutate, their data files written into ``root`` (the cases' folder)."""
    import nibabel as nib

    vol = phantom((3, 6, 5)).astype(np.int16)
    seeds = []
    for name, kwargs in (("local.mha", {}), ("packed.mha", {"useCompression": True}), ("meta.mhd", {}),
                         ("attached.nrrd", {"useCompression": False}), ("packed.nrrd", {"useCompression": True}),
                         ("detached.nhdr", {"useCompression": False})):
        sitk.WriteImage(sitk.GetImageFromArray(vol), str(root / name), **kwargs)
        kind = "meta" if name.endswith((".mha", ".mhd")) else "nrrd"
        seeds.append(HeaderSeed(name, Path(name).suffix, (root / name).read_bytes(), kind))
    rgb = sitk.GetImageFromArray(np.zeros((2, 4, 5, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(root / "vector.mha"))
    seeds.append(HeaderSeed("vector.mha", ".mha", (root / "vector.mha").read_bytes(), "meta"))
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(root / "one.nii"))
    raw = (root / "one.nii").read_bytes()
    seeds.append(HeaderSeed("one.nii", ".nii", raw, "nifti1"))
    seeds.append(HeaderSeed("one.nii.gz", ".nii.gz", raw, "nifti1", gz=True))
    img2 = nib.Nifti2Image(vol.T.astype(np.float32), np.eye(4))
    nib.save(img2, str(root / "two.nii"))
    seeds.append(HeaderSeed("two.nii", ".nii", (root / "two.nii").read_bytes(), "nifti2"))
    # Files the data-file mutations name: a shared raw file, a pattern's slices, pipes, devices, a folder.
    shared = vol.tobytes()
    (root / "shared.raw").write_bytes(shared)
    (root / "link_to_shared").symlink_to("shared.raw")
    for i in range(1, 4):
        (root / f"slice{i:03d}.raw").write_bytes(vol[i - 1].tobytes())
    os.mkfifo(root / "fifo")
    (root / "zero_link").symlink_to("/dev/zero")
    (root / "fifo_link").symlink_to("fifo")
    (root / "subdir").mkdir()
    (root.parent / "outside.raw").write_bytes(shared)
    return seeds


def _vector(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 3, 3, 3, 4, 5, 6, 9, 17])
    return " ".join(rng.choice(NUMBERS[:30]) for _ in range(n))


def _nrrd_vectors(rng: random.Random) -> str:
    n = rng.choice([0, 1, 2, 3, 3, 4])
    size = rng.choice([1, 2, 3, 3, 3, 4, 9])
    items = []
    for _ in range(n):
        if rng.random() < 0.15:
            items.append("none")
        else:
            items.append("(" + ",".join(rng.choice(NUMBERS[:35]) for _ in range(size)) + ")")
    return " ".join(items) if rng.random() > 0.1 else rng.choice(WORDS)


def _text_value(fields: dict, field: str, rng: random.Random) -> str:
    pool = fields[field]
    if pool is None:
        return _vector(rng)
    if pool == "vectors":
        return _nrrd_vectors(rng)
    return rng.choice(pool) if rng.random() > 0.1 else rng.choice(WORDS + NUMBERS)


def _split_text(seed: HeaderSeed) -> tuple[list[bytes], bytes, bytes]:
    """(header lines, separator, data) of a MetaImage or NRRD file."""
    if seed.kind == "meta":
        end = seed.data.index(b"ElementDataFile")
        end = seed.data.index(b"\n", end) + 1
        return seed.data[:end].rstrip(b"\n").split(b"\n"), b"\n", seed.data[end:]
    if b"\n\n" in seed.data:
        head, data = seed.data.split(b"\n\n", 1)
        return head.split(b"\n"), b"\n\n", data
    return seed.data.rstrip(b"\n").split(b"\n"), b"\n", b""


def mutate_text(seed: HeaderSeed, rng: random.Random) -> tuple[bytes, list[str]]:
    lines, sep, data = _split_text(seed)
    fields = MET_FIELDS if seed.kind == "meta" else NRRD_FIELDS
    mark = b" = " if seed.kind == "meta" else b": "
    ops: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        op = rng.choices(["set", "delete", "dup", "swap", "truncate", "garble"], [10, 2, 2, 1, 1, 1])[0]
        field = rng.choice(list(fields))
        key = field.encode()
        at = next((i for i, ln in enumerate(lines) if ln.split(mark.strip(), 1)[0].strip() == key), None)
        if op == "set" or (op == "dup" and at is None):
            value = _text_value(fields, field, rng)
            line = key + mark + value.encode("utf-8")
            if at is None:
                lines.insert(len(lines) - 1 if seed.kind == "meta" else len(lines), line)
            else:
                lines[at] = line
            ops.append(f"{field}={value[:40]!r}")
        elif op == "delete" and at is not None:
            del lines[at]
            ops.append(f"delete {field}")
        elif op == "dup" and at is not None:
            value = _text_value(fields, field, rng)
            lines.insert(at + rng.choice([0, 1]), key + mark + value.encode("utf-8"))
            ops.append(f"dup {field}={value[:40]!r}")
        elif op == "swap" and len(lines) > 2:
            i, j = rng.sample(range(len(lines)), 2)
            lines[i], lines[j] = lines[j], lines[i]
            ops.append(f"swap {i},{j}")
        elif op == "garble" and at is not None:
            lines[at] = lines[at].replace(mark.strip(), rng.choice([b"", b":=", b"==", b" "]), 1)
            ops.append(f"garble {field}")
        elif op == "truncate":
            ops.append("truncate")
    out = b"\n".join(lines) + sep + data
    if "truncate" in ops and len(out) > 2:
        out = out[: rng.randrange(1, len(out))]
    return out, ops


def mutate_nifti(seed: HeaderSeed, rng: random.Random) -> tuple[bytes, list[str]]:
    buf = bytearray(seed.data)
    fields = NII2_FIELDS if seed.kind == "nifti2" else NII1_FIELDS
    order = "<"
    ops: list[str] = []
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        if rng.random() < 0.08 and len(buf) > 2:
            cut = rng.randrange(1, len(buf))
            del buf[cut:]
            ops.append(f"truncate {cut}")
            continue
        field = rng.choice(list(fields))
        offset, code, count = fields[field]
        k = rng.randrange(count)
        size = struct.calcsize(code)
        if offset + (k + 1) * size > len(buf):
            continue
        if code.endswith("s"):
            value: object = rng.choice(MAGICS)[:size].ljust(size, b"\0")
        elif code in "fd":
            value = rng.choice(FLOAT_VALUES)
        else:
            signed = code.islower()
            bits = 8 * size
            low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            value = max(low, min(rng.choice(INT_VALUES), high))
        if code == "f" and isinstance(value, float) and np.isfinite(value) and abs(value) > 3.4e38:
            value = 3.4e38
        struct.pack_into(f"{order}{code}", buf, offset + k * size, value)
        ops.append(f"{field}[{k}]={value!r}")
    data = bytes(buf)
    if seed.gz:
        import gzip

        data = gzip.compress(data, mtime=0)
        if rng.random() < 0.1:
            data = data[: rng.randrange(10, len(data))]
            ops.append("truncate gz")
    return data, ops


def header_cases(root: Path, n: int, seed: int) -> list[dict]:
    """``n`` mutated files in ``root`` (reproducible from ``seed``), with the crashing headers of issue #18 first."""
    rng = random.Random(seed)
    seeds = header_seeds(root)
    cases = regression_cases(root, {s.name: s for s in seeds})
    while len(cases) < n:
        s = rng.choice(seeds)
        data, ops = mutate_text(s, rng) if s.kind in ("meta", "nrrd") else mutate_nifti(s, rng)
        path = root / f"case{len(cases):05d}{s.suffix}"
        path.write_bytes(data)
        cases.append({"id": len(cases), "path": str(path), "what": f"{s.name}: {'; '.join(ops)}",
                      "nan_policy": rng.choice(["refuse", "clean"])})
    return cases


#: Headers that crashed or hung the process before (issue #18), always in the corpus.
REGRESSIONS = [
    ("local.mha", "NDims", "-1"), ("local.mha", "NDims", "-100"), ("local.mha", "NDims", "100"),
    ("local.mha", "NDims", "6"), ("local.mha", "DimSize", "5 6 99999999999999999999"),
    ("local.mha", "DimSize", "5 -6 3"), ("local.mha", "DimSize", "2147483648 2147483648 2147483648"),
    ("local.mha", "ElementType", "MET_STRING"), ("local.mha", "CompressedDataSize", "99999999999"),
    ("meta.mhd", "ElementDataFile", "/dev/zero"), ("meta.mhd", "ElementDataFile", "zero_link"),
    ("meta.mhd", "ElementDataFile", "fifo"), ("meta.mhd", "ElementDataFile", "fifo_link"),
    ("meta.mhd", "ElementDataFile", "../outside.raw"), ("meta.mhd", "ElementDataFile", "slice%s.raw 1 3 1"),
    ("meta.mhd", "ElementDataFile", "slice%n.raw 1 3 1"), ("meta.mhd", "ElementDataFile", "LIST\nfifo"),
    ("detached.nhdr", "data file", "/dev/zero"), ("detached.nhdr", "data file", "fifo"),
    ("detached.nhdr", "data file", "zero_link"), ("detached.nhdr", "data file", "../outside.raw"),
    ("detached.nhdr", "data file", "slice%s.raw 1 3 1"), ("attached.nrrd", "dimension", "-1"),
    ("attached.nrrd", "dimension", "100"), ("attached.nrrd", "sizes", "5 -6 3"),
    ("attached.nrrd", "type", "block"), ("attached.nrrd", "encoding", "zrl"),
]


REFUSALS = ("CorruptFileError", "InvalidVolumeError", "TooLargeError")


def regression_cases(root: Path, seeds: dict[str, HeaderSeed]) -> list[dict]:
    cases = []
    for name, field, value in REGRESSIONS:
        seed = seeds[name]
        lines, sep, data = _split_text(seed)
        mark = b" = " if seed.kind == "meta" else b": "
        at = next((i for i, ln in enumerate(lines) if ln.split(mark.strip(), 1)[0].strip() == field.encode()), None)
        if at is None:
            lines.insert(len(lines) - 1, field.encode() + mark + value.encode())
        else:
            lines[at] = field.encode() + mark + value.encode()
        path = root / f"regression{len(cases):03d}{seed.suffix}"
        path.write_bytes(b"\n".join(lines) + sep + data)
        cases.append({"id": len(cases), "path": str(path), "what": f"{name}: {field} = {value!r}",
                      "regression": True})
    for dims in ([0, 3, 4, 5, 1, 1, 1, 1], [-1, 3, 4, 5, 1, 1, 1, 1], [8, 3, 4, 5, 1, 1, 1, 1],
                 [3, -4, 4, 5, 1, 1, 1, 1]):
        buf = bytearray(seeds["one.nii"].data)
        struct.pack_into("<8h", buf, 40, *dims)
        path = root / f"regression{len(cases):03d}.nii"
        path.write_bytes(bytes(buf))
        cases.append({"id": len(cases), "path": str(path), "what": f"one.nii: dim = {dims}", "regression": True})
    return cases


def run_in_children(cases: list[dict], workdir: Path, batch: int = BATCH) -> dict[int, dict]:
    """Read ``cases`` in child processes, a batch each; fail on a crash, a hang or anything printed."""
    outcomes: dict[int, dict] = {}
    for start in range(0, len(cases), batch):
        part = cases[start:start + batch]
        manifest = workdir / f"manifest{start}.json"
        results = workdir / f"results{start}.jsonl"
        manifest.write_text(json.dumps(part))
        code = f"from tests.io_support import fuzz_worker; fuzz_worker({str(manifest)!r}, {str(results)!r})"
        try:
            proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                                  timeout=BATCH_TIMEOUT_S)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            rc, out, err = "timeout", exc.stdout or b"", exc.stderr or b""
        lines = [json.loads(ln) for ln in results.read_text().splitlines()] if results.exists() else []
        started = [ln["id"] for ln in lines if ln.get("started")]
        for ln in lines:
            if not ln.get("started"):
                outcomes[ln["id"]] = ln
        unfinished = [i for i in started if i not in outcomes]
        culprit = next((c for c in part if c["id"] in unfinished), None) or (part[0] if not started else None)
        assert rc == 0, (f"the reader child {'hung' if rc == 'timeout' else f'died with exit code {rc}'} on case "
                         f"{culprit}\n{err.decode(errors='replace')[-2000:]}")
        assert not out and not err, (f"native or Python output leaked while reading cases {part[0]['id']}-"
                                     f"{part[-1]['id']}:\n{(out + err).decode(errors='replace')[:2000]}")
        assert len(outcomes) == start + len(part), "the child did not report every case"
    return outcomes


def check_outcomes(cases: list[dict], outcomes: dict[int, dict]) -> Counter:
    """0 tracebacks, usable volumes, one-line errors that never end in ITK's stale 'Reason: Success'."""
    tally: Counter = Counter()
    bad = []
    for case in cases:
        got = outcomes[case["id"]]
        if "traceback" in got:
            bad.append(f"{case['what']}: traceback\n{got['traceback']}")
        elif "read" in got:
            tally["read"] += 1
            if got["problems"]:
                bad.append(f"{case['what']}: read an unusable volume: {got['problems']}")
        else:
            tally[got["error"]] += 1
            message = got["message"]
            one_line = "\n" not in message or got["error"] == "MultipleSeriesError"
            if message.rstrip(". ").endswith("Reason: Success") or not one_line:
                bad.append(f"{case['what']}: {got['error']}: {message!r}")
            if case.get("regression") and got["error"] not in REFUSALS:
                bad.append(f"{case['what']}: expected a refusal, got {got}")
    assert not bad, f"{len(bad)} of {len(cases)} cases went wrong:\n" + "\n".join(bad[:20])
    return tally


def test_header_field_mutations_never_crash_hang_or_print(tmp_path: Path) -> None:
    root = tmp_path / "cases"
    root.mkdir()
    cases = header_cases(root, HEADER_CASES_CI, seed=18)
    assert len(cases) >= 300
    tally = check_outcomes(cases, run_in_children(cases, tmp_path))
    # The corpus must exercise both sides: many refusals, and mutations harmless enough to still read.
    assert tally["read"] >= 10 and tally["CorruptFileError"] >= 100, tally


@pytest.mark.slow
def test_header_field_mutations_never_crash_hang_or_print_long(tmp_path: Path) -> None:
    root = tmp_path / "cases"
    root.mkdir()
    cases = header_cases(root, HEADER_CASES_SLOW, seed=1818)
    assert len(cases) >= 2000
    check_outcomes(cases, run_in_children(cases, tmp_path))
