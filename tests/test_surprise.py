"""The surprise mapping that puts two detectors' scores in one currency before they are added."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomalens.engine.errors import ConfigError
from anomalens.engine.postprocess.surprise import Surprise


def test_surprise_is_the_normal_tail_probability_and_keeps_growing() -> None:
    ref = np.random.default_rng(0).exponential(2.0, 200_000)
    s = Surprise.fit(ref, tail=0.95)
    x = np.array([0.0, 1.0, 3.0, 5.0])
    # Within the normal range: −log(1 − F), F the exponential CDF, so surprise = x / 2.
    np.testing.assert_allclose(s.transform(x), x / 2, atol=0.02)
    # Beyond the tail quantile an exponential tail goes on linearly: strong anomalies stay ordered.
    far = s.transform(np.array([20.0, 40.0]))
    np.testing.assert_allclose(far, [10.0, 20.0], rtol=0.03)
    grid = np.linspace(-1, 60, 5000)
    out = s.transform(grid)
    assert (np.diff(out) >= -1e-6).all(), "monotone"
    assert out.min() >= 0.0 and np.abs(np.diff(out)).max() < 0.1, "continuous, never negative"
    assert s.transform(np.quantile(ref, 0.95)) == pytest.approx(-math.log(0.05), abs=1e-3)


def test_a_floor_of_tied_scores_and_the_round_trip() -> None:
    ref = np.concatenate([np.zeros(900), np.linspace(0.1, 1.0, 100)])  # a floor shared by 90 % of normals
    s = Surprise.fit(torch.as_tensor(ref))
    assert s.transform(np.array([0.0]))[0] == pytest.approx(-math.log(0.1), abs=0.05)
    back = Surprise.from_tensor(s.to_tensor())
    x = np.linspace(-1, 3, 50)
    np.testing.assert_allclose(back.transform(x), s.transform(x))
    const = Surprise.fit(np.ones(10))
    assert np.isfinite(const.transform(np.array([0.0, 1.0, 2.0]))).all()
    assert const.transform(np.array([2.0]))[0] > const.transform(np.array([1.0]))[0]


def test_bad_references_are_refused() -> None:
    for bad in (np.array([1.0]), np.array([1.0, np.nan, 2.0])):
        with pytest.raises(ConfigError):
            Surprise.fit(bad)
    with pytest.raises(ConfigError):
        Surprise.fit(np.arange(10.0), tail=1.0)
    t = Surprise.fit(np.arange(10.0)).to_tensor()
    t[1] = -1.0
    with pytest.raises(ConfigError):
        Surprise.from_tensor(t)

