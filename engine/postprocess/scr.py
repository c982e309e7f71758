"""Spatial contiguity refinement (SCR): turn an anomaly map into a mask by an exact graph cut.

Thresholding a heatmap leaves speckle on normal tissue and holes inside lesions. InvDetect (Ma et al.,
eqs. 2–4) instead minimises a global energy

    E(y) = Σ_p Φ(y_p; s_p) + λ Σ_(p,q)∈N α_pq [y_p ≠ y_q],

whose data term is the cross-entropy of the label against p = σ((s − t) / temperature) and whose
pairwise term charges for label changes between neighbours that look alike (α_pq close to 1). The
energy is submodular, so the Boykov–Kolmogorov max-flow (PyMaxflow's grid API) finds its global minimum.

Everything is vectorised: one grid graph holds the whole slice or volume, with per-pixel capacity arrays;
there is no Python loop over pixels.

Conventions fixed here:

* ``α_pq = exp(−‖r_p − r_q‖² / τ²)``. The paper's text writes τ², the released code 2τ²; we implement
  the paper, so a τ from that code corresponds to ``τ·√2`` here.
* The data term is passed to the cut as its difference ``Φ(1) − Φ(0) = −logit(p) = (t − s)/temperature``
  (clipped to ±log((1 − ε)/ε), i.e. p clipped to [ε, 1 − ε]): adding a per-pixel constant does not move
  the minimum, and the difference is exact where −log σ(·) would round, so λ = 0 reproduces
  ``scores > threshold`` bit for bit (a pixel exactly at the threshold is normal).
* A threshold above every score gives an all-False mask and one below every score an all-True mask,
  whatever λ (a uniform labelling pays no pairwise cost and every unary agrees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..checks import check_positive
from ..errors import ConfigError, InvalidVolumeError

if TYPE_CHECKING:
    from ..detectors.result import AnomalyResult

#: Temperature of σ((s − t)/T). Sized for normalised maps (quantile units, see ``normalise``): a pixel one
#: percentile below the threshold costs 0.2 to mark abnormal, a pixel at the median about 10.
DEFAULT_TEMPERATURE = 0.05
#: p is clipped to [PROB_EPS, 1 − PROB_EPS] so a single absurd score cannot dominate its neighbours.
PROB_EPS = 1e-6
_LOGIT_CLIP = math.log((1.0 - PROB_EPS) / PROB_EPS)
MODES = ("2d", "3d")


@dataclass(frozen=True)
class PairwiseWeights:
    """Cached α arrays so a λ slider can re-run the cut without recomputing feature distances.

    ``alphas[k]`` has the grid's shape; entry ``i`` is α between pixel ``i`` and its successor along
    ``axes[k]`` (0 on the last slab, which has no successor).
    """

    alphas: tuple[np.ndarray, ...]
    axes: tuple[int, ...]
    shape: tuple[int, ...]
    mode: str
    tau: float


def _check_mode(mode: str, ndim: int) -> None:
    if mode not in MODES:
        raise ConfigError(f"SCR mode must be one of {MODES}, got {mode!r}")
    if ndim not in (2, 3):
        raise InvalidVolumeError(f"SCR needs a (H, W) slice or a (Z, H, W) volume, got {ndim} dimensions")
    if mode == "3d" and ndim != 3:
        raise ConfigError("SCR mode '3d' needs a (Z, H, W) volume; use mode '2d' for a single slice")


def _axes(ndim: int, mode: str) -> tuple[int, ...]:
    if ndim == 2:
        return (0, 1)
    return (0, 1, 2) if mode == "3d" else (1, 2)


def _descriptors(shape: tuple[int, ...], features: np.ndarray | None, intensities: np.ndarray | None) -> np.ndarray:
    """Per-pixel descriptors r with a trailing feature axis, checked against the grid."""
    if features is not None:
        r = np.asarray(features, dtype=np.float32)
        if r.shape == shape:
            r = r[..., None]
        if r.ndim != len(shape) + 1 or r.shape[:-1] != shape:
            raise InvalidVolumeError(
                f"per-pixel features of shape {r.shape} do not match the anomaly map {shape}; "
                "expected (..., F) on the same grid"
            )
        what = "features"
    elif intensities is not None:
        r = np.asarray(intensities, dtype=np.float32)
        if r.shape != shape:
            raise InvalidVolumeError(f"intensities of shape {r.shape} do not match the anomaly map {shape}")
        r = r[..., None]
        what = "intensities"
    else:
        raise ConfigError("SCR with λ > 0 needs per-pixel features or the slice intensities for its pairwise weights")
    if not np.isfinite(r).all():
        raise InvalidVolumeError(f"the {what} used for SCR's pairwise weights contain NaN or infinite values")
    return r


def _sq_dist_along(r: np.ndarray, axis: int, out: np.ndarray) -> np.ndarray:
    """Write ‖r_i − r_{i+e_axis}‖² into ``out`` (grid-shaped view without the last slab)."""
    lo = [slice(None)] * r.ndim
    hi = [slice(None)] * r.ndim
    lo[axis] = slice(None, -1)
    hi[axis] = slice(1, None)
    if r.shape[-1] == 1:
        np.subtract(r[tuple(hi)][..., 0], r[tuple(lo)][..., 0], out=out)
        np.square(out, out=out)
    else:
        d = r[tuple(hi)] - r[tuple(lo)]
        np.einsum("...f,...f->...", d, d, out=out)
    return out


def pairwise_weights(
    shape: tuple[int, ...],
    tau: float,
    features: np.ndarray | None = None,
    intensities: np.ndarray | None = None,
    mode: str = "2d",
) -> PairwiseWeights:
    """Compute α_pq = exp(−‖r_p − r_q‖²/τ²) for every neighbour pair of the grid.

    Separate from :func:`scr_refine` because α does not depend on λ or the threshold: the viewer computes
    it once per slice and τ and passes it back as ``weights=`` while the user drags the λ slider.

    Args:
        shape: The anomaly map's shape, (H, W) or (Z, H, W).
        tau: Feature distance at which neighbours stop being "alike" (α = 1/e at ‖Δr‖ = τ).
        features: Per-pixel descriptors, ``shape + (F,)`` (or ``shape`` for one feature); preferred.
        intensities: The slice/volume itself (``shape``), used when there are no features.
        mode: "2d" links pixels within a slice (4-neighbourhood); "3d" also across slices (6-neighbourhood).

    Returns:
        A :class:`PairwiseWeights` for that grid and mode.
    """
    shape = tuple(int(n) for n in shape)
    _check_mode(mode, len(shape))
    tau = check_positive("tau", tau)
    r = _descriptors(shape, features, intensities)
    axes = _axes(len(shape), mode)
    scale = np.float32(-1.0 / (tau * tau))
    alphas = []
    for ax in axes:
        a = np.zeros(shape, dtype=np.float32)
        view = a[(slice(None),) * ax + (slice(None, -1),)]
        _sq_dist_along(r, ax, view)
        np.multiply(view, scale, out=view)
        np.exp(view, out=view)
        alphas.append(a)
    return PairwiseWeights(tuple(alphas), axes, shape, mode, tau)


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores)
    if s.dtype.kind not in "fiub":
        raise InvalidVolumeError(f"anomaly scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float32, copy=False)
    if s.size == 0:
        raise InvalidVolumeError("the anomaly map is empty")
    if not np.isfinite(s).all():
        raise InvalidVolumeError(
            "the anomaly map contains NaN or infinite values; the detector output is broken for this input"
        )
    return s


def _check_threshold(threshold: float) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"threshold must be a number, got {threshold!r}") from exc
    if not math.isfinite(t):
        raise ConfigError(f"threshold must be finite, got {threshold!r}")
    return t


def _check_lambda(lam: float) -> float:
    try:
        v = float(lam)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"λ must be a number, got {lam!r}") from exc
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"λ (SCR smoothness) must be a finite number ≥ 0, got {lam!r}")
    return v


def unary_difference(scores: np.ndarray, threshold: float, temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Φ(1) − Φ(0) per pixel: the cost of calling a pixel abnormal rather than normal.

    With p = σ((s − t)/T) clipped to [ε, 1 − ε], −log p + log(1 − p) = −logit(p) = (t − s)/T clipped to
    ±log((1 − ε)/ε). Computed this way it is exact (no log of a rounded sigmoid) and costs two array ops.
    """
    s = np.asarray(scores, dtype=np.float32)
    d = np.subtract(np.float32(threshold), s, dtype=np.float32)
    d *= np.float32(1.0 / temperature)
    np.clip(d, -_LOGIT_CLIP, _LOGIT_CLIP, out=d)
    return d


