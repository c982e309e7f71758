from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.metrics import (
    METRIC_KEYS,
    best_dice,
    bootstrap_ci,
    dice,
    evaluate,
    fpr_at_tpr,
    image_ap,
    image_auroc,
    image_labels,
    image_scores,
    pixel_ap,
    pixel_auroc,
    precision,
)
from anomalens.engine.metrics._inputs import pixel_sample
from anomalens.engine.metrics.bootstrap import SliceHistograms, resample_weights


def _dataset(seed: int = 0, n: int = 16, size: int = 24):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, size, size), bool)
    for i in range(0, n, 2):
        r, c = rng.integers(4, size - 10, 2)
        y[i, r : r + 5, c : c + 6] = True
    maps = (rng.normal(size=y.shape) + 2.0 * y).astype(np.float32)
    fg = np.zeros_like(y)
    fg[:, 2:-2, 2:-2] = True
    return maps, y, fg


def test_pixel_metrics_hand_computed() -> None:
    maps = np.array([[0.1, 0.4], [0.35, 0.8]], np.float32)
    y = np.array([[0, 0], [1, 1]])
    assert pixel_auroc(maps, y) == pytest.approx(0.75)
    assert pixel_ap(maps, y) == pytest.approx((1 + 2 / 3) / 2)
    # FPR95: the first threshold catching both positives (0.35) also passes 0.4 → FPR 0.5
    assert fpr_at_tpr(maps, y) == pytest.approx(0.5)
    assert fpr_at_tpr(maps, y, tpr=0.5) == pytest.approx(0.0)


def test_foreground_restricts_pixel_metrics() -> None:
    maps = np.array([[5.0, 0.1, 0.2], [0.9, 0.8, 5.0]], np.float32)  # corners are bright air
    y = np.array([[0, 0, 0], [1, 1, 0]], bool)
    fg = np.array([[0, 1, 1], [1, 1, 0]], bool)
    assert pixel_auroc(maps, y) < 0.8
    assert pixel_auroc(maps, y, fg) == 1.0
    assert pixel_ap(maps, y, fg) == 1.0


def test_best_dice_hand_and_brute_force() -> None:
    maps = np.array([[0.9, 0.8, 0.7, 0.1]], np.float32)
    y = np.array([[1, 0, 1, 0]], bool)
    d, t = best_dice(maps, y, return_threshold=True)
    assert d == pytest.approx(0.8) and t == pytest.approx(0.7)
    maps, y, fg = _dataset(1)
    d, t = best_dice(maps, y, fg, return_threshold=True)
    s, lab = maps[fg], y[fg]
    brute = max(2 * np.sum((s >= u) & lab) / (np.sum(s >= u) + lab.sum()) for u in np.unique(s))
    assert d == pytest.approx(brute)
    assert dice(maps >= t, y, foreground=fg) == pytest.approx(d)


def test_dice_and_precision_at_threshold() -> None:
    maps = np.array([[0.9, 0.8, 0.7, 0.1]], np.float32)
    y = np.array([[1, 0, 1, 0]], bool)
    assert dice(maps, y, threshold=0.75) == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))  # TP 1, FP 1, FN 1
    assert precision(maps, y, threshold=0.75) == pytest.approx(0.5)
    assert dice(maps > 0.75, y) == pytest.approx(0.5)
    assert dice(maps, y, threshold=0.5) == pytest.approx(2 * 2 / (2 * 2 + 1))
    notes: list[str] = []
    assert precision(maps, y, threshold=5.0, notes=notes) is None
    assert dice(np.zeros((1, 4), bool), np.zeros((1, 4), bool), notes=notes) is None
    assert dice(maps, np.zeros((1, 4), bool), threshold=0.75) == 0.0
    assert len(notes) == 2 and all(isinstance(n, str) for n in notes)
    with pytest.raises(ConfigError, match="threshold"):
        dice(maps, y)  # float maps without a threshold


