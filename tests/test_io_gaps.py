"""DICOM series with missing slices: every read slice lies at its true position, the fillers are marked and
warned about, scoring skips them, and irregular positions are refused unless the user says to stack them.

Also checks that the other geometry notes a reader leaves on a volume (4-D reduction, NaN cleaning) reach
the scoring result, where the CLI, batch records and the viewer show them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.io import describe, gap_indices, read_scan
from anomalens.engine.io.spec import load_spec
from tests.fakes import MeanDetector
from tests.io_support import phantom, write_ct_series, write_ct_slice, write_sitk

MISSING = (4, 5, 9)
Z0, DZ = -20.0, 2.5


@pytest.fixture
def gappy(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 12-slice CT series with slices 4, 5 and 9 removed (an incomplete PACS transfer)."""
    hu = phantom((12, 16, 16))
    write_ct_series(tmp_path / "ct", hu, z0=Z0, dz=DZ, skip=MISSING)
    return tmp_path / "ct", hu


def _z_of(volume, k: int) -> float:
    d = np.asarray(volume.direction).reshape(3, 3)
    return float((np.asarray(volume.origin) + d[:, 2] * volume.spacing[2] * k)[2])


def test_missing_slices_are_filled_at_their_true_positions(gappy) -> None:
    import pydicom

    folder, hu = gappy
    vol = read_scan(folder)
    assert vol.shape == (12, 16, 16)
    assert vol.metadata["gap_slices"] == list(MISSING)
    assert json.loads(json.dumps(vol.metadata))["gap_slices"] == list(MISSING)
    assert vol.metadata["n_images"] == 9
    present = [k for k in range(12) if k not in MISSING]
    np.testing.assert_allclose(vol.array[present], hu[present], atol=1.01)
    # Every file's ImagePositionPatient is where the volume's grid puts its slice.
    seen = set()
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        z = float(ds.ImagePositionPatient[2])
        k = round((z - Z0) / DZ)
        assert _z_of(vol, k) == pytest.approx(z, abs=1e-4)
        assert k not in MISSING
        seen.add(k)
    assert seen == set(present)
    # The fillers hold the series' background (its lowest value), which normalisation ignores.
    low = vol.array[present].min()
    for k in MISSING:
        assert (vol.array[k] == low).all()
    (note,) = [w for w in vol.warnings if "empty slice" in w]
    assert "3 empty slices were inserted" in note and "true position" in note and "not part of the scan" in note
    assert "-12.50 and -5.00 mm" in note and "0.00 and 5.00 mm" in note and "4, 5, 9" in note
    assert describe(vol)["gap_slices"] == list(MISSING)


def test_gaps_can_be_refused_or_stacked(gappy) -> None:
    folder, _ = gappy
    with pytest.raises(InvalidVolumeError, match=r"slices are missing between positions .*gaps='fill'") as err:
        read_scan(folder, gaps="refuse")
    assert "\n" not in str(err.value)
    stacked = read_scan(folder, gaps="stack")
    assert stacked.shape == (9, 16, 16) and "gap_slices" not in stacked.metadata
    assert any("distances across the gap are wrong" in w for w in stacked.warnings)
    with pytest.raises(ConfigError, match="gaps must be one of"):
        read_scan(folder, gaps="interpolate")


def _series_at(folder: Path, positions: list[float]) -> np.ndarray:
    folder.mkdir()
    hu = phantom((len(positions), 8, 8))
    for i, z in enumerate(positions):
        stored = np.round(hu[i] + 1024).astype(np.int16)
        write_ct_slice(folder / f"{i}.dcm", stored, z=z, series_uid="1.2.3.77", instance=i + 1)
    return hu


def test_irregular_positions_are_refused_with_one_line_unless_stacked(tmp_path: Path) -> None:
    hu = _series_at(tmp_path / "odd", [0.0, 2.5, 5.0, 8.4, 10.0, 12.5])
    with pytest.raises(InvalidVolumeError, match=r"irregular positions.*8\.40 mm.*gaps='stack'") as err:
        read_scan(tmp_path / "odd")
    assert "\n" not in str(err.value)
    out = read_scan(tmp_path / "odd", gaps="stack")
    assert out.shape == (6, 8, 8) and any("spacing varies" in w for w in out.warnings)
    np.testing.assert_allclose(out.array, hu, atol=0.51)


def test_small_jitter_is_placed_on_the_grid_with_a_note(tmp_path: Path) -> None:
    _series_at(tmp_path / "jitter", [0.0, 2.5, 5.1, 7.5, 10.0])
    out = read_scan(tmp_path / "jitter")
    assert out.shape[0] == 5 and "gap_slices" not in out.metadata
    assert any("deviate by up to" in w for w in out.warnings)


def test_more_missing_than_present_is_not_one_scan(tmp_path: Path) -> None:
    _series_at(tmp_path / "sparse", [0.0, 2.5, 50.0])
    with pytest.raises(InvalidVolumeError, match="only 3 are present"):
        read_scan(tmp_path / "sparse")


