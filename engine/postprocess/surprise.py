"""Scores in one currency, the surprise −log P(normal ≥ s), so two detectors' scores can be added.

A memory bank's nearest-neighbour distance and a classifier's probability live on unrelated scales; their
plain sum is decided by whichever has the longer tail. Mapped through the distribution of each score on
normal tissue, both become "how improbable is this under normal anatomy", and adding surprises ranks a
patch by the product of its two tail probabilities (Fisher's method for combining independent tests).

Within the normal range the surprise is −log(1 − F(s)) with F the empirical distribution of the
reference scores (piecewise-linear through quantile knots). Above the ``tail`` quantile an exponential
tail is fitted (its scale β is the reference's mean excess over that quantile), so the surprise keeps
growing linearly, (s − q_tail)/β, and strong anomalies stay ordered among themselves instead of all
saturating at the largest normal score. The mapping is monotone and continuous.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConfigError


class Surprise:
    """Fitted on normal reference scores; ``transform`` maps any score to its surprise (≥ 0)."""

    def __init__(self, knots: np.ndarray, tail: float, beta: float) -> None:
        self.knots = np.asarray(knots, dtype=np.float64)
        self.tail = float(tail)
        self.beta = float(beta)
        self.levels = np.linspace(0.0, self.tail, len(self.knots))
        # Tied knots (a floor shared by many normal scores) take the highest level: np.interp needs
        # increasing xs, and a tie means "at least this probable".
        self._xs, first = np.unique(self.knots[::-1], return_index=True)
        self._ys = self.levels[::-1][first]

    @classmethod
    def fit(cls, reference: np.ndarray | torch.Tensor, tail: float = 0.95, n_knots: int = 257) -> Surprise:
        """Fit on normal scores (any shape; NaNs refused)."""
        v = torch.as_tensor(reference).detach().double().reshape(-1).cpu().numpy()
        if v.size < 2:
            raise ConfigError("a surprise reference needs at least two normal scores")
        if not np.isfinite(v).all():
            raise ConfigError("the normal reference scores contain NaN or infinite values")
        if not 0.5 <= tail < 1:
            raise ConfigError(f"tail must be in [0.5, 1), got {tail}")
        levels = np.linspace(0.0, tail, n_knots)
        knots = np.maximum.accumulate(np.quantile(v, levels))
        excess = v[v > knots[-1]] - knots[-1]
        spread = float(knots[-1] - knots[0])
        beta = float(excess.mean()) if excess.size else 0.0
        # A reference with no tail (all equal, or a floor) still needs a positive scale.
        beta = max(beta, 1e-3 * spread, 1e-12)
        return cls(knots, tail, beta)

    def transform(self, scores: np.ndarray | torch.Tensor) -> np.ndarray:
        """Surprise in nats, float32, same shape."""
        x = torch.as_tensor(scores).detach().double().cpu().numpy()
        shape = x.shape
        x = x.reshape(-1)
        f = np.interp(x, self._xs, self._ys)
        out = -np.log1p(-f)
        q = self.knots[-1]
        above = x > q
        out[above] = -math.log1p(-self.tail) + (x[above] - q) / self.beta
        return out.astype(np.float32).reshape(shape)

    def to_tensor(self) -> torch.Tensor:
        """[tail, β, knots…] as float64, for a safetensors bundle."""
        return torch.as_tensor(np.concatenate([[self.tail, self.beta], self.knots]), dtype=torch.float64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Surprise:
        v = t.detach().double().cpu().numpy().reshape(-1)
        if v.size < 4 or not np.isfinite(v).all() or not 0.5 <= v[0] < 1 or v[1] <= 0 or (np.diff(v[2:]) < 0).any():
            raise ConfigError("the stored surprise reference is malformed")
        return cls(v[2:], v[0], v[1])