def test_image_scores_and_labels() -> None:
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 0] = 8.0  # outside the foreground
    maps[0, 2, 2] = 4.0
    maps[1] = 1.0
    fg = np.zeros(maps.shape, bool)
    fg[:2, 1:3, 1:3] = True
    np.testing.assert_allclose(image_scores(maps), [8.0, 1.0, 0.0])
    np.testing.assert_allclose(image_scores(maps, "mean"), [12 / 16, 1.0, 0.0])
    np.testing.assert_allclose(image_scores(maps, "max", fg), [4.0, 1.0, 0.0])
    np.testing.assert_allclose(image_scores(maps, "mean", fg), [1.0, 1.0, 0.0])
    with pytest.raises(ConfigError, match="reduction"):
        image_scores(maps, "median")
    y = np.zeros(maps.shape, bool)
    y[1, 3, 3] = True
    np.testing.assert_array_equal(image_labels(y), [False, True, False])


def test_image_metrics_hand_computed() -> None:
    maps = np.zeros((4, 2, 2), np.float32)
    for i, v in enumerate([0.2, 0.9, 0.5, 0.7]):
        maps[i, 0, 1] = v
    y = np.zeros(maps.shape, bool)
    y[1, 1, 1] = y[2, 0, 0] = True  # anomalous slices 1 (0.9) and 2 (0.5)
    assert image_auroc(maps, y) == pytest.approx(0.75)
    assert image_ap(maps, y) == pytest.approx((1 + 2 / 3) / 2)
    assert fpr_at_tpr(maps, y, level="image") == pytest.approx(0.5)


def test_undefined_metrics_are_none_with_notes() -> None:
    maps, _, fg = _dataset(2)
    notes: list[str] = []
    empty = np.zeros(maps.shape, bool)
    assert pixel_auroc(maps, empty, fg, notes=notes) is None
    assert image_auroc(maps, empty, fg, notes=notes) is None
    assert best_dice(maps, empty, fg, notes=notes) is None
    assert fpr_at_tpr(maps, empty, fg, notes=notes) is None
    assert any("no anomalous" in n for n in notes)
    full = np.ones(maps.shape, bool)
    assert pixel_ap(maps, full, None, notes=notes) is None
    assert any("no normal" in n for n in notes)


def test_all_equal_scores_are_chance_level() -> None:
    _, y, fg = _dataset(3)
    maps = np.ones(y.shape, np.float32)
    notes: list[str] = []
    assert pixel_auroc(maps, y, fg, notes=notes) == 0.5
    assert image_auroc(maps, y, fg, notes=notes) == 0.5
    assert pixel_ap(maps, y, fg) == pytest.approx(y[fg].mean())
    assert any("all scores are equal" in n for n in notes)


def test_bad_inputs_raise_clear_errors() -> None:
    maps, y, fg = _dataset(4)
    with pytest.raises(InvalidVolumeError, match="do not match"):
        pixel_auroc(maps, y[:, :-1])
    with pytest.raises(InvalidVolumeError, match="do not match"):
        evaluate(maps, y, fg[:-1])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InvalidVolumeError, match="NaN"):
        evaluate(bad, y, fg)
    with pytest.raises(InvalidVolumeError, match="empty foreground"):
        evaluate(maps, y, np.zeros_like(fg))
    with pytest.raises(InvalidVolumeError):
        image_auroc(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))
    with pytest.raises(ConfigError):
        fpr_at_tpr(maps, y, tpr=1.5)
    with pytest.raises(InvalidVolumeError, match="common grid"):
        pixel_auroc([maps[0], maps[1, :10]], [y[0], y[1, :10]])


def _walk(x):
    if isinstance(x, dict):
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, list | tuple):
        for v in x:
            yield from _walk(v)
    else:
        yield x


