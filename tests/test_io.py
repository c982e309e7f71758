"""Scan readers: every format round-trips its geometry, DICOM series are sorted in space and rescaled,
bad input gets a specific error, and nothing identifying reaches the metadata."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from anomalens.engine import io as scan_io
from anomalens.engine.errors import (
    Cancelled,
    ConfigError,
    CorruptFileError,
    EmptyInputError,
    InvalidVolumeError,
    MultipleSeriesError,
    NotAScanError,
    SampleError,
    TooLargeError,
)
from anomalens.engine.io import (
    MAX_BYTES_ENV,
    Reader,
    describe,
    list_series,
    orientation_code,
    read_scan,
    reader_for,
    register_reader,
    write_like,
)
from anomalens.engine.io.metadata import DICOM_ALLOWED
from anomalens.engine.io.spec import load_spec, parse_selection, split_spec
from anomalens.engine.progress import CancelToken
from anomalens.engine.volume import Volume, Window
from tests.io_support import (
    phantom,
    pydicom_test_file,
    write_ct_series,
    write_ct_slice,
    write_enhanced_ct,
    write_sitk,
)

IDENTIFIERS = ("Doe", "ID-12345", "19700101", "General Hospital")

# ------------------------------------------------------------------------------------ SimpleITK formats


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_formats_round_trip_voxels_and_geometry(tmp_path: Path, suffix: str) -> None:
    vol = phantom()
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane: order of axes matters
    path = write_sitk(tmp_path / f"scan{suffix}", vol, spacing=(0.8, 0.9, 2.5), origin=(10.0, -20.0, 30.0),
                      direction=direction)
    out = read_scan(path)
    assert out.array.dtype == np.float32
    np.testing.assert_array_equal(out.array, vol)
    np.testing.assert_allclose(out.spacing, (0.8, 0.9, 2.5), rtol=1e-6)
    np.testing.assert_allclose(out.origin, (10.0, -20.0, 30.0), atol=1e-5)
    np.testing.assert_allclose(out.direction, direction, atol=1e-6)
    assert out.modality == "OT" and out.warnings == []
    assert out.source == path
    assert reader_for(path).name in {"nifti", "nrrd", "metaimage"}


def test_orientation_codes_follow_the_direction_cosines(tmp_path: Path) -> None:
    ras = write_sitk(tmp_path / "ras.nii.gz", phantom(), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert describe(read_scan(ras))["orientation"] == "RAS"
    assert orientation_code((1, 0, 0, 0, 1, 0, 0, 0, 1)) == "LPS"
    # Coronal DICOM slices: rows along +x, columns along -z, normal +y; direction is row-major, axes as columns.
    assert orientation_code((1, 0, 0, 0, 0, 1, 0, -1, 0)) == "LIP"
    assert orientation_code((0.0,) * 9) == "???"
    rng = np.random.default_rng(0)
    for _ in range(20):  # agrees with ITK's own naming on random oblique rotations
        q, _r = np.linalg.qr(rng.normal(size=(3, 3)))
        direction = tuple(q.ravel())
        assert orientation_code(direction) == sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(direction)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_pictures_become_one_grey_slice(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(1)
    rgb = np.zeros((24, 32, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    rgb[..., 1] = 80
    rgb[8:16, 8:16, 2] = 200 + rng.integers(0, 20, size=(8, 8))
    path = write_sitk(tmp_path / f"photo{suffix}", rgb, is_vector=True)
    out = read_scan(path)
    assert out.shape == (1, 24, 32)
    grey = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
    tol = 6.0 if suffix == ".jpg" else 1e-3
    assert np.abs(out.array[0] - grey).mean() < tol
    assert out.metadata["format"] in {"PNG", "TIFF", "JPEG"}


def test_a_colour_picture_becomes_grey_a_block_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The luma of a colour picture is computed in float32 blocks: its peak is the grey slice, not 8× it."""
    import tracemalloc

    from anomalens.engine.io import base

    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, size=(300, 400, 4), dtype=np.uint8)
    path = write_sitk(tmp_path / "photo.png", rgba, is_vector=True)
    monkeypatch.setattr(base, "LUMA_CHUNK", 1000)  # blocks end mid-row, and the last one is short
    tracemalloc.start()
    try:
        out = read_scan(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    grey = rgba[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # alpha dropped
    np.testing.assert_allclose(out.array[0], grey, rtol=1e-6, atol=1e-4)
    assert peak < 2 * out.array.nbytes  # a float64 copy of the channels alone was 6× the grey slice


def test_picture_with_wrong_suffix_is_read_by_its_magic(tmp_path: Path) -> None:
    grey = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)
    png = write_sitk(tmp_path / "a.png", grey)
    misnamed = tmp_path / "a.jpg"
    shutil.copy(png, misnamed)
    np.testing.assert_array_equal(read_scan(misnamed).array[0], grey)


def test_4d_file_keeps_the_first_volume_with_a_warning(tmp_path: Path) -> None:
    data = np.stack([phantom(seed=s) for s in range(3)])  # (t, z, y, x)
    path = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(v) for v in data]), str(path))
    out = read_scan(path)
    np.testing.assert_array_equal(out.array, data[0])
    assert any("4-D" in w and "first 3-D volume" in w for w in out.warnings)


