"""Exports land on the scan's geometry: NIfTI heatmap/mask, DICOM SEG on the source series, PNG, CSV."""

from __future__ import annotations

import numpy as np
import pytest

from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.export import (
    SEGMENT_LABEL,
    export_heatmap,
    export_mask,
    export_seg,
    save_png,
)
from anomalens.engine.io import read_scan
from anomalens.engine.volume import Volume
from tests.io_support import write_ct_series, write_enhanced_ct

SHAPE = (5, 12, 10)


FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.77"


def _with_frame_of_reference(paths) -> None:
    """Real CT always carries a frame of reference (the SEG must share it); the shared writer omits it."""
    import pydicom

    for p in paths:
        ds = pydicom.dcmread(p)
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
        ds.PositionReferenceIndicator = ""
        ds.save_as(p, enforce_file_format=True)


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ct")
    hu = np.random.default_rng(0).integers(-900, 900, SHAPE).astype(np.float32)
    _with_frame_of_reference(write_ct_series(folder / "series", hu, z0=-20.0, dz=2.5))
    return folder / "series"


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[1, 2:6, 3:7] = True
    m[3, 8:11, 1:4] = True
    return m


def _sop_by_z(folder):
    import pydicom

    out = {}
    for p in folder.iterdir():
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out[round(float(ds.ImagePositionPatient[2]), 3)] = ds.SOPInstanceUID
    return out


def test_seg_references_the_source_images_and_holds_the_mask(ct_folder, tmp_path):
    import highdicom as hd
    import pydicom

    vol = read_scan(ct_folder)
    mask = _mask()
    steps = []
    out = export_seg(vol, mask, tmp_path / "seg.dcm", progress=lambda f, m: steps.append(f))
    assert steps[-1] == 1.0 and not list(tmp_path.glob(".*tmp"))
    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SegmentSequence[0].SegmentLabel == SEGMENT_LABEL
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert ds.FrameOfReferenceUID == FRAME_OF_REFERENCE
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.metadata["series_uid"]
    assert int(ds.NumberOfFrames) == 2  # empty slices are left out

    sop_by_z = _sop_by_z(ct_folder)
    seg = hd.seg.segread(out)
    for k, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        z = float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        slice_idx = round((z - vol.origin[2]) / vol.spacing[2])
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref == sop_by_z[round(z, 3)]  # the frame points at the image it came from
        np.testing.assert_allclose(item.PlanePositionSequence[0].ImagePositionPatient[:2], vol.origin[:2])
        assert np.array_equal(seg.pixel_array[k].astype(bool), mask[slice_idx])
    # highdicom's own reader puts the frames back on the source images
    sops = [sop_by_z[round(vol.origin[2] + vol.spacing[2] * z, 3)] for z in range(SHAPE[0])]
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=sops, segment_numbers=[1],
                                            ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    assert np.array_equal(arr[..., 0].astype(bool), mask)


def test_seg_on_a_slice_selection_references_the_right_images(ct_folder, tmp_path):
    import pydicom

    vol = read_scan(ct_folder).select_slices([1, 3])
    m = np.zeros(vol.shape, bool)
    m[1, 4:6, 4:6] = True  # on original slice 3
    ds = pydicom.dcmread(export_seg(vol, m, tmp_path / "sel.dcm"))
    item = ds.PerFrameFunctionalGroupsSequence[0]
    assert float(item.PlanePositionSequence[0].ImagePositionPatient[2]) == pytest.approx(-20.0 + 2.5 * 3)


def test_seg_from_a_multiframe_file(tmp_path):
    import highdicom as hd

    hu = np.random.default_rng(1).integers(-500, 500, (4, 8, 9)).astype(np.float32)
    path = write_enhanced_ct(tmp_path / "mf.dcm", hu)
    _with_frame_of_reference([path])
    vol = read_scan(path)
    m = np.zeros(vol.shape, bool)
    m[0, 1:3, 1:3] = True  # slice 0 is the file's last frame
    seg = hd.seg.segread(export_seg(vol, m, tmp_path / "seg.dcm"))
    assert seg.NumberOfFrames == 1
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert int(ref.ReferencedFrameNumber) == 4
    assert np.array_equal(seg.pixel_array.reshape(-1, *m.shape[1:])[0].astype(bool), m[0])


def test_seg_needs_a_dicom_source(tmp_path, ct_folder):
    vol = Volume(np.zeros(SHAPE, np.float32), metadata={"format": "NIfTI"})
    with pytest.raises(ConfigError, match="DICOM SEG needs a scan read from DICOM"):
        export_seg(vol, _mask(), tmp_path / "x.dcm")
    dicom = read_scan(ct_folder)
    with pytest.raises(InvalidVolumeError):
        export_seg(dicom, np.zeros((2, 2, 2), bool), tmp_path / "x.dcm")
    dicom.source = tmp_path / "gone"
    with pytest.raises(ConfigError, match="no longer"):
        export_seg(dicom, _mask(), tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()


def test_seg_explains_unusable_source_headers(tmp_path):
    hu = np.zeros((2, 8, 8), np.float32)
    write_ct_series(tmp_path / "noref", hu)  # no frame of reference: not a valid CT for a SEG
    with pytest.raises(ConfigError, match="NIfTI instead"):
        export_seg(read_scan(tmp_path / "noref"), np.ones((2, 8, 8), bool), tmp_path / "x.dcm")


def test_nifti_exports_keep_the_geometry(tmp_path):
    import SimpleITK as sitk

    vol = Volume(np.zeros(SHAPE, np.float32), spacing=(0.5, 0.7, 2.0), origin=(1.0, 2.0, 3.0))
    heat = np.random.default_rng(0).random(SHAPE)
    h = sitk.ReadImage(str(export_heatmap(vol, heat, tmp_path / "heat.nii.gz")))
    assert h.GetSpacing() == pytest.approx(vol.spacing) and h.GetOrigin() == pytest.approx(vol.origin)
    np.testing.assert_allclose(sitk.GetArrayFromImage(h), heat, rtol=1e-6)
    m = sitk.ReadImage(str(export_mask(vol, _mask(), tmp_path / "mask.nii.gz")))
    assert m.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(m).astype(bool), _mask())


def test_png_and_csv(tmp_path):
    from PIL import Image

    rgb = np.zeros((4, 6, 3), np.float32)
    rgb[1, 2] = (1.0, 0.5, 0.0)
    back = np.asarray(Image.open(save_png(rgb, tmp_path / "snap.png")))
    assert back.shape == (4, 6, 3) and tuple(back[1, 2]) == (255, 128, 0)
    with pytest.raises(InvalidVolumeError):
        save_png(np.zeros((4, 6, 2)), tmp_path / "bad.png")



def test_the_exported_seg_passes_dciodvfy(ct_folder, tmp_path):
    """The DICOM standard's own validator (Debian's dicom3tools, installed by CI) finds no error in our SEG."""
    import shutil
    import subprocess

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools; CI installs it)")
    out = export_seg(read_scan(ct_folder), _mask(), tmp_path / "seg.dcm")
    run = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
    assert errors == []
    assert "SEG" in run.stdout + run.stderr or run.returncode == 0  # it did read the object
