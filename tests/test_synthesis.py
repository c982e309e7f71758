"""Synthetic anomalies: contracts shared by every kind, per-kind locality, Poisson blending, batches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.preprocess import foreground_mask
from anomalens.engine.synthesis import (
    ANOMALY_KINDS,
    cutpaste_poisson,
    gaussian_intensity,
    poisson_blend,
    random_anomaly,
    source_deformation,
    synthesize_batch,
)
from tests.phantoms import phantom_slices

GENERATORS = {
    "cutpaste": cutpaste_poisson,
    "gaussian": gaussian_intensity,
    "deformation": source_deformation,
}


@pytest.fixture(scope="module")
def stack() -> tuple[np.ndarray, np.ndarray]:
    imgs, _ = phantom_slices(4, 64, seed=5)
    return imgs, foreground_mask(imgs)


def _laplacian(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1]


def _bbox(m: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(m)
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_common_contract(kind, stack):
    imgs, fgs = stack
    img, fg = imgs[0], fgs[0]
    before, fg_before = img.copy(), fg.copy()
    for seed in range(6):
        out, mask = GENERATORS[kind](img, np.random.default_rng(seed), fg)
        assert out.dtype == np.float32 and out.shape == img.shape
        assert mask.dtype == bool and mask.shape == img.shape and mask.any()
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert not (mask & ~fg).any(), "the label must stay in tissue"
        assert np.array_equal(out[~fg], img[~fg]), "air must not change"
    np.testing.assert_array_equal(img, before)
    np.testing.assert_array_equal(fg, fg_before)
    a = GENERATORS[kind](img, np.random.default_rng(3), fg)
    b = GENERATORS[kind](img, np.random.default_rng(3), fg)
    c = GENERATORS[kind](img, np.random.default_rng(4), fg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_anomaly_is_visible_on_texture(kind):
    tex = ndimage.gaussian_filter(np.random.default_rng(9).random((64, 64)), 1.0)
    tex = (0.2 + 0.6 * (tex - tex.min()) / (tex.max() - tex.min())).astype(np.float32)
    for seed in range(5):
        out, mask = GENERATORS[kind](tex, np.random.default_rng(seed))
        assert float(np.abs(out - tex)[mask].max()) > 0.02


def test_cutpaste_changes_only_inside_patch(stack):
    imgs, fgs = stack
    for seed in range(8):
        out, mask = cutpaste_poisson(imgs[0], np.random.default_rng(seed), fgs[0], label="patch")
        assert np.array_equal(out[~mask], imgs[0][~mask])
        h, w = _bbox(mask)
        assert max(h, w) <= 64 * 0.3 * 2**0.5 - 1  # interior of the largest patch size_range allows
        out, mask = cutpaste_poisson(imgs[0], np.random.default_rng(seed), fgs[0], threshold=0.03)
        diff = np.abs(out - imgs[0])
        changed = diff > 0
        assert ndimage.binary_fill_holes(changed)[mask].all(), "labels only changed pixels (holes filled)"
        assert diff[mask].max() > 0.03
        h, w = _bbox(changed)
        assert h <= 80 and w <= 80


def test_cutpaste_from_another_slice_and_scale_limit(stack):
    imgs, fgs = stack
    out, mask = cutpaste_poisson(
        imgs[0], np.random.default_rng(1), fgs[0], source=imgs[2], source_foreground=fgs[2], max_size=8
    )
    assert mask.any() and max(_bbox(out != imgs[0])) <= 8


def test_poisson_blend_boundary_and_gradients():
    rng = np.random.default_rng(0)
    target = ndimage.gaussian_filter(rng.random((40, 50)), 3).astype(np.float32)
    patch = ndimage.gaussian_filter(rng.random((17, 23)), 1.5) + 0.3
    top, left = 9, 14
    before = target.copy()
    out = poisson_blend(target, patch, top, left, clip=False)
    np.testing.assert_array_equal(target, before)
    inside = np.zeros(target.shape, bool)
    inside[top + 1 : top + 16, left + 1 : left + 22] = True
    assert np.array_equal(out[~inside], target[~inside]), "border and outside keep the target"
    rect = out[top : top + 17, left : left + 23]
    np.testing.assert_allclose(_laplacian(rect), _laplacian(patch), atol=2e-5)
    assert np.abs(rect - patch).max() > 0.05, "the offset to the target is not trivially zero"


def test_poisson_solver_matches_sparse_reference():
    rng = np.random.default_rng(1)
    h, w = 9, 12
    target, patch = rng.random((h, w)), rng.random((h, w))
    m, n = h - 2, w - 2
    lap1 = lambda k: sparse.diags([-np.ones(k - 1), 2 * np.ones(k), -np.ones(k - 1)], [-1, 0, 1])  # noqa: E731
    a = sparse.kronsum(lap1(n), lap1(m)).tocsc()  # negative 5-point Laplacian on the m×n interior
    rhs = -_laplacian(patch)
    t = target.copy()
    t[1:-1, 1:-1] = 0.0  # the border of the target enters the interior equations as known values
    rhs += _laplacian(t) + 4 * t[1:-1, 1:-1]
    ref = spsolve(a, rhs.ravel()).reshape(m, n)
    out = poisson_blend(target.astype(np.float32), patch, 0, 0, clip=False)
    np.testing.assert_allclose(out[1:-1, 1:-1], ref, atol=1e-5)


def test_poisson_blend_rejects_patch_outside():
    with pytest.raises(InvalidVolumeError):
        poisson_blend(np.zeros((10, 10), np.float32), np.zeros((5, 5)), 7, 0)


def test_gaussian_blob_is_local(stack):
    imgs, fgs = stack
    for seed in range(8):
        out, mask = gaussian_intensity(imgs[0], np.random.default_rng(seed), fgs[0], sigma_range=(0.02, 0.05))
        sigma_max = max(1.0, 64 * 0.05)
        changed = out != imgs[0]
        h, w = _bbox(changed | mask)
        assert max(h, w) <= 2 * np.ceil(3 * sigma_max) + 1
        assert np.abs(out - imgs[0])[mask].min() > 0, "inside the label the blob is at least 30 % of its peak"


def test_gaussian_sign_respects_headroom():
    white = np.full((32, 32), 1.0, np.float32)
    black = np.zeros((32, 32), np.float32)
    for seed in range(6):
        out, mask = gaussian_intensity(white, np.random.default_rng(seed))
        assert out[mask].max() < 1.0
        out, mask = gaussian_intensity(black, np.random.default_rng(seed))
        assert out[mask].min() > 0.0


@pytest.mark.parametrize("direction", ["source", "sink"])
def test_deformation_changes_only_its_region(direction, stack):
    imgs, fgs = stack
    for seed in range(6):
        out, mask = source_deformation(imgs[0], np.random.default_rng(seed), fgs[0], direction=direction)
        assert np.array_equal(out[~mask], imgs[0][~mask])
        assert (out != imgs[0])[mask].any()


def test_deformation_rejects_folding_strength():
    with pytest.raises(ConfigError):
        source_deformation(np.zeros((32, 32), np.float32), np.random.default_rng(0), direction="source", strength=1.2)


@pytest.mark.parametrize("kind", ANOMALY_KINDS)
def test_edge_cases(kind):
    rng = np.random.default_rng(0)
    tiny = phantom_slices(1, 16, seed=2)[0][0]
    out, mask = GENERATORS[kind](tiny, rng, foreground_mask(tiny))
    assert out.shape == (16, 16) and mask.any()
    # An empty tissue mask places the anomaly anywhere instead of failing.
    out, mask = GENERATORS[kind](tiny, rng, np.zeros((16, 16), bool))
    assert mask.any()
    const = np.full((24, 24), 0.4, np.float32)
    out, mask = GENERATORS[kind](const, rng)
    assert mask.any() and out.dtype == np.float32
    if kind != "gaussian":  # blending a constant patch, or moving constant pixels, changes nothing
        assert np.array_equal(out, const)
    with pytest.raises(InvalidVolumeError):
        GENERATORS[kind](np.zeros((2, 8, 8), np.float32), rng)


def test_random_anomaly_kinds(stack):
    imgs, fgs = stack
    out, mask = random_anomaly(imgs[0], np.random.default_rng(0), fgs[0], kinds=("deformation",))
    assert np.array_equal(out[~mask], imgs[0][~mask]) and mask.any()
    with pytest.raises(ConfigError):
        random_anomaly(imgs[0], np.random.default_rng(0), kinds=("noise",))
    with pytest.raises(ConfigError):
        random_anomaly(imgs[0], np.random.default_rng(0), kinds=())


def test_synthesize_batch_proportions_and_labels():
    imgs, _ = phantom_slices(200, 32, seed=7)
    fgs = foreground_mask(imgs)
    before = imgs.copy()
    out, masks = synthesize_batch(imgs, np.random.default_rng(0), fgs, p_anomaly=0.5)
    np.testing.assert_array_equal(imgs, before)
    assert out.dtype == np.float32 and masks.dtype == bool and out.shape == masks.shape == imgs.shape
    labelled = masks.any(axis=(1, 2))
    assert 0.4 <= labelled.mean() <= 0.6
    unchanged = (out == imgs).all(axis=(1, 2))
    assert unchanged[~labelled].all(), "slices without a label are untouched"
    assert (~unchanged[labelled]).mean() > 0.9
    again = synthesize_batch(imgs, np.random.default_rng(0), fgs, p_anomaly=0.5)
    assert np.array_equal(again[0], out) and np.array_equal(again[1], masks)
    none, none_masks = synthesize_batch(imgs[:10], np.random.default_rng(1), fgs[:10], p_anomaly=0.0)
    assert np.array_equal(none, imgs[:10]) and not none_masks.any()
    _, all_masks = synthesize_batch(imgs[:20], np.random.default_rng(2), p_anomaly=1.0, kinds=("cutpaste",))
    assert all_masks.any(axis=(1, 2)).all()
    with pytest.raises(ConfigError):
        synthesize_batch(imgs, np.random.default_rng(0), p_anomaly=1.5)


def test_interior_mask_keeps_a_margin_from_the_outline() -> None:
    from anomalens.engine.preprocess.foreground import interior_mask

    fg = np.zeros((2, 64, 64), bool)
    fg[0, 8:56, 8:56] = True
    fg[1, 30:33, 30:33] = True  # too small for any interior: keeps its whole foreground
    inner = interior_mask(fg, 0.1)
    assert inner[0].any() and not (inner[0] & ~fg[0]).any()
    dist = ndimage.distance_transform_edt(np.pad(fg[0], 1))[1:-1, 1:-1]
    assert dist[inner[0]].min() >= 0.1 * 64
    assert (inner[1] == fg[1]).all()
    assert (interior_mask(fg, 0.0) == fg).all()
    assert interior_mask(fg[0], 0.1).shape == (64, 64)
