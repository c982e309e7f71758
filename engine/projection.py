"""Any detector's embeddings on the unit Poincaré disk, for the viewer's disk view (no UI toolkit here).

The map is: (optionally) an isometry that centres the normal tissue → tangent vectors at the origin → two
directions → exponential map onto a 2-D hyperbolic plane of curvature −c, drawn in its Poincaré model and
scaled to the unit disk (``√c · p``).

* **Centring** (``reference``, the viewer always passes one): the Lorentzian centroid of the normal
  patches (``reference_selection`` says which) is carried to the origin by a hyperbolic translation, a
  Lorentz boost (``geometry.isometries``), and the classifier's hyperplane is moved by the same map. An
  isometry: pairwise distances and each point's signed distance to the hyperplane are unchanged; the centre
  of the disk now means "normal tissue", so a point's distance from it is its distance from normal. Without
  it (the detector's own origin) brain1's Lorentz patches all sit ~2 units out: one blob near the rim.
  Sphere features are rotated so the normal patches' mean direction is the pole, Euclidean ones translated
  so their mean is the origin; product embeddings (whose factors are not described) are not centred.
* Lorentz points go to the tangent space with ``lorentz.logmap0`` and Poincaré points with
  ``poincare.logmap0`` (times 2, so that for both the tangent vector's length is the point's hyperbolic
  distance from the origin). **Directions**: with ``plane="classifier"`` and a hyperplane, the first is the
  hyperplane's normal at the origin (after centring: the direction from normal tissue towards the boundary)
  and the second the main direction of what is left; else the two principal directions, **uncentred**
  (the origin is the one point these models give a meaning to). Either pair spans a totally geodesic copy
  of the hyperbolic plane, so distances from the centre of the disk are the true distances of the projected
  tangent vectors.
* **Spread** (``spread=True``): when the points would fill less than half the disk's radius (or crowd its
  rim), tangent lengths are multiplied by one factor before the exponential map, so the normal reference's
  95th-percentile radius lands at ``NORMAL_RADIUS`` of the disk. That uniform scaling is NOT an isometry
  (the note says so): it keeps directions, the order of distances from the centre and each point's side of
  the drawn boundary (the boundary is drawn through the same map), not the distances themselves.
* Sphere, product and Euclidean features (PatchCore) are used *as* tangent vectors (the sphere's, when
  centred, by its log map at the pole), centred on their mean when not centred on a reference, and sent
  through the same exponential map with a display curvature chosen so that 95 % of the points fall inside
  0.9 of the disk. That is a picture, not the detector's geometry, and the returned ``note`` says so.

The classifier hyperplane is drawn as exactly where it cuts the displayed plane. For a Lorentz hyperplane
``(z, a)`` that cut is itself a hyperplane ``(Bᵀz, a₂)`` of the 2-D plane with
``tanh(√c a₂) = tanh(√c a) |z| / |Bᵀz|`` (and no cut when the right side reaches 1); in the classifier plane
``Bᵀz = (|z|, 0)`` and ``a₂ = a``. Points, though, are projected *onto* the plane, not cut by it: a point
near the boundary may be drawn on the other side of the line than it really is. ``side`` holds each
point's exact signed distance to the hyperplane (in the model's own dimensions, positive on the anomalous
side) and ``drawn_side`` the side it is drawn on, so a viewer can count both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .detectors.result import Embeddings
from .errors import ConfigError

#: Points used to fit the principal directions; more are projected but not used for fitting.
MAX_FIT = 20_000
#: For non-hyperbolic features: the 95th-percentile radius is drawn at this fraction of the disk.
DISPLAY_RADIUS = 0.9
#: With ``spread``: the normal reference's 95th-percentile radius is drawn at this fraction of the disk.
NORMAL_RADIUS = 0.6
#: With ``spread``: hyperbolic pictures whose 95th-percentile radius (all points) lies in this range are
#: drawn unscaled (the true picture is legible); outside it they are scaled.
LEGIBLE = (0.5, 0.97)
HYPERBOLIC = ("lorentz", "poincare")
PLANES = ("principal", "classifier")


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
        basis: ``(d, 2)`` orthonormal directions in tangent coordinates (after centring).
        explained: fraction of the (uncentred for hyperbolic) squared norm kept by the two directions.
        per_slice: whether each point is one slice's mean embedding.
        side: ``(n,)`` exact signed distance of each point to the classifier hyperplane in the model's own
            dimensions (positive: the anomalous side; Euclidean features: ``w·x + b``), or None.
        drawn_side: ``(n,)`` the same sign as drawn: positive where the point lies on the anomalous side of
            the drawn boundary (its value is not a distance), or None when nothing is drawn.
        centring: how the view was centred (one sentence; empty when it was not).
        scale: factor applied to tangent lengths for display (1: none; not an isometry otherwise).
        finite: ``(N,)`` which input embeddings were kept (non-finite ones are left out).
        hyperplane_of: whose hyperplane is drawn (``Embeddings.hyperplane_of``; empty: the only one).
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
    side: np.ndarray | None = None
    drawn_side: np.ndarray | None = None
    centring: str = ""
    scale: float = 1.0
    finite: np.ndarray | None = None
    hyperplane_of: str = ""

    def __len__(self) -> int:
        return len(self.xy)


@dataclass
class Centred:
    """Embeddings moved by a centring isometry, and what was done (see ``centre_embeddings``)."""

    embeddings: Embeddings
    note: str
    shift: float
    centred: bool


def reference_selection(values: np.ndarray | None, threshold: float | None = None,
                        slice_index: np.ndarray | None = None,
                        marked: list[int] | np.ndarray | None = None) -> tuple[np.ndarray, str]:
    """Which patches are "normal" for centring the disk, and a phrase saying which (for the dock's note).

    In order of trust: the patches of the slices the user marked normal (the model's own normal reference
    on this scan, and what calibration and fine-tuning use), else the patches whose map value is below the
    calibrated threshold (what the model itself calls normal here), else all patches (an uncalibrated model
    has no threshold; most of a scan is normal tissue, so the centroid is still near it).

    Args:
        values: ``(n,)`` each patch's map value at its centre (the result's unit), or None.
        threshold: the calibrated operating point in that unit, or None.
        slice_index: ``(n,)`` each patch's slice (volume z), needed with ``marked``.
        marked: z indices marked normal.
    """
    n = len(values) if values is not None else len(slice_index) if slice_index is not None else 0
    if marked is not None and len(marked) and slice_index is not None:
        on = np.isin(np.asarray(slice_index, dtype=int), np.asarray(list(marked), dtype=int))
        if on.any():
            k = len(np.unique(np.asarray(slice_index)[on]))
            return on, f"the {int(on.sum())} patches of the {k} slice(s) marked normal"
    if values is not None and threshold is not None and np.isfinite(threshold):
        below = np.asarray(values, dtype=np.float64) < float(threshold)
        if below.any():
            return below, f"the {int(below.sum())} of {n} patches below the calibrated threshold ({threshold:.3g})"
    return np.ones(n, bool), f"all {n} patches (no slice marked normal and no calibrated threshold)"


def _with_points(emb: Embeddings, points: np.ndarray, hyperplane: np.ndarray | None, offset: float) -> Embeddings:
    return dataclasses.replace(emb, points=points, hyperplane=hyperplane, hyperplane_offset=offset)


def centre_embeddings(emb: Embeddings, reference: np.ndarray, what: str = "the reference patches") -> Centred:
    """Move ``emb`` by the isometry that carries the centre of its ``reference`` points to the origin.

    Why an isometry: the disk should show how far each patch is from normal tissue and on which side of the
    classifier it falls, and an isometry changes neither (``geometry.isometries``). The hyperplane moves with
    the points, so it stays the model's decision boundary. Lorentz: Lorentzian centroid (paper eq. 2, equal
    weights) and boost; Poincaré: the same through the Lorentz model; sphere: normalised mean direction and
    rotation to the pole; Euclidean: mean and translation. Product embeddings are returned unchanged.

    Args:
        emb: finite embeddings.
        reference: ``(n,)`` boolean mask of the normal points (all points when none is set).
        what: the phrase ``reference_selection`` returned, for the note.
    """
    import torch

    from .geometry import isometries, lorentz

    ref = np.asarray(reference, dtype=bool)
    if ref.shape != (len(emb.points),):
        raise ConfigError(f"the reference mask has shape {ref.shape}, expected ({len(emb.points)},)")
    if not ref.any():
        ref = np.ones(len(emb.points), bool)
    if len(emb.points) == 0 or emb.manifold == "product":
        return Centred(emb, "Not centred: product embeddings do not describe their factors." if len(emb.points)
                       else "", 0.0, False)
    pts = torch.from_numpy(np.asarray(emb.points, dtype=np.float64))
    hyper, offset = emb.hyperplane, float(emb.hyperplane_offset)
    if emb.manifold in HYPERBOLIC:
        c = float(emb.curvature)
        x = lorentz.from_poincare(pts, c) if emb.manifold == "poincare" else lorentz.project(pts, c)
        m = lorentz.centroid(x[torch.from_numpy(ref)], None, c)
        shift = float(lorentz.dist0(m, c))
        boost = isometries.lorentz_boost(m, c)
        y = isometries.lorentz_apply(x, boost, c)
        moved = (lorentz.to_poincare(y, c) if emb.manifold == "poincare" else y).numpy()
        if emb.manifold == "lorentz" and hyper is not None and np.asarray(hyper).reshape(-1).shape[0] == x.shape[1] - 1:
            z2, a2 = isometries.lorentz_translate_hyperplane(
                torch.from_numpy(np.asarray(hyper, dtype=np.float64).reshape(-1)), offset, m, c)
            hyper, offset = z2.numpy(), float(a2)
        note = (f"Centre = normal tissue: the Lorentzian centroid of {what}, {shift:.2f} from the model's origin, "
                "moved there by a hyperbolic translation (an isometry: distances and sides of the hyperplane kept).")
        return Centred(_with_points(emb, moved, hyper, offset), note, shift, True)
    if emb.manifold == "sphere":
        mean = pts[torch.from_numpy(ref)].mean(0)
        moved = (pts @ isometries.sphere_rotation(mean).T).numpy()
        angle = float(torch.atan2(torch.linalg.vector_norm(mean[1:]), mean[0]))
        shift = angle / math.sqrt(emb.curvature) if emb.curvature > 0 else angle
        note = (f"Centre = normal tissue: the mean direction of {what}, turned there by a rotation of the sphere "
                "(an isometry).")
        return Centred(_with_points(emb, moved, hyper, offset), note, shift, True)
    m = pts[torch.from_numpy(ref)].mean(0)
    moved = (pts - m).numpy()
    if hyper is not None and np.asarray(hyper).reshape(-1).shape[0] == pts.shape[1]:
        offset = offset + float(np.asarray(hyper, dtype=np.float64).reshape(-1) @ m.numpy())
    note = f"Centre = normal tissue: the mean of {what} (a translation)."
    return Centred(_with_points(emb, moved, hyper, offset), note, float(torch.linalg.vector_norm(m)), True)


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


def _per_slice(v: np.ndarray, emb: Embeddings, slice_scores: Mapping[int, float] | None = None,
               ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Mean tangent vector, score and top patch centre of each slice.

    The tangent-space mean is the usual cheap stand-in for the Fréchet mean on a hyperbolic manifold: exact
    for the direction at small radii, slightly shrunk for far-out points, fine for a picture. The score is
    the slice's own from ``slice_scores`` (z → the result's slice score, the number the score curve and the
    slice table show) where given, else the highest of its patches' scores.
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
    if slice_scores is not None:
        own = np.array([slice_scores.get(int(z), np.nan) for z in uniq], dtype=np.float32)
        scores = own if scores is None else np.where(np.isfinite(own), own, scores)
    centers = np.asarray(emb.centers, dtype=np.float32)[first]
    return means, scores, uniq, centers


def _lorentz_plane_cut(z: np.ndarray, a: float, basis: np.ndarray, c: float) -> tuple[np.ndarray, float] | None:
    """The 2-D hyperplane ``(Bᵀz, a₂)`` where the Lorentz hyperplane ``(z, a)`` cuts the plane (None: it misses).

    The plane's points are ``expmap0(B u)``; on them ``<w, x>_L`` depends on ``u`` only through ``Bᵀz``, with
    ``tanh(√c a₂) = tanh(√c a) |z| / |Bᵀz|`` (no cut when that reaches 1).
    """
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    if z.shape[0] != basis.shape[0]:
        return None
    z2 = basis.T @ z
    zn, z2n = float(np.linalg.norm(z)), float(np.linalg.norm(z2))
    if zn == 0 or z2n < 1e-12 * max(zn, 1.0):
        return None
    sc = math.sqrt(c)
    t = math.tanh(sc * float(a)) * zn / z2n
    if abs(t) >= 1 - 1e-9:
        return None
    return z2, math.atanh(t) / sc


def _logcosh(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ax + np.log1p(np.exp(-2 * ax)) - math.log(2)


def geodesic_polyline(z2: np.ndarray, a2: float, c: float, scale: float = 1.0, n: int = 256) -> np.ndarray:
    """The 2-D hyperplane ``(z2, a2)`` drawn on the unit disk after scaling tangent lengths by ``scale``.

    The display map (``to_disk`` of ``scale`` × ``logmap0``) is radial, so a point of the geodesic at
    hyperbolic radius ``r`` is drawn at disk radius ``ρ = tanh(√c · scale · r / 2)`` in its own direction.
    The geodesic is sampled evenly in ``ρ`` from its closest point to 0.999 of the disk on both sides: for
    radius ``r`` its point ``t`` along the geodesic from the closest point has ``cosh(√c t) = cosh(√c r) /
    cosh(√c a2)`` (right triangle), and its direction is that of ``tanh(√c a2) ẑ ± sqrt(sech²(√c a2) −
    sech²(√c r)) ẑ⊥``, all finite for any radius. With ``scale = 1`` this is the geodesic itself.
    """
    sc = math.sqrt(c)
    zhat = np.asarray(z2, dtype=np.float64) / float(np.linalg.norm(z2))
    perp = np.array([-zhat[1], zhat[0]])
    rho0 = math.tanh(sc * scale * abs(a2) / 2)
    rho = np.linspace(rho0, 0.999, max(n // 2, 2)) if rho0 < 0.999 else np.array([0.999])
    r = np.maximum(2 * np.arctanh(rho) / (sc * scale), abs(a2))
    sech_a = math.exp(-float(_logcosh(np.array(sc * a2))))
    sech_r = np.exp(-_logcosh(sc * r))
    along = np.sqrt(np.maximum(sech_a**2 - sech_r**2, 0.0))
    half = []
    for sign in (-1.0, 1.0):
        d = math.tanh(sc * a2) * zhat[None, :] + sign * along[:, None] * perp[None, :]
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-300)
        pts = rho[:, None] * d
        half.append(pts[::-1] if sign < 0 else pts[1:])
    return np.concatenate(half)


def _euclidean_cut(w: np.ndarray, b: float, basis: np.ndarray, mean: np.ndarray, c: float) -> np.ndarray | None:
    """Where the linear boundary ``w·x + b = 0`` cuts the displayed plane, sent through the display map."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape[0] != basis.shape[0]:
        return None
    w2 = basis.T @ w
    n2 = float(w2 @ w2)
    if n2 < 1e-24:
        return None
    u0 = -(float(b) + float(w @ mean)) * w2 / n2
    reach = 2 * math.atanh(0.999) / math.sqrt(c)  # tangent radius drawn at 0.999 of the disk
    along = math.sqrt(max(reach**2 - float(u0 @ u0), 0.0))
    if along == 0.0:
        return None
    perp = np.array([-w2[1], w2[0]]) / math.sqrt(n2)
    s = np.linspace(-along, along, 256)
    return to_disk(u0[None, :] + s[:, None] * perp[None, :], c)


