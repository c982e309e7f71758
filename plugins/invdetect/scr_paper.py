"""The paper's spatial contiguity refinement (SCR, eqs. 2–4) on InvDetect's own raw map and full latents.

The product's SCR (``engine.postprocess.scr`` through ``engine.scoring.cut_scr``) works on normal-quantile
maps with σ((s − t)/0.05) and per-pixel features of a few dimensions, so that one calibration serves every
detector and the viewer's sliders. The paper's SCR is narrower and this module implements it as written:

* unary: the cross-entropy of the label against σ(A(p)), with A the Gaussian-weighted average of the raw
  patch scores −f(z) (the one-class SVM's signed decision value): threshold t = 0 (the SVM's boundary) and
  temperature T = 1 — no quantile units;
* pairwise: α_pq = exp(−‖r_p − r_q‖² / τ²) with r_p the Gaussian-weighted average of the FULL b²-dimensional
  noise latents of the patches containing p (eq. 4; no PCA), and τ² the mean of ‖r_p − r_q‖² over the
  neighbour pairs of the normal training slices;
* λ: the smallest value that keeps the area flagged on the normal training slices below 1 % (or fixed).

The cut itself is the engine's exact max-flow (``engine.scoring.cut_scr`` with precomputed ``PairwiseWeights``), so the
energy is minimised by the same code as the product's SCR; only its inputs differ. Each slice is its own
grid (the paper is 2-D); a stack is one graph without edges between slices.

‖r_p − r_q‖² is computed exactly without holding r (b² values per pixel) for a whole slice: r is linear in
the latents, so the squared distance of two neighbours is a quadratic form in the slice's Gram matrix of
patch latents over the ≤ 8 patches that hold them (``neighbour_sq_distances``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ...engine.calibration import ScrSettings
from ...engine.errors import ConfigError
from ...engine.postprocess.scr import PairwiseWeights
from ...engine.scoring import cut_scr

#: The paper's target: λ keeps the area flagged on the normal training images below 1 %.
DEFAULT_FPR = 0.01
#: λ tried before bisection (×√10 apart); the unary term is the raw decision value, so λ has its scale.
LAMBDA_GRID = tuple(float(x) for x in np.geomspace(1e-2, 1e4, 13))
BISECT_STEPS = 6


def _axis_cover(size: int, b: int, stride: int, omega: float) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel along one axis of a padded grid: the two windows that may hold it, and their 1-D weights.

    With stride b/2 a pixel at y lies in windows y//stride − 1 and y//stride (where they exist); a window
    that does not exist gets weight 0 (and index 0). The 1-D weight is exp(−(y − centre)²/ω²): the paper's
    Gaussian is separable, so a pixel's weight for a patch is the product of its two axes' weights.
    """
    y = np.arange(size)
    n_win = (size - b) // stride + 1
    idx = np.stack([y // stride - 1, y // stride], 1)
    valid = (idx >= 0) & (idx < n_win) & (idx * stride <= y[:, None]) & (y[:, None] < idx * stride + b)
    centre = idx * stride + (b - 1) / 2.0
    wgt = np.where(valid, np.exp(-((y[:, None] - centre) ** 2) / (omega * omega)), 0.0)
    return np.where(valid, idx, 0), wgt


def pixel_patch_weights(padded: tuple[int, int], b: int, stride: int, omega: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel's (up to) four covering patches and their normalised weights w_p^i / Σ_j w_p^j (eq. 1).

    Returns (indices, weights), each (Hp, Wp, 4); patch indices are row-major over the window grid, the order
    of ``extract_patches``. A weight is 0 where a window does not exist.
    """
    if 2 * stride != b:
        raise ConfigError(f"the paper's SCR needs stride b/2 (b = {b}, stride = {stride})")
    (iy, wy), (ix, wx) = _axis_cover(padded[0], b, stride, omega), _axis_cover(padded[1], b, stride, omega)
    n_cols = (padded[1] - b) // stride + 1
    idx = (iy[:, None, :, None] * n_cols + ix[None, :, None, :]).reshape(padded[0], padded[1], 4)
    wgt = (wy[:, None, :, None] * wx[None, :, None, :]).reshape(padded[0], padded[1], 4)
    return idx, wgt / wgt.sum(-1, keepdims=True)


def neighbour_sq_distances(z: torch.Tensor | np.ndarray, n: int, shape: tuple[int, int], padded: tuple[int, int],
                           b: int, stride: int, omega: float) -> tuple[np.ndarray, np.ndarray]:
    """‖r_p − r_q‖² for vertical and horizontal neighbours, r_p the paper's aggregated full latent (exact).

    r_p = Σ_i ŵ_p^i z_i over the (≤ 4) patches holding p, so r_p − r_q = Σ c_a z_(I_a) over the ≤ 8 patches of
    the pair, and ‖r_p − r_q‖² = Σ_ab c_a c_b G[I_a, I_b] with G = Z Zᵀ the slice's Gram matrix of patch
    latents: no b²-dimensional vector per pixel is ever formed, and the cost does not grow with b².

    Args:
        z: (n·L, d) flattened noise latents of every patch, slice-major (as ``extract_patches`` orders them).
        n: number of slices.
        shape: the (H, W) grid the map is on (before padding).
        padded: the padded grid from ``extract_patches``.
        b: patch size.
        stride: window step (b/2).
        omega: the Gaussian width ω of eq. 1.

    Returns:
        (down, right): (n, H − 1, W) and (n, H, W − 1) float64 squared distances.
    """
    z64 = np.asarray(z, dtype=np.float64).reshape(n, -1, np.shape(z)[-1])
    h, w = shape
    idx, wgt = pixel_patch_weights(padded, b, stride, omega)
    idx, wgt = idx[:h, :w], wgt[:h, :w]
    pairs = {"down": ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
             "right": ((slice(None), slice(None, -1)), (slice(None), slice(1, None)))}
    out = {}
    for name, (lo, hi) in pairs.items():
        ii = np.concatenate([idx[lo], idx[hi]], -1).reshape(-1, 8)
        cc = np.concatenate([wgt[lo], -wgt[hi]], -1).reshape(-1, 8)
        shp = idx[lo].shape[:2]
        d2 = np.empty((n, *shp))
        for k in range(n):
            g = z64[k] @ z64[k].T
            quad = np.einsum("pa,pab,pb->p", cc, g[ii[:, :, None], ii[:, None, :]], cc)
            d2[k] = np.maximum(quad, 0.0).reshape(shp)
        out[name] = d2
    return out["down"], out["right"]


def tau_from(distances: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """τ with τ² = mean ‖r_p − r_q‖² over every neighbour pair given (the normal training slices).

    The paper sets τ "to match the mean of ‖r_p − r_q‖²"; read dimensionally (α's exponent is ‖Δr‖²/τ²) that
    is τ² = the mean, so an average neighbour pair gets α = 1/e. Constant latents give τ = 1.
    """
    total = sum(float(d.sum()) + float(r.sum()) for d, r in distances)
    count = sum(d.size + r.size for d, r in distances)
    if count == 0 or total <= 0 or not math.isfinite(total):
        return 1.0
    return math.sqrt(total / count)


def paper_weights(down: np.ndarray, right: np.ndarray, tau: float) -> PairwiseWeights:
    """α = exp(−‖Δr‖²/τ²) laid out as the engine's ``PairwiseWeights`` for an (n, H, W) stack in 2-D mode."""
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"τ must be a finite number > 0, got {tau!r}")
    n, h1, w = down.shape
    shape = (n, h1 + 1, w)
    alphas = []
    for axis, d2 in ((1, down), (2, right)):
        a = np.zeros(shape, np.float32)
        view = a[:, :-1] if axis == 1 else a[:, :, :-1]
        view[...] = np.exp(-d2 / (tau * tau))
        alphas.append(a)
    return PairwiseWeights(tuple(alphas), (1, 2), shape, "2d", float(tau))


def paper_scr(raw_maps: np.ndarray, weights: PairwiseWeights, lam: float) -> np.ndarray:
    """The SCR mask of eq. 2: unary σ(A) with t = 0 and T = 1 on the raw map, pairwise λ·α; exact max-flow."""
    maps = np.asarray(raw_maps, np.float32)
    point = ScrSettings(threshold=0.0, lam=float(lam), tau=float(weights.tau), temperature=1.0, mode="2d")
    return cut_scr(maps, np.ones(maps.shape, bool), point, weights=weights)  # the product's one cutting place


def flagged_fraction(raw_maps: np.ndarray, weights: PairwiseWeights, lam: float) -> float:
    """Share of pixels the paper's SCR marks abnormal (on normal slices: all of them false positives)."""
    return float(paper_scr(raw_maps, weights, lam).mean())


@dataclass(frozen=True)
class LambdaChoice:
    """λ chosen by the paper's rule, with the flagged area on the normal slices at λ and with no SCR."""

    lam: float
    flagged: float
    flagged_without: float
    met: bool


def select_lambda(raw_maps: np.ndarray, weights: PairwiseWeights, target: float = DEFAULT_FPR) -> LambdaChoice:
    """The smallest λ whose SCR flags less than ``target`` of the normal slices' pixels (paper, after [24, 26]).

    A log grid, then bisection between the last failing and the first passing λ. If no λ of the grid meets
    the target, the λ tried (0 included) that flags least is returned with ``met=False``.
    """
    if not 0 < target < 1:
        raise ConfigError(f"the SCR false-positive target must be in (0, 1), got {target!r}")
    base = flagged_fraction(raw_maps, weights, 0.0)
    if base < target:
        return LambdaChoice(0.0, base, base, True)
    lo, hi, at_hi = 0.0, None, base
    tried = [(base, 0.0)]
    for lam in LAMBDA_GRID:
        f = flagged_fraction(raw_maps, weights, lam)
        if f < target:
            hi, at_hi = lam, f
            break
        lo = lam
        tried.append((f, lam))
    if hi is None:  # the area need not fall with λ (a whole slice may flip): the least-flagging λ tried
        least, lam = min(tried)
        return LambdaChoice(lam, least, base, False)
    for _ in range(BISECT_STEPS):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 10
        f = flagged_fraction(raw_maps, weights, mid)
        if f < target:
            hi, at_hi = mid, f
        else:
            lo = mid
    return LambdaChoice(hi, at_hi, base, True)
