from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomalens.engine.errors import ConfigError, InvalidVolumeError
from anomalens.engine.postprocess.normalise import ScoreNormaliser


def _normals(seed: int = 0, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, 3.0, size=(n, 40, 40)).astype(np.float32)


def test_maps_normals_to_their_quantile() -> None:
    maps = _normals()
    norm = ScoreNormaliser().fit(maps)
    out = norm.transform(maps)
    assert out.dtype == np.float32 and out.shape == maps.shape
    assert out.min() >= 0.0 and out.max() <= 1.0 + 1e-6
    for q in (0.5, 0.9, 0.99):
        assert np.mean(out > q) == pytest.approx(1 - q, abs=0.005)
    # held-out normals from the same distribution keep the meaning of a threshold
    held = norm.transform(_normals(seed=1))
    assert np.mean(held > 0.95) == pytest.approx(0.05, abs=0.01)


def test_strictly_monotone_and_beyond_the_range() -> None:
    maps = _normals()
    norm = ScoreNormaliser().fit(maps)
    x = np.linspace(maps.min() - 5, maps.max() + 50, 20_001, dtype=np.float64)
    y = norm.transform(x).astype(np.float64)
    assert np.all(np.diff(y) >= 0)
    assert np.all(np.diff(y[::50]) > 0)  # no plateaus anywhere, inside or outside the normal range
    above = x > maps.max()
    assert np.all(y[above] > 1.0)
    assert y[-1] > 1.5  # far beyond the normals: clearly above 1, still growing
    assert np.all(y[x < maps.min()] < y[x >= maps.min()].min())


def test_rank_metrics_unchanged() -> None:
    rng = np.random.default_rng(3)
    norm = ScoreNormaliser().fit(_normals())
    scores = np.concatenate([rng.gamma(2.0, 3.0, 500), rng.gamma(2.0, 3.0, 100) + 8.0]).astype(np.float32)
    labels = np.r_[np.zeros(500), np.ones(100)]
    before = roc_auc_score(labels, scores)
    after = roc_auc_score(labels, norm.transform(scores))
    assert after == pytest.approx(before, abs=1e-12)


def test_round_trip_through_json() -> None:
    norm = ScoreNormaliser().fit(_normals())
    data = json.loads(json.dumps(norm.to_dict()))
    again = ScoreNormaliser.from_dict(data)
    x = np.linspace(-10, 80, 997, dtype=np.float32)
    np.testing.assert_array_equal(again.transform(x), norm.transform(x))
    assert 2 <= len(data["knots"]) <= 1001
    assert again.n_fit == 6 * 40 * 40


def test_foreground_and_list_of_volumes() -> None:
    maps = _normals()
    fg = np.zeros(maps.shape, bool)
    fg[:, 5:35, 5:35] = True
    spoiled = maps.copy()
    spoiled[~fg] = 1e6  # background garbage must not move the fit
    a = ScoreNormaliser().fit(spoiled, fg)
    b = ScoreNormaliser().fit(maps[fg])
    np.testing.assert_allclose(a.knots, b.knots)
    vols = [maps[:2], maps[2:, :30, :20]]
    c = ScoreNormaliser().fit(vols, [fg[:2], fg[2:, :30, :20]])
    assert c.fitted and c.n_fit == int(fg[:2].sum() + fg[2:, :30, :20].sum())


def test_all_equal_scores_are_degenerate_not_a_crash() -> None:
    norm = ScoreNormaliser().fit(np.full((2, 8, 8), 3.0, np.float32))
    assert norm.degenerate
    out = norm.transform(np.array([2.9, 3.0, 3.1], np.float32))
    assert out[1] == pytest.approx(0.5)
    assert out[0] < 0.5 and out[2] > 1.0
    assert ScoreNormaliser.from_dict(json.loads(json.dumps(norm.to_dict()))).degenerate


def test_many_ties_collapse_to_mid_rank() -> None:
    rng = np.random.default_rng(0)
    v = np.concatenate([np.zeros(4000), rng.random(6000) + 1.0]).astype(np.float32)
    norm = ScoreNormaliser().fit(v)
    assert np.all(np.diff(norm.knots) > 0)
    assert norm.transform(np.array([0.0], np.float32))[0] == pytest.approx(0.2, abs=0.002)
    assert np.mean(norm.transform(v) > 0.9) == pytest.approx(0.1, abs=0.005)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="not fitted"):
        ScoreNormaliser().transform(np.zeros(3))
    with pytest.raises(InvalidVolumeError, match="NaN"):
        ScoreNormaliser().fit(np.array([1.0, np.nan]))
    with pytest.raises(InvalidVolumeError, match="no normal"):
        ScoreNormaliser().fit(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool))
    with pytest.raises(InvalidVolumeError, match="does not match"):
        ScoreNormaliser().fit(np.zeros((2, 4, 4)), np.ones((2, 4, 5), bool))
    norm = ScoreNormaliser().fit(_normals())
    with pytest.raises(InvalidVolumeError, match="NaN"):
        norm.transform(np.array([np.inf]))
    bad = norm.to_dict()
    bad["knots"] = bad["knots"][::-1]
    with pytest.raises(ConfigError, match="inconsistent"):
        ScoreNormaliser.from_dict(bad)
    with pytest.raises(ConfigError):
        ScoreNormaliser.from_dict({"kind": "zscore"})
    with pytest.raises(ConfigError, match="malformed"):
        ScoreNormaliser.from_dict({"kind": "quantile", "version": 1, "knots": "x"})