def classifier_plane(v: np.ndarray, normal: np.ndarray, max_fit: int = MAX_FIT,
                     seed: int = 0) -> tuple[np.ndarray, float]:
    """Directions ``(d, 2)``: the classifier's normal, then the main (uncentred) direction orthogonal to it.

    Why: after centring, the first axis is the way from normal tissue to the decision boundary, so the
    drawn boundary crosses the picture at right angles to it and "further right" means "more anomalous" to
    the model. The second axis shows the largest remaining spread. Returns the basis and the share of the
    squared norm the two keep.
    """
    import torch

    n, d = v.shape
    e1 = np.asarray(normal, dtype=np.float64).reshape(-1)
    e1 = e1 / np.linalg.norm(e1)
    sample = v if n <= max_fit else v[np.random.default_rng(seed).choice(n, max_fit, replace=False)]
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float64))
    gram = (x.T @ x).numpy()
    proj = np.eye(d) - np.outer(e1, e1)
    # torch's eigh, not numpy's: see ``principal_directions`` (numpy's took 20 ms here, torch's 1 ms)
    vals_t, vecs_t = torch.linalg.eigh(torch.from_numpy(proj @ gram @ proj))
    vals, vecs = vals_t.numpy(), vecs_t.numpy()
    e2 = vecs[:, int(np.argmax(vals))]
    e2 = e2 - (e2 @ e1) * e1
    if np.linalg.norm(e2) < 1e-12:  # one-dimensional data: any orthogonal direction
        e2 = np.zeros(d)
        e2[int(np.argmin(np.abs(e1)))] = 1.0
        e2 = e2 - (e2 @ e1) * e1
    e2 /= np.linalg.norm(e2)
    if e2[np.argmax(np.abs(e2))] < 0:
        e2 = -e2
    basis = np.stack([e1, e2], axis=1)
    total = float(np.trace(gram))
    explained = float(np.trace(basis.T @ gram @ basis) / total) if total > 0 else 1.0
    return basis, explained


