from __future__ import annotations

import itertools

import numpy as np
import pytest

from anomalens.engine.detectors.result import AnomalyResult
from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.postprocess.scr import (
    PROB_EPS,
    estimate_tau,
    pairwise_weights,
    refine_result,
    scr_refine,
    unary_costs,
    unary_difference,
)


def _blob_case() -> np.ndarray:
    s = np.full((24, 24), 0.3, np.float32)
    s[8:16, 8:16] = 0.99
    s[11, 12] = 0.6  # a hole inside the lesion
    s[2, 20] = 0.99  # an isolated false positive
    return s


def test_removes_isolated_pixel_and_fills_hole() -> None:
    s = _blob_case()
    flat = np.zeros_like(s)
    plain = s > 0.9
    assert plain[2, 20] and not plain[11, 12]
    m = scr_refine(s, 0.9, lam=2.5, tau=1.0, intensities=flat)
    assert not m[2, 20]
    assert m[11, 12]
    expected = np.zeros_like(plain)
    expected[8:16, 8:16] = True
    np.testing.assert_array_equal(m, expected)


@pytest.mark.parametrize(("shape", "mode"), [((17, 23), "2d"), ((3, 9, 11), "2d"), ((3, 9, 11), "3d")])
def test_lambda_zero_is_plain_thresholding(shape: tuple[int, ...], mode: str) -> None:
    rng = np.random.default_rng(1)
    for t in (0.5, 0.25, 0.9):
        s = np.round(rng.random(shape), 2).astype(np.float32)  # rounding creates exact ties with t
        assert np.any(s == np.float32(t))
        m = scr_refine(s, t, 0.0, mode=mode)
        np.testing.assert_array_equal(m, s > np.float32(t))
    # differences far below the temperature still decide the sign exactly
    s = np.float32(0.5) + np.array([[-1e-7, 1e-7], [6e-8, -6e-8]], np.float32)
    np.testing.assert_array_equal(scr_refine(s, 0.5, 0.0), s > np.float32(0.5))


def _energy(y: np.ndarray, s: np.ndarray, t: float, lam: float, tau: float, r: np.ndarray, axes, temp: float) -> float:
    d0, d1 = unary_costs(s, t, temp)
    e = float(np.where(y, d1, d0).astype(np.float64).sum())
    for ax in axes:
        a = np.swapaxes(y, 0, ax)
        b = np.swapaxes(r, 0, ax)
        diff = a[1:] != a[:-1]
        alpha = np.exp(-((b[1:] - b[:-1]) ** 2) / tau**2)
        e += lam * float((alpha * diff).sum())
    return e


@pytest.mark.parametrize(("shape", "mode", "axes"), [((3, 4), "2d", (0, 1)), ((2, 2, 3), "3d", (0, 1, 2))])
def test_cut_is_the_exact_energy_minimum(shape, mode, axes) -> None:
    rng = np.random.default_rng(7)
    temp = 0.1
    for trial in range(6):
        s = rng.random(shape).astype(np.float32)
        r = rng.random(shape).astype(np.float32)
        lam, tau, t = float(rng.uniform(0.05, 1.5)), float(rng.uniform(0.2, 1.0)), 0.5
        m = scr_refine(s, t, lam, tau, intensities=r, mode=mode, temperature=temp)
        best = min(
            _energy(np.array(bits, bool).reshape(shape), s, t, lam, tau, r, axes, temp)
            for bits in itertools.product((0, 1), repeat=s.size)
        )
        assert _energy(m, s, t, lam, tau, r, axes, temp) == pytest.approx(best, rel=1e-5, abs=1e-5), trial


def test_unary_difference_is_the_cross_entropy_difference() -> None:
    s = np.linspace(-1, 2, 101, dtype=np.float32)
    d0, d1 = unary_costs(s, 0.5, 0.2)
    np.testing.assert_allclose(unary_difference(s, 0.5, 0.2), d1 - d0, atol=1e-4)
    assert d0.min() >= 0 and d1.max() <= -np.log(PROB_EPS) + 1e-3


def test_3d_mode_links_slices() -> None:
    s = np.full((3, 12, 12), 0.2, np.float32)
    s[0, 3:9, 3:9] = 0.99
    s[2, 3:9, 3:9] = 0.99
    s[1, 3:9, 3:9] = 0.93  # just below the threshold: a weak middle slice of one lesion
    flat = np.zeros_like(s)
    m2 = scr_refine(s, 0.95, 0.5, 1.0, intensities=flat, mode="2d")
    m3 = scr_refine(s, 0.95, 0.5, 1.0, intensities=flat, mode="3d")
    assert not m2[1].any() and m2[0].sum() == 36 and m2[0, 3:9, 3:9].all()
    assert m3.sum() == 3 * 36 and m3[:, 3:9, 3:9].all()
    # 2d mode on a stack is exactly slice by slice
    for z in range(3):
        np.testing.assert_array_equal(m2[z], scr_refine(s[z], 0.95, 0.5, 1.0, intensities=flat[z]))


def _small_blob() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = np.full((16, 16), 0.9, np.float32)
    s[6:9, 6:9] = 0.99  # 3×3 lesion, weakly above the threshold
    feats = np.zeros((16, 16, 2), np.float32)
    feats[6:9, 6:9] = [3.0, -3.0]  # the lesion looks different in feature space
    flat = np.zeros((16, 16), np.float32)
    return s, feats, flat


