"""Any detector's embeddings on the unit Poincaré disk, for the viewer's disk view (no UI toolkit here).

The map is: tangent vectors at the origin → the two principal directions → exponential map onto a 2-D
hyperbolic plane of curvature −c, drawn in its Poincaré model and scaled to the unit disk (``√c · p``).

* Lorentz points go to the tangent space with ``lorentz.logmap0`` and Poincaré points with
  ``poincare.logmap0`` (times 2, so that for both the tangent vector's length is the point's hyperbolic
  distance from the origin). Principal directions are taken **without centring**: the origin is the one
  point these models give a meaning to (the classifier hyperplane's parameters are relative to it), and
  centring would move it. The two directions span a totally geodesic copy of the hyperbolic plane, so
  distances from the centre of the disk are the true distances of the projected tangent vectors.
* Sphere, product and Euclidean features (PatchCore) are used *as* tangent vectors, centred (their
  origin means nothing), and sent through the same exponential map with a display curvature chosen so
  that 95 % of the points fall inside 0.9 of the disk. That is a picture, not the detector's geometry, and
  the returned ``note`` says so for the viewer to show.

The classifier hyperplane is drawn as exactly where it cuts the displayed plane. For a Lorentz hyperplane
``(z, a)`` that cut is itself a hyperplane ``(Bᵀz, a₂)`` of the 2-D plane with
``tanh(√c a₂) = tanh(√c a) |z| / |Bᵀz|`` (and no cut when the right side reaches 1), drawn with
``lorentz.hyperplane_geodesic_points``. Points, though, are projected *onto* the plane, not cut by it: a
point near the boundary may be drawn on the other side of the line than it really is. The drawn geodesic
is the hyperplane's image under the projection only approximately, in that sense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .detectors.result import Embeddings
from .errors import ConfigError

#: Points used to fit the principal directions; more are projected but not used for fitting.
MAX_FIT = 20_000
#: For non-hyperbolic features: the 95th-percentile radius is drawn at this fraction of the disk.
DISPLAY_RADIUS = 0.9
HYPERBOLIC = ("lorentz", "poincare")


@dataclass
class DiskProjection:
    """Points on the unit disk with what the viewer needs to link them back to the scan.

    Attributes:
        xy: ``(n, 2)`` positions inside the unit disk.
        scores: ``(n,)`` anomaly score per point (max over a slice's patches in per-slice mode), or None.
        slice_index: ``(n,)`` index of each point's slice *among the scored slices* (as in ``Embeddings``).
        centers: ``(n, 2)`` (y, x) pixel centre of each point's patch (per slice: its highest-scoring patch).
        geodesic: ``(m, 2)`` polyline of the classifier boundary on the disk, or None.
        note: one sentence for the user on what the picture shows.
        curvature: curvature magnitude of the drawn disk (the embeddings' own one when hyperbolic).
        basis: ``(d, 2)`` orthonormal principal directions in tangent coordinates.
        explained: fraction of the (uncentred for hyperbolic) squared norm kept by the two directions.
        per_slice: whether each point is one slice's mean embedding.
    """

    xy: np.ndarray
    scores: np.ndarray | None
    slice_index: np.ndarray
    centers: np.ndarray
    geodesic: np.ndarray | None
    note: str
    curvature: float
    basis: np.ndarray
    explained: float
    per_slice: bool = False

    def __len__(self) -> int:
        return len(self.xy)


def tangent_vectors(emb: Embeddings) -> tuple[np.ndarray, bool]:
    """Tangent vectors at the origin ``(n, d)`` (float32: a picture needs no more), and whether hyperbolic.

    Hyperbolic vectors have the point's distance from the origin as their length.
    """
    import torch

    pts = np.asarray(emb.points, dtype=np.float32)
    if pts.ndim != 2:
        raise ConfigError(f"embeddings must be a (points, coordinates) array, got shape {pts.shape}")
    if emb.manifold in HYPERBOLIC:
        if not emb.curvature > 0:
            raise ConfigError(f"{emb.manifold} embeddings need a positive curvature, got {emb.curvature}")
        from .geometry import lorentz, poincare

        t = torch.from_numpy(pts)
        if emb.manifold == "lorentz":
            v = lorentz.logmap0(t, emb.curvature)
        else:  # the ball's metric is twice Euclidean at the origin: scale so |v| is the distance
            v = 2.0 * poincare.logmap0(t, emb.curvature)
        return v.numpy(), True
    return pts, False


def principal_directions(v: np.ndarray, centre: bool, max_fit: int = MAX_FIT,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """Two orthonormal principal directions ``(d, 2)``, the mean removed, and the share of norm² kept.

    The mean is zero when not centred. Fitted from the ``d × d`` second-moment matrix (cheaper than an
    SVD of the points for n ≫ d) on at most ``max_fit`` points; signs are fixed (largest coordinate
    positive) so the picture does not flip between runs.
    """
    import torch

    n, d = v.shape
    sample = v
    if n > max_fit:
        sample = v[np.random.default_rng(seed).choice(n, max_fit, replace=False)]
    mean = sample.mean(0, dtype=np.float64) if (centre and n) else np.zeros(d)
    # torch, not numpy, for the algebra: right after torch's maps, OpenBLAS threads would fight torch's
    # spinning OpenMP threads for the cores (10-50x slower on a small machine).
    x = torch.from_numpy(np.ascontiguousarray(sample)) - torch.from_numpy(mean.astype(sample.dtype))
    gram = (x.T @ x).to(torch.float64)
    vals_t, vecs_t = torch.linalg.eigh(gram)
    vals, vecs = vals_t.numpy(), vecs_t.numpy()
    order = np.argsort(vals)[::-1][:2]
    basis = vecs[:, order].copy()
    if basis.shape[1] < 2:  # one-dimensional features: a zero second axis
        basis = np.concatenate([basis, np.zeros((d, 2 - basis.shape[1]))], axis=1)
    for k in range(2):
        col = basis[:, k]
        if col.size and col[np.argmax(np.abs(col))] < 0:
            basis[:, k] = -col
    total = float(torch.trace(gram))
    explained = float(vals[order].sum() / total) if total > 0 else 1.0
    return basis, mean, explained


def _apply(v: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``(v - mean) @ basis`` in float64 (with torch, for the reason given in ``principal_directions``)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(v)) - torch.from_numpy(mean.astype(v.dtype))
    return (t @ torch.from_numpy(basis.astype(v.dtype))).to(torch.float64).numpy()


def to_disk(u: np.ndarray, c: float) -> np.ndarray:
    """2-D tangent vectors (length = hyperbolic distance) → points of the unit Poincaré disk.

    Through the engine's own maps (``lorentz.expmap0`` then ``to_poincare``) so the picture and the
    hyperplane polyline use one convention; ``√c`` rescales the disk of radius ``1/√c`` to radius 1.
    """
    import torch

    from .geometry import lorentz

    if len(u) == 0:
        return np.zeros((0, 2))
    t = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float64))
    p = lorentz.to_poincare(lorentz.expmap0(t, c), c).numpy() * math.sqrt(c)
    r = np.linalg.norm(p, axis=1, keepdims=True)
    return np.where(r > 0.9995, p / np.maximum(r, 1e-12) * 0.9995, p)


def _per_slice(v: np.ndarray, emb: Embeddings) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Mean tangent vector, max score and top patch centre of each slice.

    The tangent-space mean is the usual cheap stand-in for the Fréchet mean on a hyperbolic manifold: exact
    for the direction at small radii, slightly shrunk for far-out points, fine for a picture.
    """
    sl = np.asarray(emb.slice_index, dtype=int)
    uniq, inv = np.unique(sl, return_inverse=True)
    s = None if emb.scores is None else np.asarray(emb.scores, dtype=np.float64)
    order = np.lexsort((np.zeros(len(inv)) if s is None else -s, inv))  # by slice, highest score first
    starts = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    counts = np.diff(np.r_[starts, len(order)]).astype(np.float64)
    means = np.add.reduceat(v[order].astype(np.float64), starts, axis=0) / counts[:, None]
    first = order[starts]
    scores = None if s is None else s[first].astype(np.float32)
    centers = np.asarray(emb.centers, dtype=np.float32)[first]
    return means, scores, uniq, centers


def _lorentz_cut(emb: Embeddings, basis: np.ndarray, c: float) -> np.ndarray | None:
    """Where the Lorentz hyperplane ``(z, a)`` cuts the displayed plane, on the unit disk (None: it misses)."""
    import torch

    from .geometry import lorentz

    z = np.asarray(emb.hyperplane, dtype=np.float64).reshape(-1)
    if z.shape[0] != basis.shape[0]:
        return None
    z2 = basis.T @ z
    zn, z2n = float(np.linalg.norm(z)), float(np.linalg.norm(z2))
    if zn == 0 or z2n < 1e-12 * max(zn, 1.0):
        return None
    sc = math.sqrt(c)
    t = math.tanh(sc * float(emb.hyperplane_offset)) * zn / z2n
    if abs(t) >= 1 - 1e-9:
        return None
    a2 = math.atanh(t) / sc
    pts = lorentz.hyperplane_geodesic_points(torch.from_numpy(z2), a2, c, n=256).numpy()
    return pts * sc


def _euclidean_cut(emb: Embeddings, basis: np.ndarray, mean: np.ndarray, c: float) -> np.ndarray | None:
    """Where the linear boundary ``w·x + b = 0`` cuts the displayed plane, sent through the display map."""
    w = np.asarray(emb.hyperplane, dtype=np.float64).reshape(-1)
    if w.shape[0] != basis.shape[0]:
        return None
    w2 = basis.T @ w
    n2 = float(w2 @ w2)
    if n2 < 1e-24:
        return None
    u0 = -(float(emb.hyperplane_offset) + float(w @ mean)) * w2 / n2
    reach = 2 * math.atanh(0.999) / math.sqrt(c)  # tangent radius drawn at 0.999 of the disk
    along = math.sqrt(max(reach**2 - float(u0 @ u0), 0.0))
    if along == 0.0:
        return None
    perp = np.array([-w2[1], w2[0]]) / math.sqrt(n2)
    s = np.linspace(-along, along, 256)
    return to_disk(u0[None, :] + s[:, None] * perp[None, :], c)


def project_embeddings(emb: Embeddings, per_slice: bool = False, max_fit: int = MAX_FIT,
                       seed: int = 0) -> DiskProjection:
    """Project embeddings onto the unit Poincaré disk (see the module docstring for the method).

    Args:
        emb: any detector's embeddings.
        per_slice: one point per slice (mean tangent vector of its patches) instead of one per patch.
        max_fit: at most this many points fit the principal directions (all are projected).
        seed: for the fitting subsample.
    """
    v, hyperbolic = tangent_vectors(emb)
    finite = np.isfinite(v).all(axis=1)
    dropped = int((~finite).sum())
    scores = None if emb.scores is None else np.asarray(emb.scores, dtype=np.float32)
    if dropped:
        v = v[finite]
        emb = Embeddings(points=np.asarray(emb.points)[finite], slice_index=np.asarray(emb.slice_index)[finite],
                         centers=np.asarray(emb.centers)[finite], manifold=emb.manifold,
                         curvature=emb.curvature, scores=None if scores is None else scores[finite],
                         hyperplane=emb.hyperplane, hyperplane_offset=emb.hyperplane_offset)
        scores = emb.scores
    if per_slice:
        v, scores, slice_index, centers = _per_slice(v, emb) if len(v) else (
            v, scores, np.zeros(0, int), np.zeros((0, 2), np.float32))
    else:
        slice_index = np.asarray(emb.slice_index, dtype=int)
        centers = np.asarray(emb.centers, dtype=np.float32)
    basis, mean, explained = principal_directions(v, centre=not hyperbolic, max_fit=max_fit, seed=seed)
    u = _apply(v, mean, basis)
    if hyperbolic:
        c = float(emb.curvature)
    else:
        r95 = float(np.quantile(np.linalg.norm(u, axis=1), 0.95)) if len(u) else 0.0
        c = (2 * math.atanh(DISPLAY_RADIUS) / r95) ** 2 if r95 > 0 else 1.0
    xy = to_disk(u, c).astype(np.float32)
    geodesic = None
    if emb.hyperplane is not None:
        if emb.manifold == "lorentz":
            geodesic = _lorentz_cut(emb, basis, c)
        elif emb.manifold == "euclidean":
            geodesic = _euclidean_cut(emb, basis, mean, c)
    kept = f"{100 * explained:.0f}%"
    what = "slice means" if per_slice else "patches"
    if hyperbolic:
        note = (f"{emb.manifold.capitalize()} embeddings (curvature −{c:.3g}) of {len(xy)} {what}: log map at the "
                f"origin, the two main directions (keeping {kept} of the squared radius), exp map onto the disk.")
        if emb.hyperplane is not None:
            note += (" The line is where the classifier hyperplane cuts this plane." if geodesic is not None
                     else " The classifier hyperplane does not cross this plane.")
    else:
        note = (f"{emb.manifold.capitalize()} features, not hyperbolic embeddings ({len(xy)} {what}): shown as "
                f"tangent vectors (centred, two main directions keeping {kept} of the variance) mapped onto the "
                "disk for display only; distances on the disk are not the detector's.")
    if dropped:
        note += f" {dropped} non-finite embedding(s) left out."
    return DiskProjection(xy=xy, scores=scores, slice_index=np.asarray(slice_index, dtype=int),
                          centers=np.asarray(centers, dtype=np.float32),
                          geodesic=None if geodesic is None else geodesic.astype(np.float32), note=note,
                          curvature=c, basis=basis, explained=explained, per_slice=per_slice)