def test_gap_indices_follow_a_slice_selection(gappy) -> None:
    folder, _ = gappy
    picked = load_spec(f"{folder}#3-6")
    assert picked.metadata["selected_slices"] == [3, 4, 5, 6]
    assert gap_indices(picked) == [1, 2]
    assert gap_indices(read_scan(folder)) == list(MISSING)


# ------------------------------------------------------------------------------------------- scoring


def _mean_model(size: int) -> MeanDetector:
    return MeanDetector().fit(np.random.default_rng(0).random((3, size, size), dtype=np.float32))


def test_scoring_skips_the_fillers_and_keeps_the_warning(gappy) -> None:
    from anomalens.engine.scoring import score_scan

    folder, _ = gappy
    det = _mean_model(16)
    vol = read_scan(folder)
    result = score_scan(det, vol, detail=False)
    present = [k for k in range(12) if k not in MISSING]
    assert any("empty slices were inserted" in w for w in result.warnings)
    # Fillers are not data: score_scan leaves them out of the default selection.
    assert [int(i) for i in result.indices] == present
    assert [s.z for s in result.slices] == present
    assert not result.map[list(MISSING)].any()
    # The map of each real slice is the one it gets when the series is stacked without gaps: scored the
    # same, but now written back at the slice's true position.
    stacked = score_scan(det, read_scan(folder, gaps="stack"), detail=False)
    np.testing.assert_allclose(result.map[present], stacked.map, rtol=1e-6, atol=1e-6)
    assert result.map[present].any()


def test_four_d_and_nan_notes_reach_the_scoring_result(tmp_path: Path) -> None:
    from anomalens.engine.scoring import score_scan

    data = np.stack([phantom((3, 16, 16), seed=s) for s in range(2)])
    four_d = tmp_path / "fmri.nii.gz"
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(v) for v in data]), str(four_d))
    det = _mean_model(16)
    result = score_scan(det, read_scan(four_d), detail=False)
    assert any("first 3-D volume" in w for w in result.warnings)
    vol = phantom((3, 16, 16))
    vol[1, 2, 3] = np.nan
    nan_path = write_sitk(tmp_path / "nan.nii.gz", vol)
    result = score_scan(det, read_scan(nan_path, nan_policy="clean"), detail=False)
    assert any("replaced 1 NaN/infinite voxels" in w for w in result.warnings)


def test_training_shows_the_normals_warnings_and_skips_the_fillers(gappy) -> None:
    """``train`` reads normals through ``gather_normals``: their volumes' notes must reach the user too."""
    from anomalens.engine.pipeline import gather_normals

    folder, _ = gappy
    info: dict = {}
    stack = gather_normals([str(folder)], info=info, grid=None)
    assert stack.shape[0] == 12 - len(MISSING)  # no filler is taken for a normal slice
    assert any("empty slices were inserted" in w for w in info.get("warnings", []))
    assert not any(str(folder) in w for w in info.get("warnings", []))  # no paths (they may hold names)


def test_a_seg_of_a_gap_filled_series_references_only_real_images(gappy, tmp_path: Path) -> None:
    """Fillers have no source image: the SEG holds frames for the real slices only, each at its true image."""
    import pydicom

    from anomalens.engine.export import export_seg
    from tests.test_export import _with_frame_of_reference

    folder, _ = gappy
    _with_frame_of_reference(sorted(folder.iterdir()))
    vol = read_scan(folder)
    mask = np.zeros(vol.shape, bool)
    mask[:, 6:10, 6:10] = True  # a finding on every slice, fillers included
    ds = pydicom.dcmread(export_seg(vol, mask, tmp_path / "seg.dcm"))
    assert int(ds.NumberOfFrames) == 12 - len(MISSING)
    sources = {pydicom.dcmread(p).SOPInstanceUID: float(pydicom.dcmread(p).ImagePositionPatient[2])
               for p in folder.iterdir()}
    referenced = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for f in ds.PerFrameFunctionalGroupsSequence]
    positions = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in ds.PerFrameFunctionalGroupsSequence]
    assert [sources[uid] for uid in referenced] == positions


def test_eval_of_a_gap_filled_series_takes_a_mask_drawn_on_the_stored_slices(gappy, tmp_path: Path) -> None:
    """A mask made on the series as stored (9 slices) lines up with the 12-slice filled scan, with a note."""
    from anomalens.engine.datasets import load_eval_data

    folder, _ = gappy
    vol = read_scan(folder)
    real = [k for k in range(12) if k not in MISSING]
    stored = np.zeros((9, 16, 16), np.uint8)
    stored[2, 5:9, 5:9] = 1  # the third stored slice = scan slice real[2]
    mask = write_sitk(tmp_path / "mask.nii.gz", stored, spacing=vol.spacing)
    data = load_eval_data(f"{folder}:{mask}")
    (scan,) = data.scans
    assert scan.truth.shape == (12, 16, 16) and scan.truth[real[2]].sum() == 16 and scan.truth.sum() == 16
    assert not scan.truth[list(MISSING)].any()
    assert any("filled with empty slices" in n for n in data.notes)