def test_alpha_from_features_vs_intensities() -> None:
    s, feats, flat = _small_blob()
    with_feats = scr_refine(s, 0.95, 1.0, 1.0, features=feats)
    with_int = scr_refine(s, 0.95, 1.0, 1.0, intensities=flat)
    assert with_feats[6:9, 6:9].all() and with_feats.sum() == 9  # feature edge: cutting there is free
    assert not with_int.any()  # uniform intensities: a 3×3 blob is not worth its boundary
    # features win over intensities when both are given
    np.testing.assert_array_equal(scr_refine(s, 0.95, 1.0, 1.0, features=feats, intensities=flat), with_feats)


def test_pairwise_weights_values_and_cache() -> None:
    f = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]], [[0.0, 1.0], [3.0, 0.0], [1.0, 2.0]]], np.float32)
    w = pairwise_weights((2, 3), tau=2.0, features=f)
    assert w.axes == (0, 1)
    down, right = w.alphas
    assert down[0, 0] == pytest.approx(np.exp(-1 / 4))
    assert down[0, 1] == pytest.approx(np.exp(-4 / 4))
    assert right[0, 0] == pytest.approx(np.exp(-1 / 4))
    assert right[0, 1] == pytest.approx(np.exp(-4 / 4))
    assert right[1, 1] == pytest.approx(np.exp(-(4 + 4) / 4))
    assert (down[1] == 0).all() and (right[:, 2] == 0).all()
    s, feats, _ = _small_blob()
    cached = pairwise_weights(s.shape, 1.0, features=feats)
    for lam in (0.1, 1.0, 5.0):
        np.testing.assert_array_equal(
            scr_refine(s, 0.95, lam, weights=cached), scr_refine(s, 0.95, lam, 1.0, features=feats)
        )
    with pytest.raises(ConfigError, match="recompute"):
        scr_refine(s[:8], 0.95, 1.0, weights=cached)


def test_refine_result_uses_features_then_intensities() -> None:
    s, feats, flat = _small_blob()
    with_f = AnomalyResult(s[None], np.array([s.max()]), features=feats[None])
    without = AnomalyResult(s[None], np.array([s.max()]))
    assert refine_result(with_f, 0.95, 1.0, 1.0, intensities=flat[None])[0].sum() == 9
    assert refine_result(without, 0.95, 1.0, 1.0, intensities=flat[None]).sum() == 0
    with pytest.raises(ConfigError, match="features or the slice intensities"):
        refine_result(without, 0.95, 1.0, 1.0)


def test_threshold_outside_score_range() -> None:
    s = _blob_case()
    img = np.random.default_rng(0).random(s.shape).astype(np.float32)
    assert not scr_refine(s, 5.0, 3.0, 0.5, intensities=img).any()
    assert scr_refine(s, -5.0, 3.0, 0.5, intensities=img).all()
    const = np.full((5, 5), 0.7, np.float32)
    assert not scr_refine(const, 0.7, 1.0, 0.5, intensities=img[:5, :5]).any()  # exactly at t: normal


def test_foreground_forces_normal_outside() -> None:
    s = _blob_case()
    fg = np.zeros(s.shape, bool)
    fg[:, :12] = True
    m = scr_refine(s, 0.9, 0.0, foreground=fg)
    np.testing.assert_array_equal(m, (s > 0.9) & fg)
    assert not scr_refine(s, 0.9, 1.0, 1.0, intensities=np.zeros_like(s), foreground=fg)[:, 12:].any()


def test_estimate_tau_is_rms_neighbour_distance() -> None:
    img = np.tile(np.arange(6, dtype=np.float32) * 0.5, (4, 1))  # horizontal steps of 0.5, vertical 0
    n_h, n_v = 4 * 5, 3 * 6
    assert estimate_tau(img.shape, intensities=img) == pytest.approx(np.sqrt(0.25 * n_h / (n_h + n_v)))
    assert estimate_tau(img.shape, intensities=np.zeros_like(img)) == 1.0
    fg = np.zeros(img.shape, bool)
    fg[:, :2] = True  # only pairs inside: one horizontal per row, 3 vertical per column
    assert estimate_tau(img.shape, intensities=img, foreground=fg) == pytest.approx(np.sqrt(0.25 * 4 / (4 + 6)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lam": -1.0}, ConfigError, "≥ 0"),
        ({"lam": float("nan")}, ConfigError, "≥ 0"),
        ({"tau": 0.0}, ConfigError, "tau"),
        ({"tau": -2.0}, ConfigError, "tau"),
        ({"temperature": 0.0}, ConfigError, "temperature"),
        ({"mode": "4d"}, ConfigError, "mode"),
        ({"mode": "3d"}, ConfigError, "volume"),
        ({"threshold": float("inf")}, ConfigError, "finite"),
        ({"intensities": np.zeros((3, 3))}, InvalidVolumeError, "do not match"),
        ({"features": np.zeros((8, 8, 3))}, InvalidVolumeError, "do not match"),
        ({"features": np.full((24, 24, 2), np.nan)}, InvalidVolumeError, "NaN"),
        ({"intensities": None}, ConfigError, "features or the slice intensities"),
        ({"tau": None}, ConfigError, "needs τ"),
        ({"foreground": np.ones((3, 3), bool)}, InvalidVolumeError, "foreground"),
    ],
)
def test_bad_parameters(kwargs, error, match) -> None:
    args = {"scores": _blob_case(), "threshold": 0.9, "lam": 1.0, "tau": 1.0, "intensities": np.zeros((24, 24))}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        scr_refine(**args)


@pytest.mark.parametrize("bad", [np.full((4, 4), np.nan), np.zeros(7), np.zeros((2, 2, 2, 2)), np.array([["a"]])])
def test_bad_scores(bad) -> None:
    with pytest.raises(InvalidVolumeError):
        scr_refine(bad, 0.5, 0.0)