def unary_costs(
    scores: np.ndarray, threshold: float, temperature: float = DEFAULT_TEMPERATURE
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's cross-entropy data term (Φ(0), Φ(1)) = (−log(1 − p), −log p), p clipped to [ε, 1 − ε].

    Not used by the cut (which needs only their difference, :func:`unary_difference`); kept for plots and
    tests of the energy.
    """
    z = (np.asarray(scores, dtype=np.float64) - float(threshold)) / float(temperature)
    p = np.clip(1.0 / (1.0 + np.exp(-z)), PROB_EPS, 1.0 - PROB_EPS)
    return (-np.log1p(-p)).astype(np.float32), (-np.log(p)).astype(np.float32)


def _structure(ndim: int, axis: int, value: float) -> np.ndarray:
    st = np.zeros((3,) * ndim, dtype=np.float64)
    idx = [1] * ndim
    idx[axis] = 2
    st[tuple(idx)] = value
    return st


def scr_refine(
    scores: np.ndarray,
    threshold: float,
    lam: float,
    tau: float | None = None,
    features: np.ndarray | None = None,
    intensities: np.ndarray | None = None,
    mode: str = "2d",
    temperature: float = DEFAULT_TEMPERATURE,
    weights: PairwiseWeights | None = None,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """Binary anomaly mask minimising the SCR energy exactly (one max-flow over the whole grid).

    Args:
        scores: Anomaly map (H, W) or (Z, H, W); higher is more anomalous. Normalised maps are expected
            (the default temperature assumes quantile units) but any finite scale works.
        threshold: Score at which p = 0.5. Above every score → all False; below every score → all True.
        lam: λ ≥ 0, the price of a label change between alike neighbours. 0 is plain thresholding.
        tau: τ > 0 for α; unused when ``weights`` is given or λ = 0.
        features: Per-pixel descriptors (grid + (F,)), preferred for α.
        intensities: Slice/volume intensities on the grid, the fallback for α.
        mode: "2d" cuts each slice independently (a (Z, H, W) input is one graph without z-edges, which
            is the same thing); "3d" adds edges between slices, linking a lesion across them.
        temperature: T in p = σ((s − t)/T); smaller means the scores weigh more against λ.
        weights: α from :func:`pairwise_weights` for this grid and mode, to skip recomputing it.
        foreground: Optional boolean mask; pixels outside it are forced normal (air is never a lesion).

    Returns:
        Boolean mask with the shape of ``scores``.

    Raises:
        ConfigError: λ < 0, τ ≤ 0, temperature ≤ 0, unknown mode, missing α inputs.
        InvalidVolumeError: wrong shapes, NaN/inf scores or features.
    """
    import maxflow

    s = _check_scores(scores)
    _check_mode(mode, s.ndim)
    t = _check_threshold(threshold)
    lam = _check_lambda(lam)
    temperature = check_positive("temperature", temperature)
    fg = None
    if foreground is not None:
        fg = np.asarray(foreground, dtype=bool)
        if fg.shape != s.shape:
            raise InvalidVolumeError(f"foreground mask {fg.shape} does not match the anomaly map {s.shape}")

    if lam > 0:
        if weights is None:
            if tau is None:
                raise ConfigError("SCR with λ > 0 needs τ (or cached weights from pairwise_weights)")
            tau = check_positive("tau", tau)
            weights = pairwise_weights(s.shape, tau, features, intensities, mode)
        elif weights.shape != s.shape or weights.mode != mode:
            raise ConfigError(
                f"cached SCR weights are for a {weights.shape} grid in {weights.mode} mode, "
                f"but the map is {s.shape} in {mode} mode; recompute them with pairwise_weights"
            )

    d = unary_difference(s, t, temperature)
    if fg is not None:
        d[~fg] = _LOGIT_CLIP

    g = maxflow.GraphFloat()
    ids = g.add_grid_nodes(s.shape)
    if lam > 0 and weights is not None:
        for axis, alpha in zip(weights.axes, weights.alphas, strict=True):
            g.add_grid_edges(ids, weights=alpha, structure=_structure(s.ndim, axis, lam), symmetric=True)
    # y = 1 is the sink side; a node on the sink side cuts its source edge, so that edge costs Φ(1) − Φ(0).
    g.add_grid_tedges(ids, np.maximum(d, 0), np.maximum(-d, 0))
    g.maxflow()
    mask = g.get_grid_segments(ids)
    if fg is not None:
        mask &= fg
    return mask


def refine_result(
    result: AnomalyResult,
    threshold: float,
    lam: float,
    tau: float | None,
    mode: str = "2d",
    intensities: np.ndarray | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    weights: PairwiseWeights | None = None,
    foreground: np.ndarray | None = None,
) -> np.ndarray:
    """SCR on a detector's output: α from ``result.features`` when present, else from ``intensities``.

    Returns a boolean (slices, H, W) mask. ``intensities`` are the preprocessed slices the detector saw
    (the result itself carries none).
    """
    return scr_refine(
        result.heatmaps,
        threshold,
        lam,
        tau,
        features=result.features,
        intensities=None if result.features is not None else intensities,
        mode=mode,
        temperature=temperature,
        weights=weights,
        foreground=foreground,
    )


def estimate_tau(
    shape: tuple[int, ...],
    features: np.ndarray | None = None,
    intensities: np.ndarray | None = None,
    mode: str = "2d",
    foreground: np.ndarray | None = None,
) -> float:
    """τ from normal data: the RMS neighbour distance, so an average neighbour pair gets α = 1/e.

    The paper sets τ "to match the mean of ‖r_p − r_q‖²"; read dimensionally that is τ² = mean ‖Δr‖².
    Pairs count only when both pixels are in ``foreground`` (if given). Constant descriptors give 1.0
    (any τ then yields α = 1).
    """
    shape = tuple(int(n) for n in shape)
    _check_mode(mode, len(shape))
    r = _descriptors(shape, features, intensities)
    fg = None if foreground is None else np.asarray(foreground, dtype=bool)
    if fg is not None and fg.shape != shape:
        raise InvalidVolumeError(f"foreground mask {fg.shape} does not match the grid {shape}")
    total, count = 0.0, 0
    for ax in _axes(len(shape), mode):
        sub = list(shape)
        sub[ax] -= 1
        if sub[ax] <= 0:
            continue
        d2 = _sq_dist_along(r, ax, np.empty(sub, dtype=np.float32))
        if fg is not None:
            lo = [slice(None)] * len(shape)
            hi = [slice(None)] * len(shape)
            lo[ax] = slice(None, -1)
            hi[ax] = slice(1, None)
            d2 = d2[fg[tuple(lo)] & fg[tuple(hi)]]
        total += float(d2.sum(dtype=np.float64))
        count += int(d2.size)
    if count == 0 or total <= 0:
        return 1.0
    return math.sqrt(total / count)
