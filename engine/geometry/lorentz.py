"""The Lorentz (hyperboloid) model of hyperbolic space, as plain functions of tensors.

Convention: ``c > 0`` is the curvature magnitude; the space has sectional curvature ``-c`` and is the upper
sheet ``{x : <x, x>_L = -1/c, x_0 > 0}`` of Minkowski space with ``<x, y>_L = -x_0 y_0 + x_s . y_s``
(lorentz-hyperbolic-anomaly-detection §2.3). Points are ``(..., d + 1)`` tensors with the time coordinate
FIRST; tangent vectors at the origin ``O = (1/sqrt(c), 0)`` are given by their ``(..., d)`` spatial part.

We use the Lorentz model for the detector because its distances and exponential map need no boundary clamp
(unlike the Poincaré ball, whose float32 edge sits at radius ~6). The price is that coordinates grow like
``exp(sqrt(c) * radius)``, so ``cosh``/``sinh`` arguments are clamped per dtype (see ``_numerics``) and
callers should keep Euclidean features moderate (``clip_tangent``) before ``expmap0``.

Formulas avoid ``acosh`` (infinite slope at distance 0, cancellation near the diagonal): distances use the
Minkowski chord, ``d = 2/sqrt(c) * asinh(sqrt(c)/2 * ||x - y||_L)``, and the maps use ``sinh(t)/t``-style
helpers with a series near 0, so values and gradients are finite at the origin.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from . import _numerics as nx
from . import poincare


def inner(x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
    """Minkowski inner product ``-x_0 y_0 + x_s . y_s`` over the last axis (broadcasting)."""
    prod = x * y
    res = prod.narrow(-1, 1, prod.shape[-1] - 1).sum(-1) - prod[..., 0]
    return res.unsqueeze(-1) if keepdim else res


def origin(
    d: int, c: float | Tensor, dtype: torch.dtype | None = None, device: torch.device | None = None
) -> Tensor:
    """The origin ``(1/sqrt(c), 0, ..., 0)`` of the ``d``-dimensional hyperboloid, shape ``(d + 1,)``."""
    o = torch.zeros(d + 1, dtype=dtype, device=device)
    cc = nx.as_curvature(c, o)
    return torch.cat([torch.rsqrt(cc).reshape(1), o[1:]])


def from_spatial(xs: Tensor, c: float | Tensor) -> Tensor:
    """Lift spatial coordinates ``(..., d)`` onto the hyperboloid by solving for the time coordinate.

    Every point's spatial part determines it uniquely, which is what lets layers produce any spatial vector
    and still land exactly on the manifold (no tangent-space round trip).
    """
    cc = nx.as_curvature(c, xs)
    x0 = torch.sqrt(1.0 / cc + (xs * xs).sum(-1, keepdim=True))
    return torch.cat([x0, xs], dim=-1)


def project(x: Tensor, c: float | Tensor) -> Tensor:
    """Put ``(..., d + 1)`` back on the hyperboloid: recompute the time coordinate from the spatial part."""
    return from_spatial(x[..., 1:], c)


def proju(x: Tensor, u: Tensor, c: float | Tensor) -> Tensor:
    """Project an ambient vector ``u`` onto the tangent space at ``x`` (``<x, result>_L = 0``)."""
    cc = nx.as_curvature(c, x)
    return u + cc * inner(x, u, keepdim=True) * x


def _clamped(theta: Tensor) -> tuple[Tensor, Tensor]:
    """``min(theta, max_arg)`` and the factor ``min(1, max_arg / theta)`` that rescales the vector with it."""
    limit = nx.max_arg(theta.dtype)
    return torch.clamp_max(theta, limit), torch.clamp_max(limit / theta, 1.0)


def expmap0(v: Tensor, c: float | Tensor) -> Tensor:
    """Exponential map at the origin (paper eq. 1): tangent ``(..., d)`` → point ``(..., d + 1)``.

    ``sqrt(c) * |v|`` is clamped to the dtype's ``max_arg`` (20 in float32) so ``cosh`` cannot overflow;
    beyond it the point stops moving outwards (its direction still follows ``v``).
    """
    cc = nx.as_curvature(c, v)
    sc = torch.sqrt(cc)
    theta, ratio = _clamped(sc * nx.norm(v))
    xs = nx.sinhc(theta) * ratio * v
    return torch.cat([torch.cosh(theta) / sc, xs], dim=-1)


def logmap0(x: Tensor, c: float | Tensor) -> Tensor:
    """Logarithmic map at the origin: point ``(..., d + 1)`` → tangent ``(..., d)``; inverse of ``expmap0``.

    Uses only the spatial part (``sinh(sqrt(c) r) = sqrt(c) |x_s|`` on the manifold), which is exact near the
    origin where ``acosh(sqrt(c) x_0)`` would lose half the digits.
    """
    cc = nx.as_curvature(c, x)
    xs = x[..., 1:]
    return nx.asinhc(torch.sqrt(cc) * nx.norm(xs)) * xs


def expmap(x: Tensor, u: Tensor, c: float | Tensor) -> Tensor:
    """Exponential map at ``x`` of the ambient tangent vector ``u`` (``(..., d + 1)``, ``<x, u>_L = 0``)."""
    cc = nx.as_curvature(c, x)
    nu = torch.sqrt(torch.clamp_min(inner(u, u, keepdim=True), nx.MIN_NORM**2))
    theta, ratio = _clamped(torch.sqrt(cc) * nu)
    return project(torch.cosh(theta) * x + nx.sinhc(theta) * ratio * u, cc)


def logmap(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Logarithmic map at ``x`` of ``y``: the ambient tangent vector at ``x`` of length ``dist(x, y)``."""
    cc = nx.as_curvature(c, x)
    d = dist(x, y, cc, keepdim=True)
    u = y + cc * inner(x, y, keepdim=True) * x  # tangent, Minkowski length sinh(sqrt(c) d) / sqrt(c)
    theta = torch.clamp_max(torch.sqrt(cc) * d, nx.max_arg(x.dtype))
    return u / nx.sinhc(theta)


