"""The physical working grid: anatomy at one scale whatever the scan's pixel size, and maps back in place."""

from __future__ import annotations

import numpy as np
import pytest

from anomalens.engine.errors import ConfigError
from anomalens.engine.preprocess.fov import (
    FOV_MARGIN,
    WorkingGrid,
    body_extent_mm,
    from_working,
    grid_for,
    mask_to_working,
    place,
    to_working,
)


def disk(shape: tuple[int, int], spacing: tuple[float, float], radius_mm: float,
         centre_mm: tuple[float, float] | None = None) -> np.ndarray:
    """A disk of tissue given in millimetres, drawn on a pixel grid of ``spacing`` (rows, cols)."""
    h, w = shape
    cy, cx = centre_mm if centre_mm is not None else (h * spacing[0] / 2, w * spacing[1] / 2)
    yy = (np.arange(h)[:, None] + 0.5) * spacing[0]
    xx = (np.arange(w)[None, :] + 0.5) * spacing[1]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= radius_mm ** 2)[None]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_grid_for_takes_the_largest_extent_plus_margin_and_the_finest_spacing() -> None:
    g = grid_for([150.0, 190.0], [(1.0, 1.0), (0.5, 0.8)])
    assert g.fov_mm == np.ceil(190 * (1 + FOV_MARGIN))
    assert g.size == round(g.fov_mm / 0.5)
    assert grid_for([190.0], [(0.01, 0.01)]).size == 512  # capped
    assert grid_for([190.0], [(1.0, 1.0)], size=64).size == 64
    with pytest.raises(ConfigError):
        grid_for([0.0], [(1.0, 1.0)])


def test_extent_is_measured_in_millimetres() -> None:
    fg = disk((100, 100), (0.5, 0.5), 20.0)
    assert body_extent_mm(fg, (0.5, 0.5)) == pytest.approx(40.0, abs=1.0)
    assert body_extent_mm(np.zeros((2, 5, 5), bool), (1.0, 1.0)) == 0.0


def test_scans_of_different_pixel_size_show_anatomy_at_one_scale() -> None:
    # The same 50 mm disk scanned at 0.5 mm on 300 px and at 1.25 mm on 128 px (different fields of view).
    fine = disk((300, 300), (0.5, 0.5), 50.0)
    coarse = disk((128, 128), (1.25, 1.25), 50.0)
    grid = WorkingGrid(140.0, 140)
    a = mask_to_working(fine, place(fine.shape[1:], (0.5, 0.5), grid, fine))
    b = mask_to_working(coarse, place(coarse.shape[1:], (1.25, 1.25), grid, coarse))
    assert iou(a, b) > 0.95
    # 1 mm working pixels: a 50 mm radius covers about π·50² pixels.
    assert a.sum() == pytest.approx(np.pi * 50 ** 2, rel=0.03)
    # Padding each scan to its own square instead (150 vs 160 mm wide) gives disks of different sizes.
    assert fine.mean() / coarse.mean() > 1.1


def test_anisotropic_pixels_become_square() -> None:
    scan = disk((100, 200), (1.0, 0.5), 30.0)  # a circle drawn on 1 × 0.5 mm pixels looks wide on the grid
    w = mask_to_working(scan, place(scan.shape[1:], (1.0, 0.5), WorkingGrid(100.0, 100), scan))[0]
    rows, cols = np.flatnonzero(w.any(1)), np.flatnonzero(w.any(0))
    assert abs((rows[-1] - rows[0]) - (cols[-1] - cols[0])) <= 2


def test_maps_come_back_to_the_scan_grid_where_they_came_from() -> None:
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.random((1, 90, 120)), 1), 2)
    smooth = (smooth / smooth.max()).astype(np.float32)
    p = place((90, 120), (0.8, 0.8), WorkingGrid(120.0, 150))  # whole scan fits: 96 × 72 mm
    back = from_working(to_working(smooth, p), p)
    assert back.shape == smooth.shape
    assert np.abs(back - smooth)[:, 2:-2, 2:-2].max() < 0.02


def test_a_large_field_of_view_is_cropped_around_the_tissue_never_through_it() -> None:
    # 400 mm of mostly air with a 60 mm disk off to one side; the model's grid covers 100 mm.
    scan = disk((400, 400), (1.0, 1.0), 30.0, centre_mm=(300.0, 80.0))
    p = place(scan.shape[1:], (1.0, 1.0), WorkingGrid(100.0, 100), scan)
    assert p.zoom_out == 1.0
    work = mask_to_working(scan, p)
    assert work.sum() == pytest.approx(scan.sum(), rel=0.02)  # all tissue inside the window
    back = from_working(np.ones((1, 100, 100), np.float32), p, fill=-1.0)
    assert (back[scan] > 0.99).all()  # the tissue maps back from inside the window
    assert (back[0, :100, 300:] == -1.0).all()  # far air lay outside it