def test_evaluate_keys_values_and_intervals() -> None:
    maps, y, fg = _dataset(5)
    scr = maps > 1.5
    r = evaluate(maps, y, fg, threshold=1.0, scr_masks=scr, n_boot=300)
    for k in METRIC_KEYS:
        assert isinstance(r[k], float), k
        lo, hi = r[f"{k}_ci"]
        assert lo <= hi
        assert lo - 0.05 <= r[k] <= hi + 0.05, k  # binned bootstrap: close to the exact point estimate
    assert r["n_slices"] == 16 and r["n_anomalous_slices"] == 8
    assert r["pixel_auroc"] == pytest.approx(pixel_auroc(maps, y, fg))
    assert r["dice"] == pytest.approx(dice(maps, y, 1.0, fg))
    assert r["dice_scr"] == pytest.approx(dice(scr, y, foreground=fg))
    assert json.loads(json.dumps(r)) == r
    # a degenerate input keeps every key and never produces NaN
    d = evaluate(maps, np.zeros_like(y), fg, n_boot=50)
    assert set(d) == set(r)
    assert d["pixel_auroc"] is None and d["pixel_auroc_ci"] is None and d["dice"] is None
    assert d["notes"]
    assert not any(isinstance(v, float) and math.isnan(v) for v in _walk(d))


def test_evaluate_drops_slices_without_foreground() -> None:
    maps, y, fg = _dataset(6)
    fg[3] = False
    r = evaluate(maps, y, fg, n_boot=0)
    assert r["n_slices"] == 15
    assert any("empty foreground" in n for n in r["notes"])
    assert r["pixel_auroc_ci"] is None


def test_histogram_bootstrap_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    s = np.round(rng.random(60), 1)  # many ties
    lab = rng.random(60) < 0.3
    c = SliceHistograms.from_scores(s, lab).curves(np.ones((1, 60)))
    assert c["auroc"][0] == pytest.approx(roc_auc_score(lab, s))
    assert c["ap"][0] == pytest.approx(average_precision_score(lab, s))
    # weights = repeated slices, exactly like resampling
    w = resample_weights(60, 3, seed=1)
    for row in w:
        idx = np.repeat(np.arange(60), row.astype(int))
        got = SliceHistograms.from_scores(s, lab).curves(row[None])
        assert got["auroc"][0] == pytest.approx(roc_auc_score(lab[idx], s[idx]))
    maps, y, fg = _dataset(7)
    p = SliceHistograms.from_maps(maps, y, fg).curves(np.ones((1, len(maps))))
    assert p["auroc"][0] == pytest.approx(pixel_auroc(maps, y, fg), abs=2e-3)
    assert p["ap"][0] == pytest.approx(pixel_ap(maps, y, fg), abs=5e-3)
    assert p["best_dice"][0] == pytest.approx(best_dice(maps, y, fg), abs=5e-3)


def test_bootstrap_ci_generic() -> None:
    rng = np.random.default_rng(0)
    vals = rng.normal(10.0, 2.0, size=200)
    lo, hi = bootstrap_ci(np.mean, vals, n=500, seed=1)
    se = 2.0 / np.sqrt(200)
    assert lo < 10.0 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)
    assert bootstrap_ci(np.mean, vals, n=200, seed=3) == bootstrap_ci(np.mean, vals, n=200, seed=3)
    maps, y, fg = _dataset(8, n=8)
    ci = bootstrap_ci(lambda m, t, f: pixel_auroc(m, t, f), (maps, y, fg), n=40, seed=0)
    assert ci is not None and ci[0] <= pixel_auroc(maps, y, fg) <= ci[1] + 1e-9
    assert bootstrap_ci(lambda m: None, maps, n=10) is None
    with pytest.raises(ConfigError):
        bootstrap_ci(np.mean, vals, n=0)


def test_pixel_subsampling_is_unbiased_and_deterministic() -> None:
    maps, y, fg = _dataset(9, n=24, size=32)
    full = pixel_auroc(maps, y, fg)
    sub = pixel_auroc(maps, y, fg, max_pixels=4000, seed=2)
    assert sub == pytest.approx(full, abs=0.02)
    assert sub == pixel_auroc(maps, y, fg, max_pixels=4000, seed=2)
    assert pixel_ap(maps, y, fg, max_pixels=4000) == pytest.approx(pixel_ap(maps, y, fg), abs=0.05)
    s, lab, w = pixel_sample(maps, y, fg, max_pixels=4000)
    assert s.size == 4000 and lab.sum() == y[fg].sum()  # every positive kept
    assert w is not None and w[~lab].sum() == pytest.approx((~y[fg]).sum())