def dist(x: Tensor, y: Tensor, c: float | Tensor, keepdim: bool = False) -> Tensor:
    """Geodesic distance ``acosh(-c <x, y>_L) / sqrt(c)``, computed from the Minkowski chord for precision."""
    cc = nx.as_curvature(c, x)
    diff = x - y
    chord = torch.sqrt(torch.clamp_min(inner(diff, diff, keepdim=keepdim), nx.MIN_NORM**2))
    return chord * nx.asinhc(torch.sqrt(cc) * chord / 2)


def dist0(x: Tensor, c: float | Tensor, keepdim: bool = False) -> Tensor:
    """Distance of ``x`` to the origin (its hyperbolic radius)."""
    cc = nx.as_curvature(c, x)
    n = nx.norm(x[..., 1:], keepdim=keepdim)
    return n * nx.asinhc(torch.sqrt(cc) * n)


def clip_tangent(v: Tensor, max_norm: float) -> Tensor:
    """Scale tangent vectors longer than ``max_norm`` down to it ("clipped" hyperbolic features).

    Feature norms of a CNN can be tens; mapped as is, they sit exponentially far out where float32 has no
    resolution left. Clipping before ``expmap0`` keeps them where the geometry is still informative.
    """
    return v * torch.clamp_max(max_norm / nx.norm(v), 1.0)


