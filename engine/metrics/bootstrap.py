"""Bootstrap confidence intervals over slices (the unit that is sampled; pixels of a slice are not independent).

:func:`bootstrap_ci` is the general tool: it re-runs any metric on resampled slices. :func:`evaluate`
needs ten intervals over up to thousands of slices, which would mean ten thousand scikit-learn curves, so
it uses :class:`SliceHistograms`: each slice is reduced once to class-wise score histograms, and a
bootstrap replicate is then just a weighted sum of those histograms (one matrix product for all
replicates). With one bin per distinct score (image level) this is exact; at pixel level scores are
binned into ≤ 4,096 bins placed at quantiles of each class, which moves the curves by well under the
width of a typical interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError

N_BINS = 4096


def _percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(values, [a, 1.0 - a])
    return float(lo), float(hi)


def _check_args(n: int, confidence: float) -> None:
    if int(n) < 1:
        raise ConfigError(f"the number of bootstrap resamples must be ≥ 1, got {n}")
    if not (0.0 < float(confidence) < 1.0):
        raise ConfigError(f"confidence must be strictly between 0 and 1, got {confidence}")


def bootstrap_ci(
    metric_fn: Callable[..., float | None],
    data: np.ndarray | Sequence[Any],
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    min_valid: float = 0.5,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``metric_fn`` over slices.

    Args:
        metric_fn: Called as ``metric_fn(*resampled)``; may return None where undefined (e.g. a
            resample without anomalous slices), such replicates are skipped.
        data: One per-slice array (indexed along axis 0), or a tuple/list of them (maps, masks,
            foreground…) resampled with the same slice indices; None entries are passed through.
        n: Number of resamples.
        seed: Seed of the resampling.
        confidence: Interval coverage (0.95 → 2.5th and 97.5th percentiles).
        min_valid: Fraction of replicates that must be defined; otherwise None (no honest interval).

    Returns:
        (low, high), or None when the metric is undefined on too many replicates.
    """
    _check_args(n, confidence)
    arrays = [data] if isinstance(data, np.ndarray) else list(data)
    lengths = {len(a) for a in arrays if a is not None}
    if len(lengths) != 1:
        raise ConfigError("bootstrap data must hold the same number of slices in every array")
    n_slices = lengths.pop()
    if n_slices == 0:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n)):
        idx = rng.integers(0, n_slices, n_slices)
        args = [None if a is None else np.asarray(a)[idx] for a in arrays]
        v = metric_fn(*args)
        if v is not None and np.isfinite(v):
            values.append(float(v))
    if len(values) < max(1, min_valid * n):
        return None
    return _percentile_interval(np.asarray(values), confidence)


def resample_weights(n_slices: int, n: int, seed: int) -> np.ndarray:
    """(n, n_slices) counts: how often each slice is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_slices, np.full(n_slices, 1.0 / n_slices), size=int(n)).astype(np.float64)


class SliceHistograms:
    """Per-slice positive/negative counts in score bins (ascending), the sufficient statistic for curves."""

    def __init__(self, pos: np.ndarray, neg: np.ndarray, edges: np.ndarray | None = None) -> None:
        self.pos = pos
        self.neg = neg
        self.edges = edges

    @classmethod
    def from_scores(cls, scores: np.ndarray, labels: np.ndarray) -> SliceHistograms:
        """Exact per-slice histograms for one score per slice (bins = distinct scores)."""
        uniq, inv = np.unique(scores, return_inverse=True)
        n = len(scores)
        pos = np.zeros((n, uniq.size))
        neg = np.zeros((n, uniq.size))
        rows = np.arange(n)
        pos[rows[labels], inv[labels]] = 1.0
        neg[rows[~labels], inv[~labels]] = 1.0
        return cls(pos, neg, uniq)

    @classmethod
    def from_maps(
        cls, maps: np.ndarray, masks: np.ndarray, fg: np.ndarray, n_bins: int = N_BINS, chunk: int = 64
    ) -> SliceHistograms:
        """Binned per-slice histograms of foreground pixels; bin edges at quantiles of each class."""
        s_all = maps[fg]
        y_all = masks[fg]
        edges_parts = []
        for cls_scores in (s_all[y_all], s_all[~y_all]):
            if cls_scores.size:
                sample = cls_scores[:: max(1, cls_scores.size // 1_000_000)]
                edges_parts.append(np.quantile(sample, np.linspace(0, 1, n_bins // 2 + 1)[1:-1]))
        edges = np.unique(np.concatenate(edges_parts)) if edges_parts else np.zeros(0)
        nb = edges.size + 1
        n = len(maps)
        pos = np.zeros((n, nb))
        neg = np.zeros((n, nb))
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            f = fg[sl]
            which = np.nonzero(f)[0]
            b = np.searchsorted(edges, maps[sl][f], side="right")
            y = masks[sl][f]
            k = sl.stop - sl.start
            flat = which * nb + b
            pos[sl] = np.bincount(flat[y], minlength=k * nb).reshape(k, nb)
            neg[sl] = np.bincount(flat[~y], minlength=k * nb).reshape(k, nb)
        return cls(pos, neg, edges)

    def curves(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """AUROC, AP, best Dice and FPR95 for every replicate (rows of ``weights``); NaN where undefined.

        The formulas are scikit-learn's: AUROC counts ties as one half, AP = Σ (ΔRecall · Precision)
        over thresholds from high to low, Dice = 2TP/(TP + FP + P) at each threshold.
        """
        p = weights @ self.pos
        q = weights @ self.neg
        pt = p.sum(axis=1)
        nt = q.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            below = np.cumsum(q, axis=1) - q
            auroc = (p * (below + 0.5 * q)).sum(axis=1) / (pt * nt)
            tp = np.cumsum(p[:, ::-1], axis=1)[:, ::-1]  # scores in bin b or above
            fp = np.cumsum(q[:, ::-1], axis=1)[:, ::-1]
            prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            ap = (p * prec).sum(axis=1) / pt
            dice = (2 * tp / (tp + fp + pt[:, None])).max(axis=1)
            tpr = tp / pt[:, None]
            last = (tpr >= 0.95 - 1e-12).sum(axis=1) - 1
            fpr95 = fp[np.arange(len(fp)), np.maximum(last, 0)] / nt
        undefined = (pt == 0) | (nt == 0)
        auroc[undefined] = np.nan
        ap[pt == 0] = np.nan
        dice[pt == 0] = np.nan
        fpr95[undefined] = np.nan
        return {"auroc": auroc, "ap": ap, "best_dice": dice, "fpr95": fpr95}


def interval(values: np.ndarray, confidence: float = 0.95, min_valid: float = 0.5) -> list[float] | None:
    """Percentile interval of the defined replicates as a JSON-able [low, high], or None."""
    v = values[np.isfinite(values)]
    if v.size == 0 or v.size < min_valid * values.size:
        return None
    return list(_percentile_interval(v, confidence))