def _magnification(u: np.ndarray, reference: np.ndarray | None, c: float) -> float:
    """The display scale for hyperbolic points ``u`` (2-D tangent vectors): 1 when the picture is legible.

    Legible: the 95th-percentile radius of all points lies in ``LEGIBLE`` of the disk. Otherwise tangent
    lengths are scaled so the reference points' 95th percentile sits at ``NORMAL_RADIUS``: normal tissue fills
    the middle of the disk and whatever is further from it lies between there and the rim.
    """
    if len(u) == 0:
        return 1.0
    r = np.linalg.norm(u, axis=1)
    sc = math.sqrt(c)
    if LEGIBLE[0] <= math.tanh(sc * float(np.quantile(r, 0.95)) / 2) <= LEGIBLE[1]:
        return 1.0
    ref = r[reference] if reference is not None and np.any(reference) else r
    r95 = float(np.quantile(ref, 0.95))
    if r95 <= 0:
        return 1.0
    return float(np.clip(2 * math.atanh(NORMAL_RADIUS) / (sc * r95), 1e-3, 1e4))


def _lorentz_side(v: np.ndarray, z: np.ndarray, a: float, c: float) -> np.ndarray:
    """Signed distance (positive: anomalous side) of the points ``expmap0(v)`` to the hyperplane ``(z, a)``."""
    import torch

    from .geometry import lorentz

    x = lorentz.expmap0(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)), c)
    return _lorentz_point_side(x, z, a, c)