def centroid(x: Tensor, w: Tensor | None, c: float | Tensor, dim: int = -2, keepdim: bool = False) -> Tensor:
    """Weighted Lorentzian centroid (paper eq. 2): the normalised weighted sum of points along ``dim``.

    Args:
        x: points ``(..., n, ..., d + 1)``; ``dim`` indexes the points being averaged (not the last axis).
        w: non-negative weights broadcastable to ``x.shape[:-1]`` (e.g. ``(..., n)`` for ``dim=-2``), or
            ``None`` for equal weights. Negative weights can leave the upper sheet: not supported.
        c: curvature magnitude.
        dim: axis of ``x`` holding the points.
        keepdim: keep the reduced axis.

    Returns:
        The centroid on the hyperboloid. Eq. 2 prints the normalisation as ``sqrt(c) z' / |||z'||_L|``, which
        is Law et al.'s formula with their ``beta`` = our ``1/c``; we divide by ``sqrt(c) |||z'||_L|`` so the
        result satisfies ``<z, z>_L = -1/c``. All-zero weights give the origin instead of NaN.
    """
    if dim % x.ndim == x.ndim - 1:
        raise ValueError("centroid: dim must index the points, not the coordinates (last axis)")
    cc = nx.as_curvature(c, x)
    summed = (
        x.sum(dim=dim, keepdim=keepdim) if w is None else (w.unsqueeze(-1) * x).sum(dim=dim, keepdim=keepdim)
    )
    lnorm = torch.sqrt(torch.clamp_min(-inner(summed, summed, keepdim=True), nx.MIN_NORM**2))
    return project(summed / (torch.sqrt(cc) * lnorm), cc)


