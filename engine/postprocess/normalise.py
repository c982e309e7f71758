"""Map raw anomaly scores to their quantile among normal pixels, so thresholds mean the same everywhere.

A PatchCore distance, a Lorentz hyperplane margin and a reconstruction error live on unrelated scales, and
a fine-tuned model shifts its own scale. After this mapping a normalised score of 0.99 means "higher than
99 % of normal tissue" for every detector, so one threshold (and one SCR temperature) serves them all.

Mapping (monotone, continuous except at tied knots):

* inside the normal range: piecewise-linear interpolation through ~1,000 quantile knots (q_i, level_i);
* above the largest normal score: ``1 + (s − q_max)/scale`` — above 1 and still growing, so strong
  anomalies stay ordered among themselves (rank metrics are unchanged by normalisation); continuous
  unless the top normal score is tied, whose mid-rank level is below 1;
* below the smallest normal score: ``level_min − (q_min − s)/scale`` — the same slope downward.

``scale`` is the normals' interquartile range (their range if that is 0). Tied knots (a score value
shared by many normal pixels, e.g. a zero floor) collapse to one knot at the middle of their levels.

All-equal normal scores are a *degenerate* fit (``degenerate`` is True): the constant maps to 0.5,
scores above it to above 1, scores below it below 0.5, with ``scale`` = max(|constant|, 1) · 1e-3, so
anything that departs from the constant is flagged rather than silently merged with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidVolumeError

N_KNOTS = 1001
MAX_FIT_PIXELS = 4_000_000
_KIND = "quantile"
_VERSION = 1


def _iter_maps(maps: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(maps, np.ndarray):
        return [maps]
    return [np.asarray(m) for m in maps]


def collect_pixels(
    maps: np.ndarray | Sequence[np.ndarray],
    foreground: np.ndarray | Sequence[np.ndarray] | None = None,
    what: str = "anomaly maps",
) -> np.ndarray:
    """Flatten the foreground pixels of one array or a list of arrays (volumes of different sizes).

    Raises:
        InvalidVolumeError: shape mismatch between a map and its mask, NaN/inf scores, or no pixels.
    """
    mlist = _iter_maps(maps)
    flist: list[np.ndarray | None]
    if foreground is None:
        flist = [None] * len(mlist)
    else:
        flist = _iter_maps(foreground)
        if len(flist) != len(mlist):
            raise InvalidVolumeError(f"{len(mlist)} {what} but {len(flist)} foreground masks")
    parts = []
    for m, f in zip(mlist, flist, strict=True):
        m = np.asarray(m)
        if m.dtype.kind not in "fiub":
            raise InvalidVolumeError(f"{what} must be numeric, got dtype {m.dtype}")
        if f is not None:
            f = np.asarray(f, dtype=bool)
            if f.shape != m.shape:
                raise InvalidVolumeError(f"foreground mask {f.shape} does not match {what} {m.shape}")
            v = m[f]
        else:
            v = m.reshape(-1)
        v = v.astype(np.float32, copy=False)
        if not np.isfinite(v).all():
            raise InvalidVolumeError(f"{what} contain NaN or infinite values")
        parts.append(v)
    out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if out.size == 0:
        raise InvalidVolumeError(f"no {what} pixels to use (empty input or empty foreground mask)")
    return out


def _sorted_quantiles(v: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Linear-interpolation quantiles of an already sorted array (one sort serves all 1,000 knots)."""
    pos = levels * (v.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, v.size - 1)
    frac = pos - lo
    return v[lo] * (1.0 - frac) + v[hi] * frac


