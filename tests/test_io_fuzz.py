"""Mutated scan files (truncated, bit-flipped, spliced, zeroed headers, smashed size fields) fed to every
reader through ``read_scan``: the only exceptions allowed out are ``AnomaLensError`` subclasses, and
whatever is returned is a usable volume.

The default run checks 500 reproducible cases (derandomised, so CI is stable); ``-m slow`` checks 2,000
fresh random ones.
"""

from __future__ import annotations

import shutil
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

#: Small budget: a mutated header may claim a huge image; the fuzz must not allocate gigabytes to find out.
FUZZ_MAX_BYTES = 16 * 1024**2

COMMON = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large]}


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


def check_case(case: tuple, seeds: dict[str, Seed], workdir: Path) -> None:
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
def test_mutated_files_raise_only_anomalens_errors(case: tuple, seeds: dict[str, Seed], workdir: Path) -> None:
    check_case(case, seeds, workdir)


@pytest.mark.slow
@settings(max_examples=2000, **COMMON)
@given(case=cases)
def test_mutated_files_raise_only_anomalens_errors_long(case: tuple, seeds: dict[str, Seed], workdir: Path) -> None:
    check_case(case, seeds, workdir)


def test_mutations_change_the_bytes(seeds: dict[str, Seed]) -> None:
    data = seeds["vol.nii"].data
    assert mutate(data, [("truncate", 100)], seeds) == data[:100]
    assert mutate(data, [("zero_header", 348)], seeds)[:348] == bytes(348)
    flipped = mutate(data, [("flip", 0, [(0, 1)])], seeds)
    assert flipped[0] == data[0] ^ 1 and flipped[1:] == data[1:]
    assert len(mutate(data, [("delete", 0.5, 10)], seeds)) == len(data) - 10