def _hyperplane_parts(z: Tensor, a: Tensor | float, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``sinh(sqrt(c) a)``, ``cosh(sqrt(c) a)``, unit ``z`` and ``|z|`` with the hyperplane axis kept."""
    if z.ndim not in (1, 2):
        raise ValueError(f"hyperplane normal z must be (d,) or (K, d), got shape {tuple(z.shape)}")
    a = torch.as_tensor(a, dtype=z.dtype, device=z.device)
    limit = nx.max_arg(z.dtype)
    sa = torch.clamp(torch.sqrt(c) * a, -limit, limit)
    zn = nx.norm(z)
    return torch.sinh(sa), torch.cosh(sa), z / zn, zn.squeeze(-1)


def hyperplane_normal(z: Tensor, a: Tensor | float, c: float | Tensor) -> Tensor:
    """The Minkowski normal ``w = (sinh(sqrt(c) a) |z|, cosh(sqrt(c) a) z)`` of the hyperplane ``(z, a)``.

    Parametrisation of Bdeir et al.'s LorentzMLR: ``z`` (``(d,)`` or ``(K, d)``) is the normal at the origin
    and ``a`` the signed distance from the origin to the hyperplane along ``z``; ``w`` is ``z`` carried to
    the hyperplane's closest point ``expmap0(a z/|z|)``, so ``|w|_L = |z|`` and ``H_w = {y: <w, y>_L = 0}``
    (eq. 3). Any ``(z, a)`` gives a valid hyperplane, so plain Adam can train it.
    """
    cc = nx.as_curvature(c, z)
    sh, ch, _, zn = _hyperplane_parts(z, a, cc)
    return torch.cat([(sh * zn).unsqueeze(-1), ch.unsqueeze(-1) * z], dim=-1)


def hyperplane_point(z: Tensor, a: Tensor | float, c: float | Tensor) -> Tensor:
    """The hyperplane's point closest to the origin, ``expmap0(a z / |z|)``."""
    a = torch.as_tensor(a, dtype=z.dtype, device=z.device)
    return expmap0(a.unsqueeze(-1) * z / nx.norm(z), c)


def _unit_inner(x: Tensor, z: Tensor, a: Tensor | float, c: Tensor) -> tuple[Tensor, Tensor]:
    """``<w, x>_L / |w|_L`` shaped ``(...)`` for one hyperplane or ``(..., K)`` for K, and ``|w|_L``."""
    sh, ch, zhat, zn = _hyperplane_parts(z, a, c)
    xs = x[..., 1:]
    if z.ndim == 1:
        proj, x0 = (xs * zhat).sum(-1), x[..., 0]
    else:
        proj, x0 = xs @ zhat.transpose(0, 1), x[..., :1]
    return ch * proj - sh * x0, zn


def hyperplane_distance(x: Tensor, z: Tensor, a: Tensor | float, c: float | Tensor) -> Tensor:
    """Distance of points ``(..., d + 1)`` to the hyperplane(s) ``(z, a)`` (paper eq. 4).

    ``(1/sqrt(c)) |asinh(sqrt(c) <w, x>_L / |w|_L)|``; shape ``(...)`` for ``z`` of shape ``(d,)``, else
    ``(..., K)``.
    """
    cc = nx.as_curvature(c, x)
    s, _ = _unit_inner(x, z, a, cc)
    return (s * nx.asinhc(torch.sqrt(cc) * s)).abs()


def hyperplane_logit(x: Tensor, z: Tensor, a: Tensor | float, c: float | Tensor) -> Tensor:
    """The classifier logit of eq. 5: ``sign(<w, x>_L) |w|_L d_L(x, H_w)``.

    Positive on the side ``w`` points to. The paper reads ``[1 + exp(l)]^-1`` as the anomaly probability
    (anomalies on the negative side); training with ``BCEWithLogits(l, is_anomalous)`` instead puts them on
    the positive side. Both are the same model: ``(z, a) → (-z, -a)`` flips the sign of ``l``.
    """
    cc = nx.as_curvature(c, x)
    s, zn = _unit_inner(x, z, a, cc)
    return zn * s * nx.asinhc(torch.sqrt(cc) * s)


def to_poincare(x: Tensor, c: float | Tensor) -> Tensor:
    """Isometry onto the Poincaré ball of radius ``1/sqrt(c)``: ``x_s / (1 + sqrt(c) x_0)``.

    Not clamped: in float32, points beyond hyperbolic radius ~17/sqrt(c) land on the ball's edge
    (``sqrt(c) |p|`` rounds to 1); the ``poincare`` functions clamp such points themselves.
    """
    cc = nx.as_curvature(c, x)
    return x[..., 1:] / (1 + torch.sqrt(cc) * x[..., :1])


def from_poincare(p: Tensor, c: float | Tensor) -> Tensor:
    """Inverse of ``to_poincare``; points on the ball's edge are pulled inside (``poincare.project``)."""
    cc = nx.as_curvature(c, p)
    p = poincare.project(p, cc)
    p2 = (p * p).sum(-1, keepdim=True)
    den = torch.clamp_min(1 - cc * p2, nx.MIN_NORM)
    return torch.cat([(1 + cc * p2) / (torch.sqrt(cc) * den), 2 * p / den], dim=-1)


class PoincareGeodesic(NamedTuple):
    """A Lorentz hyperplane seen in the Poincaré ball: a sphere orthogonal to the edge, or a flat diameter.

    Attributes:
        center: the sphere's centre ``(d,)`` (outside the ball), or ``None`` when the hyperplane passes
            through the origin and is the flat hyperplane ``{q : q . normal = 0}``.
        radius: the sphere's radius (``inf`` for the flat case).
        normal: unit ``z``: the direction from the origin towards the hyperplane's closest point.
        closest: that closest point in the ball, ``normal * tanh(sqrt(c) a / 2) / sqrt(c)``.
    """

    center: Tensor | None
    radius: float
    normal: Tensor
    closest: Tensor


def hyperplane_to_poincare_geodesic(z: Tensor, a: Tensor | float, c: float | Tensor) -> PoincareGeodesic:
    """Where the hyperplane ``(z, a)`` (one, ``z`` of shape ``(d,)``) lies in the Poincaré ball.

    Hyperplanes of the ball are spheres orthogonal to its edge: with ``R = 1/sqrt(c)`` and ``r`` the signed
    Euclidean radius of the closest point, the centre is at ``(R^2 + r^2) / (2r)`` along ``z`` and the radius
    is ``|R^2 - r^2| / (2|r|)``. On the 2-D disk that is the circle arc the viewer draws as the decision
    boundary (or see ``hyperplane_geodesic_points`` for a ready polyline).
    """
    if z.ndim != 1:
        raise ValueError(
            f"hyperplane_to_poincare_geodesic takes one hyperplane, z of shape (d,), got {tuple(z.shape)}"
        )
    with torch.no_grad():
        z64 = z.detach().to(torch.float64)
        cc = float(nx.as_curvature(c, z64))
        a = float(a.detach()) if isinstance(a, Tensor) else float(a)
        normal = z64 / nx.norm(z64)
        r = math.tanh(math.sqrt(cc) * a / 2) / math.sqrt(cc)
        closest = (normal * r).to(z.dtype)
        if abs(r) * math.sqrt(cc) < 1e-9:
            return PoincareGeodesic(None, math.inf, normal.to(z.dtype), closest)
        big = 1 / cc
        center = normal * ((big + r * r) / (2 * r))
        return PoincareGeodesic(
            center.to(z.dtype), abs(big - r * r) / (2 * abs(r)), normal.to(z.dtype), closest
        )


def hyperplane_geodesic_points(z: Tensor, a: Tensor | float, c: float | Tensor, n: int = 256) -> Tensor:
    """Points ``(n, 2)`` along the hyperplane ``(z, a)`` of a 2-D Lorentz model, in Poincaré coordinates.

    Walks the geodesic through the hyperplane's closest point perpendicular to ``z`` (which is the whole
    hyperplane in 2-D), spaced evenly in Poincaré radius out to 0.999 of the edge: a polyline to draw.
    """
    if z.shape != (2,):
        raise ValueError(
            f"hyperplane_geodesic_points needs a 2-D hyperplane, z of shape (2,), got {tuple(z.shape)}"
        )
    with torch.no_grad():
        z64 = z.detach().to(torch.float64)
        cc = nx.as_curvature(c, z64).detach()
        sc = torch.sqrt(cc)
        p = hyperplane_point(
            z64,
            torch.as_tensor(a.detach() if isinstance(a, Tensor) else a, dtype=torch.float64, device=z.device),
            cc,
        )
        zhat = z64 / nx.norm(z64)
        tangent = torch.cat([zhat.new_zeros(1), torch.stack([-zhat[1], zhat[0]])])
        u = torch.linspace(-0.999, 0.999, n, dtype=torch.float64, device=z.device)
        t = (2 / sc) * torch.atanh(u).unsqueeze(-1)
        pts = torch.cosh(sc * t) * p + torch.sinh(sc * t) / sc * tangent
        return to_poincare(pts, cc).to(z.dtype)


def check_point_on_manifold(
    x: Tensor,
    c: float | Tensor,
    explain: bool = False,
    atol: float = 0.0,
    rtol: float | None = None,
) -> bool | tuple[bool, str | None]:
    """Whether every row of ``x`` is on the hyperboloid: finite, ``x_0 > 0``, ``<x, x>_L ≈ -1/c``.

    The tolerance is ``atol + rtol * |x|^2`` (Euclidean): rounding in ``<x, x>_L`` grows with the squared
    coordinates, so a fixed absolute tolerance would reject every far point in float32.

    Returns:
        ``ok``, or ``(ok, reason)`` with ``explain=True`` (``reason`` is ``None`` when ok), like geoopt.
    """
    with torch.no_grad():
        reason: str | None = None
        cc = nx.as_curvature(c, x).detach()
        rtol = nx.check_rtol(x.dtype) if rtol is None else rtol
        if x.shape[-1] < 2:
            reason = f"last axis must hold time + at least one spatial coordinate, got {x.shape[-1]}"
        elif not torch.isfinite(x).all():
            reason = "non-finite coordinates"
        elif (x[..., 0] <= 0).any():
            reason = "time coordinate x_0 <= 0 (lower sheet or not a point)"
        else:
            err = (inner(x, x) + 1 / cc).abs()
            tol = atol + rtol * (x * x).sum(-1)
            if (err > tol).any():
                worst = int(torch.argmax(err - tol))
                reason = (
                    f"<x, x>_L differs from -1/c by {float(err.flatten()[worst]):.3g} "
                    f"(tolerance there {float(tol.flatten()[worst]):.3g})"
                )
        ok = reason is None
        return (ok, reason) if explain else ok
