"""Evaluation DATA SPECs: sample / IMAGE:MASK / BMAD and MVTec folders, grids, sizes and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.datasets import dataset_items, load_eval_data, parse_eval_spec, split_pair
from anomalens.engine.errors import ConfigError, SampleError
from tests.phantoms import phantom_slices

SPACING = (0.8, 0.9, 2.5)
ORIGIN = (-12.0, 5.0, 3.0)


def write_volume(path: Path, array: np.ndarray, spacing=SPACING, origin=ORIGIN) -> Path:
    """A NIfTI file on a non-trivial grid (spacing/origin) so grid round-trips are really checked."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(array)
    a = (a.astype(np.uint8) * 255) if a.dtype == bool else (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(a, mode="L").save(path)
    return path


def make_pair(folder: Path, n: int = 6, seed: int = 2, lesion: bool = True, n_normal: int = 0) -> tuple[Path, Path]:
    """A phantom scan (intensities ×1000, like an MR) and its lesion mask; ``n_normal`` lesion-free slices last."""
    slices, masks = phantom_slices(n, 64, seed=seed, lesion=lesion)
    if n_normal:
        extra, _ = phantom_slices(n_normal, 64, seed=seed + 100)
        slices = np.concatenate([slices, extra])
        masks = np.concatenate([masks, np.zeros(extra.shape, bool)])
    img = write_volume(folder / f"case{seed}.nii.gz", (slices * 1000).astype(np.float32))
    mask = write_volume(folder / f"case{seed}_mask.nii.gz", masks.astype(np.uint8))
    return img, mask


def make_bmad(root: Path, n_good: int = 3, n_bad: int = 3) -> Path:
    """``train/good``, ``test/good/{img,label}``, ``test/Ungood/{img,label}`` with 64×64 PNGs."""
    normals, _ = phantom_slices(n_good + 2, 64, seed=11)
    bad, masks = phantom_slices(n_bad, 64, seed=12, lesion=True)
    for i in range(2):
        write_png(root / "train" / "good" / f"{i:05d}.png", normals[i])
    for i in range(n_good):
        write_png(root / "test" / "good" / "img" / f"{i:05d}.png", normals[2 + i])
        write_png(root / "test" / "good" / "label" / f"{i:05d}.png", np.zeros((64, 64), bool))
    for i in range(n_bad):
        write_png(root / "test" / "Ungood" / "img" / f"{i:05d}.png", bad[i])
        write_png(root / "test" / "Ungood" / "label" / f"{i:05d}.png", masks[i])
    return root


def make_mvtec(root: Path) -> Path:
    """MVTec AD layout with images of two sizes; good test images have no masks."""
    normals, _ = phantom_slices(3, 64, seed=21)
    bad, masks = phantom_slices(2, 64, seed=22, lesion=True)
    write_png(root / "train" / "good" / "000.png", normals[0])
    write_png(root / "test" / "good" / "000.png", normals[1])
    write_png(root / "test" / "good" / "001.png", normals[2][:, 4:60])  # 56 wide, 64 high
    for i in range(2):
        write_png(root / "test" / "lesion" / f"{i:03d}.png", bad[i])
        write_png(root / "ground_truth" / "lesion" / f"{i:03d}_mask.png", masks[i])
    return root


# -- parsing ---------------------------------------------------------------------------------------

def test_split_pair_never_splits_at_a_windows_drive_colon() -> None:
    existing = {r"C:\scans\ct.nii", r"C:\scans\mask.nii", r"D:\m.nii.gz"}

    def exists(part: str) -> bool:
        return part.split("#")[0] in existing

    assert split_pair(r"C:\scans\ct.nii:C:\scans\mask.nii", exists) == (r"C:\scans\ct.nii", r"C:\scans\mask.nii")
    assert split_pair(r"C:\scans\ct.nii:D:\m.nii.gz#3-5", exists) == (r"C:\scans\ct.nii", r"D:\m.nii.gz#3-5")
    # The image is missing: still split at the mask, so reading the image says "does not exist".
    assert split_pair(r"C:\gone.nii:C:\scans\mask.nii", exists) == (r"C:\gone.nii", r"C:\scans\mask.nii")
    assert split_pair(r"C:\scans\ct.nii", exists) is None


def test_split_pair_handles_colons_inside_posix_file_names(tmp_path: Path) -> None:
    img = tmp_path / "scan:1.nii"
    mask = tmp_path / "mask:1.nii"
    img.write_bytes(b"x")
    mask.write_bytes(b"x")
    assert split_pair(f"{img}:{mask}") == (str(img), str(mask))
    spec = parse_eval_spec(f"{img}:{mask}#2-4")
    assert (spec.kind, spec.image, spec.mask, spec.selection) == ("pair", str(img), str(mask), "2-4")


def test_parse_recognises_each_form_and_refuses_the_rest(tmp_path: Path) -> None:
    img, mask = make_pair(tmp_path)
    assert parse_eval_spec("sample:brain1#10-20").kind == "sample"
    assert parse_eval_spec("sample:brain1#10-20").selection == "10-20"
    assert parse_eval_spec(str(make_bmad(tmp_path / "bmad"))).kind == "folder"
    assert parse_eval_spec(f"{img}#1-2:{mask}").selection == "1-2"
    with pytest.raises(ConfigError, match="IMAGE:MASK"):
        parse_eval_spec(str(img))  # a scan without its mask
    with pytest.raises(ConfigError, match="test/"):
        parse_eval_spec(str(tmp_path))  # a folder that is not a dataset
    with pytest.raises(ConfigError, match="cannot find"):
        parse_eval_spec(str(tmp_path / "nothing.nii:also_nothing.nii"))
    with pytest.raises(ConfigError, match="two different slice selections"):
        parse_eval_spec(f"{img}#1-2:{mask}#3-4")


def test_a_healthy_sample_is_refused_before_anything_is_read() -> None:
    with pytest.raises(SampleError, match="without a lesion mask"):
        load_eval_data("sample:mni152")


# -- loading ---------------------------------------------------------------------------------------

def test_pair_loads_the_scan_as_read_with_its_mask_on_its_grid(tmp_path: Path) -> None:
    img, mask = make_pair(tmp_path, n=6)
    data = load_eval_data(f"{img}:{mask}")
    _, truth = phantom_slices(6, 64, seed=2, lesion=True)
    (scan,) = data.scans
    assert scan.volume.shape == (6, 64, 64) and scan.volume.spacing == pytest.approx(SPACING)
    assert scan.volume.array.max() > 1.0  # as read: scoring normalises it as the model's training data was
    np.testing.assert_array_equal(scan.truth, truth)
    assert data.names[0] == "z=0" and data.kind == "pair" and data.volume is scan.volume
    sub = load_eval_data(f"{img}:{mask}#2-3")
    assert sub.n_slices == 2 and sub.names == ["z=2", "z=3"]
    np.testing.assert_array_equal(sub.scans[0].truth, truth[2:4])
    assert sub.scans[0].volume.metadata["selected_slices"] == [2, 3]


def test_mask_grid_mismatch_is_a_clear_config_error(tmp_path: Path) -> None:
    img, _ = make_pair(tmp_path, n=6)
    wrong = write_volume(tmp_path / "wrong.nii.gz", np.zeros((5, 64, 64), np.uint8))
    with pytest.raises(ConfigError, match="does not match the image"):
        load_eval_data(f"{img}:{wrong}")


def test_mask_with_other_spacing_gets_a_note(tmp_path: Path) -> None:
    img, _ = make_pair(tmp_path, n=4)
    other = write_volume(tmp_path / "other.nii.gz", np.zeros((4, 64, 64), np.uint8), spacing=(1.0, 1.0, 1.0))
    data = load_eval_data(f"{img}:{other}")
    assert any("spacing" in n for n in data.notes)
    assert any("masks are empty" in n for n in data.notes)


def test_bmad_layout(tmp_path: Path) -> None:
    root = make_bmad(tmp_path / "BraTS_slice", n_good=3, n_bad=2)
    items = dataset_items(root)
    assert [it[0] for it in items] == ["Ungood/00000", "Ungood/00001", "good/00000", "good/00001", "good/00002"]
    data = load_eval_data(str(root))
    assert data.n_slices == 5 and len(data.scans) == 5 and data.kind == "folder" and not data.is_stack
    assert [s.truth.any() for s in data.scans] == [True, True, False, False, False]
    _, truth = phantom_slices(2, 64, seed=12, lesion=True)
    np.testing.assert_array_equal(np.concatenate([s.truth for s in data.scans[:2]]), truth)
    assert "2 anomalous" in data.source
    assert load_eval_data(f"{root}#3-4").names == ["good/00001", "good/00002"]


def test_anomalous_image_without_mask_is_refused(tmp_path: Path) -> None:
    root = make_bmad(tmp_path / "ds", n_good=1, n_bad=2)
    (root / "test" / "Ungood" / "label" / "00001.png").unlink()
    with pytest.raises(ConfigError, match=r"00001.*has no mask"):
        load_eval_data(str(root))


def test_mvtec_layout_keeps_each_image_on_its_own_grid(tmp_path: Path) -> None:
    root = make_mvtec(tmp_path / "mvtec")
    data = load_eval_data(str(root))
    assert data.names == ["good/000", "good/001", "lesion/000", "lesion/001"]
    assert [s.volume.shape for s in data.scans] == [(1, 64, 64), (1, 64, 56), (1, 64, 64), (1, 64, 64)]
    assert any("different sizes" in n for n in data.notes)
    assert not data.scans[0].truth.any() and not data.scans[1].truth.any()  # good images without masks
    _, truth = phantom_slices(2, 64, seed=22, lesion=True)
    np.testing.assert_array_equal(np.concatenate([s.truth for s in data.scans[2:]]), truth)


def test_fingerprint_matches_the_training_stack(tmp_path: Path) -> None:
    from anomalens.engine.detectors.base import fingerprint
    from anomalens.engine.pipeline import gather_normals
    from anomalens.engine.preprocess.fov import WorkingGrid

    img, mask = make_pair(tmp_path, n=5, lesion=False)
    info: dict = {}
    trained_on = fingerprint(gather_normals([str(img)], info=info))
    grid = WorkingGrid.from_dict(info["grid"])  # what `anomalens eval` passes: the model's working grid
    assert trained_on in load_eval_data(f"{img}:{mask}").fingerprints(grid=grid)
    other, other_mask = make_pair(tmp_path, n=5, seed=7)
    assert trained_on not in load_eval_data(f"{other}:{other_mask}").fingerprints(grid=grid)
