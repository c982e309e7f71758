"""SCR speed next to a bare PyMaxflow grid cut on the same capacities, so overhead is visible as a ratio.

Run: ``.venv/bin/python bench/bench_scr.py`` (single-threaded; about 20 s). Targets: 256² ≤ 15 ms and
512² ≤ 100 ms including α; a 25×256×256 volume in 3D ≤ 1 s.
"""

from __future__ import annotations

import time
from functools import partial

import maxflow
import numpy as np
from scipy import ndimage

from anomalens.engine.postprocess.scr import (
    DEFAULT_TEMPERATURE,
    estimate_tau,
    pairwise_weights,
    scr_refine,
    unary_difference,
)

REPEATS = 5
THRESHOLD = 0.95
LAMBDA = 0.5


def synthetic(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantile-like scores (speckle + two lesions), a smooth image, and 8 per-pixel features."""
    rng = np.random.default_rng(seed)
    sig = (0,) * (len(shape) - 2) + (1.5, 1.5)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), sig)
    ranks = noise.ravel().argsort().argsort().reshape(shape)
    scores = (ranks / ranks.size).astype(np.float32)
    grid = np.indices(shape[-2:]).astype(np.float32)
    h, w = shape[-2:]
    for cy, cx, r in ((0.3, 0.3, 0.08), (0.65, 0.6, 0.12)):
        blob = ((grid[0] - cy * h) ** 2 + (grid[1] - cx * w) ** 2) < (r * min(h, w)) ** 2
        scores[..., blob] += 0.3
    image = ndimage.gaussian_filter(rng.normal(size=shape), (0,) * (len(shape) - 2) + (3, 3)).astype(np.float32)
    feats = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), sig) for _ in range(8)], -1).astype(np.float32)
    return scores, image, feats


def timed(fn, repeats: int = REPEATS) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def raw_cut(d: np.ndarray, alphas: tuple[np.ndarray, ...], axes: tuple[int, ...], lam: float) -> np.ndarray:
    """Bare PyMaxflow on precomputed capacities: what any SCR must at least pay."""
    g = maxflow.GraphFloat()
    ids = g.add_grid_nodes(d.shape)
    for ax, a in zip(axes, alphas, strict=True):
        st = np.zeros((3,) * d.ndim)
        idx = [1] * d.ndim
        idx[ax] = 2
        st[tuple(idx)] = lam
        g.add_grid_edges(ids, weights=a, structure=st, symmetric=True)
    g.add_grid_tedges(ids, np.maximum(d, 0), np.maximum(-d, 0))
    g.maxflow()
    return g.get_grid_segments(ids)


def main() -> None:
    try:
        import threadpoolctl

        threadpoolctl.threadpool_limits(1)
    except ImportError:
        pass
    cases = [((256, 256), "2d", 15), ((512, 512), "2d", 100), ((25, 256, 256), "3d", 1000)]
    print(f"{'case':<28}{'SCR ms':>10}{'raw cut ms':>12}{'ratio':>8}{'target ms':>11}  mask px")
    for shape, mode, target in cases:
        scores, image, feats = synthetic(shape)
        for name, kw in (("intensities", {"intensities": image}), ("features F=8", {"features": feats})):
            tau = estimate_tau(shape, mode=mode, **kw)
            t_scr, mask = timed(partial(scr_refine, scores, THRESHOLD, LAMBDA, tau, mode=mode, **kw))
            w = pairwise_weights(shape, tau, mode=mode, **kw)
            d = unary_difference(scores, THRESHOLD, DEFAULT_TEMPERATURE)
            t_raw, raw = timed(partial(raw_cut, d, w.alphas, w.axes, LAMBDA))
            assert np.array_equal(mask, raw), "SCR and the raw cut disagree"
            label = f"{'x'.join(map(str, shape))} {mode} {name}"
            print(
                f"{label:<28}{t_scr * 1e3:>10.1f}{t_raw * 1e3:>12.1f}{t_scr / t_raw:>8.2f}{target:>11}"
                f"  {int(mask.sum())}"
            )
        t_cached, _ = timed(partial(scr_refine, scores, THRESHOLD, LAMBDA, mode=mode, weights=w))
        print(f"{'  (cached α, λ slider)':<28}{t_cached * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