def _lorentz_point_side(x: Any, z: np.ndarray, a: float, c: float) -> np.ndarray:
    """Signed distance (positive: anomalous side) of hyperboloid points ``x`` (a tensor) to hyperplane ``(z, a)``."""
    import torch

    from .geometry import lorentz

    zt = torch.from_numpy(np.asarray(z, dtype=np.float64).reshape(-1))
    return (lorentz.hyperplane_logit(x, zt, a, c) / torch.linalg.vector_norm(zt)).numpy()


def _validate(emb: Embeddings) -> None:
    if np.asarray(emb.points).ndim != 2:
        raise ConfigError(f"embeddings must be a (points, coordinates) array, got shape {np.shape(emb.points)}")
    if emb.manifold in HYPERBOLIC and not emb.curvature > 0:
        raise ConfigError(f"{emb.manifold} embeddings need a positive curvature, got {emb.curvature}")


def project_embeddings(emb: Embeddings, per_slice: bool = False, max_fit: int = MAX_FIT, seed: int = 0,
                       reference: np.ndarray | None = None, reference_note: str = "the reference patches",
                       plane: str = "principal", spread: bool = False,
                       slice_scores: Mapping[int, float] | None = None) -> DiskProjection:
    """Project embeddings onto the unit Poincaré disk (see the module docstring for the method).

    Args:
        emb: any detector's embeddings.
        per_slice: one point per slice (mean tangent vector of its patches) instead of one per patch.
        max_fit: at most this many points fit the directions (all are projected).
        seed: for the fitting subsample.
        reference: ``(n,)`` boolean mask of the normal patches to centre on (``reference_selection``);
            None: no centring (the detector's own origin at the centre).
        reference_note: the phrase saying which patches those are, for the note.
        plane: ``"classifier"`` (the hyperplane's normal and the main remaining direction, when there is a
            hyperplane) or ``"principal"`` (the two main directions).
        spread: scale hyperbolic pictures that would be a blob (or crowd the rim) for display; not an
            isometry, and the note says so.
        slice_scores: with ``per_slice``, each slice's score by z (the result's, as its curve shows it);
            slices missing there take their highest patch score.
    """
    import torch

    if plane not in PLANES:
        raise ConfigError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    _validate(emb)
    if emb.alternatives:  # one view is drawn (``explaining_view`` picks it); the others do not follow subsets
        emb = dataclasses.replace(emb, alternatives=())
    raw = np.asarray(emb.points)
    finite = np.isfinite(raw).all(axis=1)
    dropped = int((~finite).sum())
    if dropped:
        emb = dataclasses.replace(emb, points=raw[finite], slice_index=np.asarray(emb.slice_index)[finite],
                                  centers=np.asarray(emb.centers)[finite],
                                  scores=None if emb.scores is None else np.asarray(emb.scores)[finite])
    ref_mask = None
    centring = None
    if reference is not None:
        ref_mask = np.asarray(reference, dtype=bool).reshape(-1)
        if len(ref_mask) == len(finite):
            ref_mask = ref_mask[finite]
        centring = centre_embeddings(emb, ref_mask, reference_note)
        emb = centring.embeddings
    centred = centring is not None and centring.centred
    if centred and emb.manifold == "sphere" and emb.curvature > 0:
        from .geometry import isometries

        pts = torch.from_numpy(np.asarray(emb.points, dtype=np.float64))
        v, hyperbolic = isometries.sphere_logmap_pole(pts, emb.curvature).to(torch.float32).numpy(), False
    else:
        v, hyperbolic = tangent_vectors(emb)
    scores = None if emb.scores is None else np.asarray(emb.scores, dtype=np.float32)
    if per_slice:
        v, scores, slice_index, centers = _per_slice(v, emb, slice_scores) if len(v) else (
            v, scores, np.zeros(0, int), np.zeros((0, 2), np.float32))
        view_ref = None
    else:
        slice_index = np.asarray(emb.slice_index, dtype=int)
        centers = np.asarray(emb.centers, dtype=np.float32)
        view_ref = ref_mask
    hyper = None if emb.hyperplane is None else np.asarray(emb.hyperplane, dtype=np.float64).reshape(-1)
    has_plane = hyper is not None and emb.manifold in ("lorentz", "euclidean") and hyper.shape[0] == v.shape[1] \
        and float(np.linalg.norm(hyper)) > 0
    by_classifier = plane == "classifier" and has_plane and len(v) > 0
    if by_classifier:
        assert hyper is not None
        basis, explained = classifier_plane(v, hyper, max_fit=max_fit, seed=seed)
        mean = np.zeros(v.shape[1])
    else:
        basis, mean, explained = principal_directions(v, centre=not hyperbolic and not centred, max_fit=max_fit,
                                                      seed=seed)
    u = _apply(v, mean, basis)
    scale = 1.0
    if hyperbolic:
        c = float(emb.curvature)
        if spread:
            scale = _magnification(u, view_ref, c)
    else:
        r95 = float(np.quantile(np.linalg.norm(u, axis=1), 0.95)) if len(u) else 0.0
        c = (2 * math.atanh(DISPLAY_RADIUS) / r95) ** 2 if r95 > 0 else 1.0
    xy = to_disk(u * scale, c).astype(np.float32)
    geodesic = side = drawn = None
    if has_plane and len(v):
        assert hyper is not None
        offset = float(emb.hyperplane_offset)
        if emb.manifold == "lorentz":
            side = _lorentz_side(v, hyper, offset, c)
            cut = _lorentz_plane_cut(hyper, offset, basis, c)
            if cut is not None:
                geodesic = geodesic_polyline(cut[0], cut[1], c, scale)
                drawn = _lorentz_side(u, cut[0], cut[1], c)
        else:
            side = v.astype(np.float64) @ hyper + offset
            geodesic = _euclidean_cut(hyper, offset, basis, mean, c)
            drawn = u @ (basis.T @ hyper) + offset + float(hyper @ mean)
    kept = f"{100 * explained:.0f}%"
    what = "slice means" if per_slice else "patches"
    if by_classifier:
        axes = (f"across: the classifier's normal (right = anomalous side), up: the main other direction ({kept} of "
                "the squared radius kept)")
    else:
        axes = f"the two main directions ({kept} of the {'squared radius' if hyperbolic else 'variance'} kept)"
    if hyperbolic:
        note = (f"{emb.manifold.capitalize()} embeddings, curvature −{c:.3g}, {len(xy)} {what}: log map at the "
                f"{'centre' if centred else 'origin'}, {axes}, exp map.")
        if scale != 1.0:
            note += (f" Distances from the centre ×{scale:.3g} for display: not an isometry (their order and the "
                     "sides of the line are kept).")
        if emb.hyperplane is not None:
            note += (" Dashed line: where the classifier hyperplane cuts this plane." if geodesic is not None
                     else " The classifier hyperplane does not cross this plane.")
    else:
        note = (f"{emb.manifold.capitalize()} features, not hyperbolic embeddings ({len(xy)} {what}): shown as "
                f"tangent vectors ({'at the normal centre' if centred else 'centred'}, {axes}) mapped onto the "
                "disk for display only; distances on the disk are not the detector's.")
    if centring is not None and centring.note:
        note = f"{centring.note} {note}"
    if dropped:
        note += f" {dropped} non-finite embedding(s) left out."
    return DiskProjection(xy=xy, scores=scores, slice_index=np.asarray(slice_index, dtype=int),
                          centers=np.asarray(centers, dtype=np.float32),
                          geodesic=None if geodesic is None else geodesic.astype(np.float32), note=note,
                          curvature=c, basis=basis, explained=explained, per_slice=per_slice, side=side,
                          drawn_side=drawn, centring=centring.note if centring is not None else "", scale=scale,
                          hyperplane_of=emb.hyperplane_of,
                          finite=finite)