class ScoreNormaliser:
    """Quantile normaliser fitted on normal pixel scores; see the module docstring for the mapping."""

    def __init__(
        self,
        knots: np.ndarray | None = None,
        levels: np.ndarray | None = None,
        scale: float = 1.0,
        n_fit: int = 0,
        degenerate: bool = False,
    ) -> None:
        self.knots = None if knots is None else np.asarray(knots, dtype=np.float64)
        self.levels = None if levels is None else np.asarray(levels, dtype=np.float64)
        self.scale = float(scale)
        self.n_fit = int(n_fit)
        self.degenerate = bool(degenerate)

    @property
    def fitted(self) -> bool:
        return self.knots is not None

    def fit(
        self,
        maps: np.ndarray | Sequence[np.ndarray],
        foreground: np.ndarray | Sequence[np.ndarray] | None = None,
        n_knots: int = N_KNOTS,
        max_pixels: int = MAX_FIT_PIXELS,
        seed: int = 0,
    ) -> ScoreNormaliser:
        """Fit on normal maps (any shapes; a list for volumes of different sizes) within ``foreground``.

        More than ``max_pixels`` foreground pixels are subsampled uniformly (seeded): 4 M samples pin
        the 1,000 knots far below their spacing.
        """
        if n_knots < 2:
            raise ConfigError(f"n_knots must be at least 2, got {n_knots}")
        v = collect_pixels(maps, foreground, "normal anomaly maps")
        n_fit = int(v.size)
        if v.size > max_pixels:
            v = np.random.default_rng(seed).choice(v, size=max_pixels, replace=False)
        v = np.sort(v.astype(np.float64))
        levels = np.linspace(0.0, 1.0, n_knots)
        knots = np.maximum.accumulate(_sorted_quantiles(v, levels))
        # Collapse tied knots to one at the mean of their levels (mid-rank): np.interp needs distinct xs.
        uniq, inverse, counts = np.unique(knots, return_inverse=True, return_counts=True)
        lv = np.bincount(inverse, weights=levels) / counts
        self.knots, self.levels, self.n_fit = uniq, lv, n_fit
        self.degenerate = uniq.size == 1
        if self.degenerate:
            self.levels = np.array([0.5])
            self.scale = max(abs(float(uniq[0])), 1.0) * 1e-3
        else:
            q25, q75 = _sorted_quantiles(v, np.array([0.25, 0.75]))
            iqr = float(q75 - q25)
            self.scale = iqr if iqr > 0 else float(uniq[-1] - uniq[0])
        return self

    def _require(self) -> tuple[np.ndarray, np.ndarray]:
        if self.knots is None or self.levels is None:
            raise ConfigError("the score normaliser is not fitted; call fit() on normal maps first")
        return self.knots, self.levels

    def transform(self, maps: np.ndarray) -> np.ndarray:
        """Normalised float32 maps of the same shape (0…1 on normal tissue, > 1 beyond every normal)."""
        knots, levels = self._require()
        a = np.asarray(maps)
        if a.dtype.kind not in "fiub":
            raise InvalidVolumeError(f"anomaly maps must be numeric, got dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise InvalidVolumeError("anomaly maps contain NaN or infinite values; they cannot be normalised")
        x = a.astype(np.float64, copy=False)
        lo, hi = knots[0], knots[-1]
        out = np.interp(x, knots, levels)
        above = x > hi
        if above.any():
            out[above] = 1.0 + (x[above] - hi) / self.scale
        below = x < lo
        if below.any():
            out[below] = levels[0] - (lo - x[below]) / self.scale
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data for ``bundle.json`` (calibration section)."""
        knots, levels = self._require()
        return {
            "kind": _KIND,
            "version": _VERSION,
            "knots": [float(k) for k in knots],
            "levels": [float(v) for v in levels],
            "scale": self.scale,
            "n_fit": self.n_fit,
            "degenerate": self.degenerate,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreNormaliser:
        """Rebuild from :meth:`to_dict` output, checking it (a bundle may be hand-edited or damaged)."""
        if not isinstance(data, dict) or data.get("kind") != _KIND:
            raise ConfigError("the stored score normaliser is not a quantile normaliser")
        if data.get("version") != _VERSION:
            raise ConfigError(f"unsupported score normaliser version {data.get('version')!r}")
        try:
            knots = np.asarray(data["knots"], dtype=np.float64)
            levels = np.asarray(data["levels"], dtype=np.float64)
            scale = float(data["scale"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the stored score normaliser is malformed: {exc}") from exc
        if (
            knots.ndim != 1
            or knots.shape != levels.shape
            or knots.size == 0
            or not np.isfinite(knots).all()
            or not np.isfinite(levels).all()
            or np.any(np.diff(knots) <= 0)
            or np.any(np.diff(levels) < 0)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ConfigError("the stored score normaliser is inconsistent (knots must increase, scale > 0)")
        return cls(knots, levels, scale, int(data.get("n_fit", 0)), bool(data.get("degenerate", False)))