def test_tissue_wider_than_the_field_of_view_shrinks_to_fit() -> None:
    scan = disk((300, 300), (1.0, 1.0), 120.0)
    p = place(scan.shape[1:], (1.0, 1.0), WorkingGrid(100.0, 100), scan)
    assert p.zoom_out == pytest.approx(240 / 100, rel=0.02)
    work = mask_to_working(scan, p)[0]
    assert work.sum() == pytest.approx(np.pi * 50 ** 2, rel=0.03)  # the whole disk, 100 px across: nothing cut


def test_patch_centres_map_back_to_scan_pixels() -> None:
    p = place((200, 100), (0.5, 1.0), WorkingGrid(100.0, 50))  # 2 mm working pixels
    # The working grid's centre is the scan's centre.
    c = p.to_scan_points(np.array([[25.0, 25.0]]))
    np.testing.assert_allclose(c, [[100.0, 50.0]], atol=1.0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError):
        WorkingGrid(0.0, 64)
    with pytest.raises(ConfigError):
        place((10, 10), (0.0, 1.0), WorkingGrid(10.0, 10))
    p = place((10, 10), (1.0, 1.0), WorkingGrid(10.0, 10))
    with pytest.raises(ConfigError):
        to_working(np.zeros((1, 12, 10)), p)
    assert WorkingGrid.from_dict(None) is None
    assert WorkingGrid.from_dict(WorkingGrid(12.5, 16).to_dict()) == WorkingGrid(12.5, 16)


def test_a_model_scores_a_scan_of_another_pixel_size_at_its_own_scale(tmp_path) -> None:
    """Trained on 1 mm scans, scoring a 0.5 mm scan: the grid travels in the bundle, the lesion is found
    where it is on the scan's own grid."""
    from scipy import ndimage

    from anomalens.engine.detectors import create_detector, load_bundle
    from anomalens.engine.pipeline import model_grid, train
    from anomalens.engine.scoring import score_scan
    from anomalens.engine.volume import Volume
    from tests.io_support import write_sitk
    from tests.phantoms import phantom_slices

    normals, _ = phantom_slices(6, 64, seed=1)
    spec = write_sitk(tmp_path / "normals.nii.gz", normals * 1000, spacing=(1.0, 1.0, 3.0))
    cfg = create_detector("patchcore").test_config()
    det = train("patchcore", [str(spec)], config=cfg, device="cpu")
    grid = model_grid(det)
    assert grid is not None and grid.size >= 32
    det.save(tmp_path / "model")
    det = load_bundle(tmp_path / "model")
    assert model_grid(det) == grid

    case, lesion = phantom_slices(2, 64, seed=5, lesion=True)
    fine = ndimage.zoom(case, (1, 2, 2), order=1)  # the same anatomy on 0.5 mm pixels: 128 × 128
    fine_lesion = ndimage.zoom(lesion.astype(np.float32), (1, 2, 2), order=1) > 0.5
    vol = Volume(array=(fine * 1000).astype(np.float32), spacing=(0.5, 0.5, 3.0), modality="MR")
    result = score_scan(det, vol)
    assert result.map.shape == vol.shape
    for z in range(2):
        heat = result.map[z]
        assert heat[fine_lesion[z]].mean() > np.percentile(heat, 90)


def test_a_scan_wider_than_the_models_field_of_view_is_warned_about() -> None:
    """The warning is part of the one result, so the CLI, batch and the viewer all show it."""
    from anomalens.engine.detectors import create_detector
    from anomalens.engine.scoring import score_scan
    from anomalens.engine.volume import Volume

    det = create_detector("patchcore", config=create_detector("patchcore").test_config())
    texture = 500.0 + 500.0 * np.random.default_rng(0).random((1, 100, 100))
    vol = Volume(array=(disk((100, 100), (1.0, 1.0), 45.0) * texture).astype(np.float32), spacing=(1.0, 1.0, 1.0),
                 modality="MR")
    det.fit(np.repeat(vol.array / vol.array.max(), 2, axis=0).astype(np.float32))

    def shrink_warnings() -> list[str]:
        return [w for w in score_scan(det, vol).warnings if "shrunk to fit" in w]

    assert shrink_warnings() == []  # no grid: nothing to compare with
    det.preprocessing = {"grid": WorkingGrid(120.0, 64).to_dict()}
    assert shrink_warnings() == []  # 90 mm of tissue fits in 120 mm
    det.preprocessing = {"grid": WorkingGrid(60.0, 64).to_dict()}
    (text,) = shrink_warnings()
    assert "1.5" in text and "60 mm" in text