def test_nan_voxels_are_refused_or_cleaned(tmp_path: Path) -> None:
    vol = phantom()
    vol[0, 0, 0] = np.nan
    vol[1, 2, 3] = np.inf
    path = write_sitk(tmp_path / "nan.nii.gz", vol)
    with pytest.raises(InvalidVolumeError, match=r"2 of .* voxels are NaN or infinite"):
        read_scan(path)
    out = read_scan(path, nan_policy="clean")
    assert np.isfinite(out.array).all()
    finite_min = np.nanmin(np.where(np.isinf(vol), np.nan, vol))
    assert out.array[0, 0, 0] == out.array[1, 2, 3] == pytest.approx(finite_min)
    assert any("replaced 2 NaN/infinite voxels" in w for w in out.warnings)
    with pytest.raises(ConfigError, match="nan_policy"):
        read_scan(path, nan_policy="ignore")


def test_memory_budget_is_checked_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_sitk(tmp_path / "big.nii", np.zeros((40, 64, 64), np.float32))
    raw = path.read_bytes()
    truncated = tmp_path / "truncated.nii"
    truncated.write_bytes(raw[: len(raw) // 10])  # pixels missing: only a header-first check can say TooLarge
    with pytest.raises(TooLargeError, match=r"640\.0 KiB .*40×64×64"):
        read_scan(truncated, max_bytes=100_000)
    with pytest.raises(CorruptFileError, match=r"could not be read: Expected \d+ bytes, got \d+ bytes from "
                                               r"truncated\.nii \(could the file be damaged\?\)$"):
        read_scan(truncated)  # the reason, not its continuation line alone (" - could the file be damaged?")
    monkeypatch.setenv(MAX_BYTES_ENV, "1000")
    with pytest.raises(TooLargeError, match=MAX_BYTES_ENV):
        read_scan(path)
    assert read_scan(path, max_bytes=10**7).shape == (40, 64, 64)  # the argument beats the environment
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match=MAX_BYTES_ENV):
        read_scan(path)


def test_dicom_budget_is_checked_before_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ct_series(tmp_path / "s", phantom((6, 16, 16)))

    def no_pixels(*args, **kwargs):
        raise AssertionError("pixels were read before the budget check")

    monkeypatch.setattr("anomalens.engine.io.dicom.read_pixels", no_pixels)
    with pytest.raises(TooLargeError, match="6×16×16"):
        read_scan(tmp_path / "s", max_bytes=6 * 16 * 16 * 4 - 1)


# ------------------------------------------------------------------------------------------- DICOM


def test_dicom_series_is_sorted_in_space_and_in_hounsfield_units(tmp_path: Path) -> None:
    hu = phantom((5, 12, 16))
    paths = write_ct_series(tmp_path / "ct", hu, slope=2.0, intercept=-1024.0, z0=-20.0, dz=2.5)
    out = read_scan(tmp_path / "ct")
    np.testing.assert_allclose(out.array, hu, atol=1.01)  # slope 2: stored values round to ±1 HU
    assert out.spacing == pytest.approx((0.5, 0.75, 2.5))  # PixelSpacing is (row, column) = (y, x)
    assert out.origin == pytest.approx((-40.0, -30.0, -20.0))
    assert out.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert out.modality == "CT"
    assert out.windows == [Window(center=40.0, width=400.0)]
    assert out.warnings == []
    info = describe(out)
    assert info["units"] == "HU" and info["shape"] == [5, 12, 16] and info["orientation"] == "LPS"
    assert info["series_uid"] == "1.2.826.0.1.3680043.8.498.10"
    assert out.metadata["n_files"] == len(paths) == 5


def test_dicom_sagittal_series_sorts_along_the_slice_normal(tmp_path: Path) -> None:
    hu = phantom((4, 10, 12))
    folder = tmp_path / "sag"
    folder.mkdir()
    for k, i in enumerate([2, 0, 3, 1]):
        stored = np.round(hu[i] + 1024).astype(np.int16)
        # rows run along +y, columns down (-z): the normal is -x, so slice i sits at x = -5 * i.
        write_ct_slice(folder / f"{k}.dcm", stored, z=0.0, series_uid="1.2.3.4", instance=k + 1,
                       orientation=(0, 1, 0, 0, 0, -1), position=(-5.0 * i, 0.0, 50.0))
    out = read_scan(folder)
    np.testing.assert_allclose(out.array, hu, atol=0.51)
    assert out.spacing[2] == pytest.approx(5.0)
    assert out.origin == pytest.approx((0.0, 0.0, 50.0))
    assert out.direction == pytest.approx((0, 0, -1, 1, 0, 0, 0, -1, 0))


def test_missing_slice_is_filled_or_reported_with_the_gap(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "gap", phantom((6, 8, 8)), z0=0.0, dz=2.5, skip=(3,))
    filled = read_scan(tmp_path / "gap")  # the default: an empty slice where slice 3 was (tests/test_io_gaps.py)
    assert filled.shape == (6, 8, 8) and filled.metadata["gap_slices"] == [3]
    assert any("1 empty slice was inserted" in w for w in filled.warnings)
    out = read_scan(tmp_path / "gap", gaps="stack")
    assert out.shape == (5, 8, 8)
    assert out.spacing[2] == pytest.approx(2.5)
    (gap,) = [w for w in out.warnings if "missing slices" in w]
    assert "5.00 mm" in gap and "5.00 and 10.00 mm" in gap and "about 1 slice" in gap


def test_two_series_must_be_chosen_by_uid(tmp_path: Path) -> None:
    folder = tmp_path / "study"
    write_ct_series(folder / "a", phantom((3, 8, 8)), series_uid="1.2.3.100", description="AX SOFT")
    write_ct_series(folder / "b", phantom((4, 8, 8), seed=2), series_uid="1.2.3.200", description="AX LUNG")
    with pytest.raises(MultipleSeriesError, match="--series") as err:
        read_scan(folder)
    assert {s["uid"] for s in err.value.series} == {"1.2.3.100", "1.2.3.200"}
    assert "AX LUNG" in str(err.value) and "1.2.3.100" in str(err.value)
    out = read_scan(folder, series_uid="1.2.3.200")
    assert out.shape == (4, 8, 8)
    listed = list_series(folder)
    assert [(s["uid"], s["description"], s["modality"], s["n_files"]) for s in listed] == [
        ("1.2.3.100", "AX SOFT", "CT", 3), ("1.2.3.200", "AX LUNG", "CT", 4)]
    assert not any(i in str(listed) for i in IDENTIFIERS)
    with pytest.raises(ConfigError, match=r"1\.2\.3\.999 is not in"):
        read_scan(folder, series_uid="1.2.3.999")


def test_metadata_keeps_no_patient_identifiers(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", phantom((2, 8, 8)))
    out = read_scan(tmp_path / "ct")
    technical = set(DICOM_ALLOWED) | {"format", "series_uid", "n_files", "n_images"}
    assert set(out.metadata) <= technical
    assert "PatientName" not in out.metadata and "PatientID" not in out.metadata
    text = repr(out.metadata) + repr(describe(out))
    assert not any(i in text for i in IDENTIFIERS)
    assert out.metadata["SeriesDescription"] == "AX CT"  # technical fields are kept


def test_pydicom_ct_small_has_air_near_minus_1000_hu() -> None:
    path = pydicom_test_file("CT_small.dcm")
    import pydicom

    raw = pydicom.dcmread(path)
    assert str(raw.PatientName)  # the file carries a patient name ...
    out = read_scan(path)
    info = describe(out)
    assert info["units"] == "HU" and info["modality"] == "CT" and info["shape"] == [1, 128, 128]
    low, high = info["intensity_range"]
    assert -1100 < low < -850 and high > 500  # air, then bone
    assert low == pytest.approx(raw.pixel_array.min() * float(raw.RescaleSlope) + float(raw.RescaleIntercept))
    assert "PatientName" not in out.metadata and str(raw.PatientName) not in repr(info)  # ... we do not


def test_enhanced_multiframe_frames_are_sorted_and_rescaled(tmp_path: Path) -> None:
    hu = phantom((4, 10, 12))
    path = write_enhanced_ct(tmp_path / "enhanced.dcm", hu, z0=10.0, dz=3.0, intercept=-1000.0)
    out = read_scan(path)
    np.testing.assert_allclose(out.array, hu, atol=0.51)
    assert out.spacing == pytest.approx((0.6, 0.6, 3.0))
    assert out.origin == pytest.approx((0.0, 0.0, 10.0))
    assert out.warnings == []


def test_rt_dose_grid_offsets_give_the_slice_spacing() -> None:
    import pydicom

    path = pydicom_test_file("rtdose.dcm")
    offsets = [float(v) for v in pydicom.dcmread(path, stop_before_pixels=True).GridFrameOffsetVector]
    out = read_scan(path)
    assert out.shape[0] == len(offsets)
    assert out.spacing[2] == pytest.approx(abs(offsets[1] - offsets[0]))


def test_repeated_positions_keep_the_first_image_each(tmp_path: Path) -> None:
    folder = tmp_path / "dyn"
    folder.mkdir()
    hu = phantom((3, 8, 8))
    for t in (2, 1):  # the second time point is written first
        for i in range(3):
            stored = np.round(hu[i] + 1024 + 100 * (t - 1)).astype(np.int16)
            write_ct_slice(folder / f"t{t}_{i}.dcm", stored, z=2.0 * i, series_uid="1.2.3.5", instance=i + 1,
                           acquisition=t)
    out = read_scan(folder)
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out.array, hu, atol=0.51)  # acquisition 1, not 2
    assert any("2 images at each of its 3 positions" in w for w in out.warnings)


def test_slices_without_positions_fall_back_to_instance_numbers(tmp_path: Path) -> None:
    import pydicom

    hu = phantom((3, 8, 8))
    paths = write_ct_series(tmp_path / "ct", hu, shuffle_seed=None)  # instance k+1 shows slice k
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.SpacingBetweenSlices = 4.0
        ds.save_as(path)
    paths[0].rename(tmp_path / "ct" / "ZZZ.dcm")  # file-name order now disagrees with instance order
    out = read_scan(tmp_path / "ct")
    np.testing.assert_allclose(out.array, hu, atol=1.01)
    assert out.spacing[2] == pytest.approx(4.0)
    assert any("instance-number order" in w for w in out.warnings)
    assert len(list_series(paths[1])) == 1  # a single file lists its own series


def test_single_dicom_file_is_one_slice(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", phantom((3, 8, 8)), shuffle_seed=None)
    out = read_scan(paths[1])
    assert out.shape == (1, 8, 8)
    assert out.origin[2] == pytest.approx(-20.0 + 2.5)


def test_mixed_image_sizes_in_one_series_are_refused(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "m", phantom((3, 8, 8)))
    write_ct_series(tmp_path / "m", phantom((2, 8, 10)), z0=50.0, name="OTHER")
    with pytest.raises(InvalidVolumeError, match=r"differ in size \(8×8 \(3 images\), 10×8 \(2 images\)\)"):
        read_scan(tmp_path / "m")


def test_folder_skips_damaged_and_foreign_files_with_warnings(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", phantom((4, 8, 8)), shuffle_seed=None)
    (tmp_path / "ct" / "notes.txt").write_text("not an image")
    paths[3].write_bytes(paths[3].read_bytes()[:200])
    out = read_scan(tmp_path / "ct")
    assert out.shape == (3, 8, 8)
    assert any("ignored 1 file(s) in the folder that are not DICOM images" in w for w in out.warnings)
    assert not any("notes.txt" in w for w in out.warnings)  # counted, not named: such names are often patients'
    assert any("damaged" in w and paths[3].name in w for w in out.warnings)


def test_damaged_pixels_in_a_series_name_the_file(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "ct", phantom((4, 8, 8)), shuffle_seed=None)
    paths[2].write_bytes(paths[2].read_bytes()[:-20])  # header intact, pixel data cut short
    with pytest.raises(CorruptFileError, match=f"{paths[2].name}.*move it away"):
        read_scan(tmp_path / "ct")


def test_truncated_jpeg_is_read_with_a_warning(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = write_sitk(tmp_path / "photo.jpg", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    assert read_scan(path).warnings == []
    path.write_bytes(path.read_bytes()[:-300])
    assert any("truncated" in w for w in read_scan(path).warnings)


def test_cancel_stops_a_folder_read(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "ct", phantom((3, 8, 8)))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        read_scan(tmp_path / "ct", cancel=token)
    seen: list[float] = []
    read_scan(tmp_path / "ct", progress=lambda f, m: seen.append(f))
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)


# ------------------------------------------------------------------------------------------- errors


def test_bad_inputs_get_specific_errors(tmp_path: Path) -> None:
    with pytest.raises(NotAScanError, match="does not exist"):
        read_scan(tmp_path / "nope.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyInputError, match="holds no files"):
        read_scan(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    with pytest.raises(NotAScanError, match="no DICOM images"):
        read_scan(tmp_path / "docs")
    with pytest.raises(NotAScanError, match="not a scan format"):
        read_scan(tmp_path / "docs" / "readme.txt")
    nii = write_sitk(tmp_path / "x.nii.gz", phantom())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(nii.read_bytes()[:200])
    with pytest.raises(CorruptFileError, match=r"cut\.nii\.gz looks like NIfTI"):
        read_scan(cut)
    with pytest.raises(CorruptFileError, match="less than expected"):
        read_scan(pydicom_test_file("MR_truncated.dcm"))
    with pytest.raises(EmptyInputError, match="without an image"):
        read_scan(pydicom_test_file("rtplan.dcm"))
    (tmp_path / "zero.nii").write_bytes(b"")
    with pytest.raises(EmptyInputError, match="empty file"):
        read_scan(tmp_path / "zero.nii")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is text, not a PNG")
    with pytest.raises(CorruptFileError):
        read_scan(fake)


# ------------------------------------------------------------------------------------------- registry


@pytest.fixture
def restore_registry():
    saved = scan_io.registered_readers()
    yield
    from anomalens.engine.io import base

    base._REGISTRY[:] = saved


def test_registry_takes_a_new_format(tmp_path: Path, restore_registry) -> None:
    class CsvReader(Reader):
        name = "csv-slice"
        suffixes = (".csv",)

        def read(self, path: Path, **opts) -> Volume:
            return Volume(np.loadtxt(path, delimiter=","), metadata={"format": "CSV"})

    path = tmp_path / "slice.csv"
    path.write_text("1,2\n3,4\n")
    with pytest.raises(NotAScanError):
        read_scan(path)
    register_reader(CsvReader())
    assert reader_for(path).name == "csv-slice"
    out = read_scan(path)
    assert out.shape == (1, 2, 2) and out.source == path
    assert reader_for(tmp_path).name == "dicom-folder"


# ------------------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nii", ".mha"])
def test_write_like_puts_results_on_the_scan_grid(tmp_path: Path, suffix: str) -> None:
    write_ct_series(tmp_path / "ct", phantom((4, 8, 10)))
    vol = read_scan(tmp_path / "ct").select_slices([1, 2, 3])
    heat = np.random.default_rng(0).random(vol.shape)  # float64 in, float32 out
    out = write_like(vol, heat, tmp_path / "out" / f"heat{suffix}")
    back = read_scan(out)
    np.testing.assert_allclose(back.array, heat, rtol=1e-6)
    assert back.spacing == pytest.approx(vol.spacing) and back.origin == pytest.approx(vol.origin)
    assert back.direction == pytest.approx(vol.direction)
    assert sorted(p.name for p in out.parent.iterdir()) == [f"heat{suffix}"]  # no temporary files left
    mask = write_like(vol, heat > 0.5, tmp_path / "out" / f"mask{suffix}")
    assert sitk.ReadImage(str(mask)).GetPixelID() == sitk.sitkUInt8


def test_the_same_result_written_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    """No temporary name or time in the gzip header: identical runs can be checked by their files' hashes."""
    vol = Volume(np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5), spacing=(0.5, 0.5, 2.0))
    a = write_like(vol, vol.array, tmp_path / "a" / "heatmap.nii.gz")
    b = write_like(vol, vol.array, tmp_path / "b" / "heatmap.nii.gz")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes()[3] & 0x08 == 0  # gzip FLG: no FNAME field


def test_write_like_refuses_wrong_shapes_and_formats(tmp_path: Path) -> None:
    vol = Volume(np.zeros((2, 4, 4)))
    with pytest.raises(InvalidVolumeError, match="does not match"):
        write_like(vol, np.zeros((2, 4, 5)), tmp_path / "a.nii.gz")
    with pytest.raises(ConfigError, match=r"\.nii\.gz"):
        write_like(vol, np.zeros((2, 4, 4)), tmp_path / "a.mhd")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(("text", "expected"), [
    ("3", [3]), ("0-2", [0, 1, 2]), ("5-6, 0 ,2-3", [0, 2, 3, 5, 6]), ("1-1,1", [1]), ("0-9", list(range(10))),
])
def test_parse_selection(text: str, expected: list[int]) -> None:
    assert parse_selection(text, 10) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"), ("3-", "bad slice selection"), ("a", "bad slice selection"), ("1,,2", "bad slice selection"),
    ("-1", "bad slice selection"), ("5-2", "start is after the end"), ("9-10", "slice 10 is out of range"),
    ("1.5", "bad slice selection"),
])
def test_parse_selection_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_selection(text, 10)


def test_split_spec_rule(tmp_path: Path) -> None:
    hashed = tmp_path / "scan#2.nii"
    hashed.write_bytes(b"")
    assert split_spec(str(hashed)) == (str(hashed), None)
    assert split_spec(f"{hashed}#0-3") == (str(hashed), "0-3")
    assert split_spec("sample:brain#4") == ("sample:brain", "4")
    assert split_spec(r"C:\scans\ct.nii.gz#1-2") == (r"C:\scans\ct.nii.gz", "1-2")
    assert split_spec("ct.nii.gz") == ("ct.nii.gz", None)


def test_load_spec_selects_slices(tmp_path: Path) -> None:
    vol = phantom((6, 8, 8))
    path = write_sitk(tmp_path / "ct.nii.gz", vol, origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = load_spec(f"{path}#1-2,4")
    np.testing.assert_array_equal(out.array, vol[[1, 2, 4]])
    assert out.metadata["selected_slices"] == [1, 2, 4]
    assert out.origin[2] == pytest.approx(2.5)
    with pytest.raises(ConfigError, match="out of range"):
        load_spec(f"{path}#5-6")
    with pytest.raises(ConfigError, match="no file, folder or sample"):
        load_spec("#1")


def test_load_spec_resolves_samples_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalens.engine.samples as samples

    path = write_sitk(tmp_path / "brain.nii.gz", phantom((3, 8, 8)))

    class Fetched:
        image = path
        mask = None

    asked: list[str] = []

    def fake_fetch(name: str) -> Fetched:
        asked.append(name)
        if name != "brain":
            raise SampleError(f"unknown sample {name!r}")
        return Fetched()

    monkeypatch.setattr(samples, "fetch_sample", fake_fetch, raising=False)
    out = load_spec("sample:brain#0")
    assert asked == ["brain"] and out.shape == (1, 8, 8) and out.metadata["sample"] == "brain"
    with pytest.raises(SampleError):
        load_spec("sample:nothing")


def test_gzip_nifti_is_recognised_by_suffix_only(tmp_path: Path) -> None:
    raw = write_sitk(tmp_path / "plain.nii", phantom())
    gz = tmp_path / "packed.nii.gz"
    gz.write_bytes(gzip.compress(raw.read_bytes()))
    np.testing.assert_array_equal(read_scan(gz).array, read_scan(raw).array)
    renamed = tmp_path / "plain_without_suffix"
    shutil.copy(raw, renamed)
    assert reader_for(renamed).name == "nifti"  # the n+1 magic at byte 344


def test_a_scan_with_nans_can_be_used_from_every_command(tmp_path: Path, capsys, monkeypatch) -> None:
    """The error said "read with nan_policy='clean'", which no command but info could do: --nan is global now."""
    from anomalens.engine.cli.main import main
    from tests.phantoms import phantom_slices

    monkeypatch.delenv("ANOMALENS_NAN", raising=False)
    vol = (phantom_slices(4, 64, seed=1)[0] * 1000).astype(np.float32)
    vol[1, 3, 3] = np.nan
    scan = write_sitk(tmp_path / "nan.nii.gz", vol)
    assert main(["train", "--detector", "patchcore", "--normals", str(scan), "--out", str(tmp_path / "m"),
                 "--set", "input_size=64", "--set", "levels=[\"s8\"]"]) == 2
    err = capsys.readouterr().err
    assert "pass --nan clean" in err and err.count("\n") == 1
    assert main(["train", "--detector", "patchcore", "--normals", str(scan), "--out", str(tmp_path / "m"),
                 "--set", "input_size=64", "--set", "levels=[\"s8\"]", "--nan", "clean"]) == 0
    assert main(["--nan", "clean", "score", "--model", str(tmp_path / "m"), str(scan), "--out",
                 str(tmp_path / "o")]) == 0
    assert "replaced 1 NaN/infinite voxels" in capsys.readouterr().err
    assert "ANOMALENS_NAN" not in os.environ  # the option was that run's, not the process's
    assert main(["info", str(scan), "--nan", "clean", "--json"]) == 0


def test_a_nifti_without_voxel_size_is_read_as_1_mm_and_says_so(tmp_path: Path) -> None:
    """ITK turned pixdim 0 into 1 mm without a word: lesion volumes in mL then rested on an invented spacing."""
    import struct

    path = write_sitk(tmp_path / "p.nii", phantom((3, 8, 8)), spacing=(0.8, 0.8, 2.0))
    assert not any("voxel size" in w for w in read_scan(path).warnings)
    raw = bytearray(path.read_bytes())
    for i in (1, 2, 3):
        raw[76 + 4 * i:80 + 4 * i] = struct.pack("<f", 0.0)
    zero = tmp_path / "p0.nii.gz"
    with gzip.open(zero, "wb") as fh:
        fh.write(bytes(raw))
    vol = read_scan(zero)
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert any("gives no voxel size (pixdim 0); assuming 1 mm" in w for w in vol.warnings)