def hyperplane_side(emb: Embeddings) -> np.ndarray | None:
    """Each point's signed distance to ``emb``'s hyperplane in its own dimensions (positive: anomalous side)."""
    if emb.hyperplane is None or emb.manifold not in ("lorentz", "euclidean"):
        return None
    points = np.asarray(emb.points, dtype=np.float64)
    hyper = np.asarray(emb.hyperplane, dtype=np.float64).reshape(-1)
    # a Lorentz hyperplane's normal is a tangent vector at the origin: no time coordinate
    space = points.shape[1] - (emb.manifold == "lorentz")
    if points.ndim != 2 or hyper.shape[0] != space or not float(np.linalg.norm(hyper)) > 0:
        return None
    if emb.manifold == "euclidean":
        return points @ hyper + float(emb.hyperplane_offset)
    import torch

    return _lorentz_point_side(torch.from_numpy(points), hyper, float(emb.hyperplane_offset), float(emb.curvature))


def explaining_view(emb: Embeddings, flagged: np.ndarray | None) -> Embeddings:
    """Of a detector's views (``emb`` and its ``alternatives``: the Lorentz heads), the one to draw.

    The heatmap averages several heads, and each has its own embedding and hyperplane; the disk can draw one.
    It draws the head whose hyperplane holds the most of the result's flagged patches on its anomalous side
    (ties: the first), which explains the mask the user sees best. Only the result's own mask decides, never a
    reference lesion. On brain1 (Lorentz, seed 0) the heads held 30, 22 and 49 of the 50 flagged patches, and
    the third head also 51 of the 83 reference-lesion patches against 26 for the first (which was drawn before).
    Without flagged patches (an uncalibrated model, nothing flagged) the first view stays.
    """
    views = [emb, *emb.alternatives]
    if len(views) == 1 or flagged is None:
        return dataclasses.replace(emb, alternatives=())
    mask = np.asarray(flagged, dtype=bool).reshape(-1)
    if len(mask) != len(emb.points) or not mask.any():
        return dataclasses.replace(emb, alternatives=())
    held = []
    for view in views:
        side = hyperplane_side(view)
        held.append(-1 if side is None else int((side[mask] > 0).sum()))
    k = int(np.argmax(held))
    chosen = views[k]
    note = (f"head {k + 1} of {len(views)}, the one whose hyperplane holds the most of the {int(mask.sum())} "
            f"flagged patches ({held[k]}; the others {', '.join(str(h) for i, h in enumerate(held) if i != k)}); "
            f"the heatmap averages all {len(views)}")
    return dataclasses.replace(chosen, hyperplane_of=note, alternatives=())


def disk_views(emb: Embeddings, reference: np.ndarray | None, reference_note: str,
               seed: int = 0, flagged: np.ndarray | None = None,
               slice_scores: Mapping[int, float] | None = None) -> tuple[DiskProjection, DiskProjection]:
    """The viewer's two pictures (patches, slice means): centred on ``reference``, classifier plane, spread.

    ``flagged``: per patch, whether its centre lies in the result's mask; with several views (heads) it picks
    the one drawn (``explaining_view``). ``slice_scores``: z → the result's slice score, the value of each
    slice-mean point (else its highest patch value, which can differ from the curve's in the third decimal).
    One entry point for the dock and for ``bench/check_poincare_brain1.py``, so what is measured is what the
    user sees.
    """
    emb = explaining_view(emb, flagged)
    kw = {"reference": reference, "reference_note": reference_note, "plane": "classifier", "spread": True,
          "seed": seed}
    return (project_embeddings(emb, per_slice=False, **kw),
            project_embeddings(emb, per_slice=True, slice_scores=slice_scores, **kw))
