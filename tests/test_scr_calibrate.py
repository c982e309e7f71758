from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from anomalens.engine.calibration import Calibration
from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.postprocess.calibrate import calibrate, lambda_for_fpr, threshold_for_fpr
from anomalens.engine.postprocess.normalise import ScoreNormaliser
from anomalens.engine.postprocess.scr import scr_refine


def _normals(seed: int, n: int = 12, size: int = 48) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Speckled normal maps (smooth noise, the kind of false positives SCR should remove), slices, masks."""
    rng = np.random.default_rng(seed)
    maps = (ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 1, 1)) * 4 + 10).astype(np.float32)
    img = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 2, 2)).astype(np.float32)
    fg = np.zeros(maps.shape, bool)
    fg[:, 4:-4, 4:-4] = True
    return maps, img, fg


def _fp(maps, fg, t, lam, tau, img, mode="2d") -> float:
    m = scr_refine(maps, t, lam, tau, intensities=img, mode=mode, foreground=fg)
    return m.sum() / fg.sum()


def test_threshold_for_fpr_is_the_smallest_passing() -> None:
    maps, _, fg = _normals(0)
    for target in (0.01, 0.05, 0.2):
        t = threshold_for_fpr(maps, fg, target)
        v = maps[fg]
        assert np.mean(v > t) <= target
        below = np.max(v[v < t])  # the next lower score would let in too many
        assert np.mean(v > below) > target


def test_lambda_is_the_smallest_that_meets_the_target() -> None:
    maps, img, fg = _normals(1)
    norm = ScoreNormaliser().fit(maps, fg)
    nm = norm.transform(maps)
    t = threshold_for_fpr(nm, fg, 0.05)
    tau = 0.3
    lam = lambda_for_fpr(nm, fg, t, tau, intensities=img, target_fpr=0.01)
    assert lam > 0
    assert _fp(nm, fg, t, lam, tau, img) <= 0.01
    assert _fp(nm, fg, t, lam * 0.9, tau, img) > 0.01
    # with the threshold already at the target, plain thresholding suffices
    t1 = threshold_for_fpr(nm, fg, 0.01)
    assert lambda_for_fpr(nm, fg, t1, tau, intensities=img, target_fpr=0.01) == 0.0


def test_calibrate_end_to_end() -> None:
    maps, img, fg = _normals(2)
    cal = calibrate(maps, fg, intensities=img, target_fpr=0.01)
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))).to_dict() == cal.to_dict()
    assert cal.normaliser.fitted and cal.target_fpr == 0.01
    assert cal.fp_area_unary == pytest.approx(0.05, abs=0.002)
    assert cal.fp_area_scr <= 0.01
    assert cal.scr.lam > 0 and cal.scr.tau > 0
    # the stored numbers reproduce the guarantee from the raw maps
    norm = cal.normaliser
    fp = _fp(norm.transform(maps), fg, cal.scr.threshold, cal.scr.lam, cal.scr.tau, img)
    assert fp == pytest.approx(cal.fp_area_scr) and fp <= 0.01
    # and roughly hold on unseen normals from the same source
    maps2, img2, fg2 = _normals(3)
    assert _fp(norm.transform(maps2), fg2, cal.scr.threshold, cal.scr.lam, cal.scr.tau, img2) <= 0.02


def test_calibrate_3d_and_lists() -> None:
    maps, img, fg = _normals(4, n=6, size=32)
    cal = calibrate([maps[:3], maps[3:]], [fg[:3], fg[3:]], intensities=[img[:3], img[3:]], mode="3d")
    assert cal.scr.mode == "3d" and cal.fp_area_scr <= 0.01


def test_calibrate_without_pairwise_inputs_skips_scr() -> None:
    maps, _, fg = _normals(5, n=3)
    cal = calibrate(maps, fg)
    assert cal.scr.lam is None and cal.scr.tau is None and cal.fp_area_scr is None
    assert any("SCR" in n for n in cal.notes)
    assert cal.scr.threshold > 0.9


def test_calibration_errors() -> None:
    maps, img, fg = _normals(6, n=2)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        threshold_for_fpr(maps, fg, 0.0)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibrate(maps, fg, intensities=img, target_fpr=1.5)
    with pytest.raises(ConfigError, match="features or intensities"):
        lambda_for_fpr(maps, fg, 10.0, 1.0)
    with pytest.raises(ConfigError, match="tau"):
        lambda_for_fpr(maps, fg, 10.0, 0.0, intensities=img)
    with pytest.raises(InvalidVolumeError, match="empty"):
        threshold_for_fpr(maps, np.zeros_like(fg))
    with pytest.raises(InvalidVolumeError, match="does not match"):
        lambda_for_fpr(maps, fg[:, :10], 10.0, 1.0, intensities=img)
    with pytest.raises(ConfigError, match="no λ"):
        # a threshold below every score: SCR can never clear a whole slice of "abnormal" pixels
        lambda_for_fpr(maps, fg, float(maps.min()) - 100, 1.0, intensities=img, grid=(0.01, 0.1))


def test_speckle_keeps_the_loose_threshold() -> None:
    """Where the loose threshold's extra false positives are speckle, λ trims them and 5× the target stays."""
    maps, img, fg = _normals(7)
    cal = calibrate(maps, fg, intensities=img, target_fpr=0.01)
    assert cal.scr_threshold_fpr == pytest.approx(0.05)
    assert cal.fp_area_scr >= 0.25 * 0.01
    assert not any("erased" in n for n in cal.notes)


def test_a_lambda_that_erases_tightens_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """Smooth maps: the smallest passing λ wipes whole regions (area → ~0), so the unary threshold tightens.

    The search is replaced by one whose answer depends on the unary threshold's rate as measured on the
    normals (brain1's PatchCore maps: 5 % → 0.005 % in one λ step), so the ladder's decisions are tested
    exactly; the real maps are measured by bench/bench_scr_calibration.py.
    """
    import anomalens.engine.postprocess.calibrate as calmod

    maps, img, fg = _normals(8)
    norm = ScoreNormaliser().fit(maps, fg)
    nm = norm.transform(maps)
    seen: list[float] = []

    def fake_search(units, threshold, target, grid, mode, temperature, steps, progress, cancel):
        rate = float(np.mean(nm[fg] > threshold))
        seen.append(rate)
        return (30.0, 0.00005) if rate > 0.025 else (8.0, 0.008)

    monkeypatch.setattr(calmod, "_lambda_search", fake_search)
    cal = calibrate(maps, fg, intensities=img, target_fpr=0.01)
    assert seen == pytest.approx([0.05, 0.03, 0.02], abs=0.002)  # loosest first, stops at the first trim
    assert cal.scr_threshold_fpr == pytest.approx(0.02)
    assert cal.fp_area_unary == pytest.approx(0.02, abs=0.002)
    assert cal.scr.lam == 8.0 and cal.fp_area_scr == 0.008
    assert sum("erased" in n for n in cal.notes) == 2
    # a rate the caller gives is used as it is, erasing or not
    seen.clear()
    fixed = calibrate(maps, fg, intensities=img, target_fpr=0.01, threshold_fpr=0.05)
    assert len(seen) == 1 and fixed.scr_threshold_fpr == 0.05 and fixed.scr.lam == 30.0


def test_when_every_loose_threshold_erases_scr_is_plain_thresholding(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalens.engine.postprocess.calibrate as calmod

    real = calmod._lambda_search
    maps, img, fg = _normals(9)

    def erasing_unless_plain(units, threshold, target, *args):
        lam, fp = real(units, threshold, target, *args)
        return (lam, fp) if lam == 0.0 else (lam, 0.0)

    monkeypatch.setattr(calmod, "_lambda_search", erasing_unless_plain)
    cal = calibrate(maps, fg, intensities=img, target_fpr=0.01)
    assert cal.scr_threshold_fpr == 0.01 and cal.scr.lam == 0.0
    assert cal.scr.threshold == pytest.approx(cal.threshold)
    assert sum("erased" in n for n in cal.notes) == 4


def test_no_lambda_at_a_loose_threshold_moves_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import anomalens.engine.postprocess.calibrate as calmod

    real = calmod._lambda_search
    maps, img, fg = _normals(10)
    calls = []

    def fails_first(*args):
        calls.append(1)
        if len(calls) == 1:
            raise ConfigError("no λ up to 1000 keeps SCR's false-positive area on normals below 1.00%")
        return real(*args)

    monkeypatch.setattr(calmod, "_lambda_search", fails_first)
    cal = calibrate(maps, fg, intensities=img, target_fpr=0.01)
    assert cal.scr_threshold_fpr == pytest.approx(0.03) and cal.fp_area_scr <= 0.01
    assert any("no λ met the target" in n for n in cal.notes)
