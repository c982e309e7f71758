"""The Poincaré ball model of hyperbolic space, as plain functions of tensors.

Convention: ``c > 0`` is the curvature magnitude; the ball ``{x : |x| < 1/sqrt(c)}`` has sectional
curvature ``-c`` (curved-geometric-networks §III-C writes it with ``kappa = -c``). The ball is what the
viewer draws (a 2-D disk) and what the curved-geometry networks of the second paper work in.

Every ``atanh`` argument is kept below ``1 - eps`` (float32: 4e-3, float64: 1e-5, geoopt's values), and
results are projected strictly inside the ball; the maps are written with ``tanh(t)/t``-style helpers so
values and gradients are finite at the origin.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _numerics as nx


def _atanh_over(t: Tensor) -> Tensor:
    """``atanh(min(t, 1 - eps)) / t`` for ``t >= 0``: the clamp-aware ``atanh(t)/t``."""
    limit = 1.0 - nx.boundary_eps(t.dtype)
    return nx.atanhc(torch.clamp_max(t, limit)) * torch.clamp_max(limit / t, 1.0)


def lambda_x(x: Tensor, c: float | Tensor, keepdim: bool = True) -> Tensor:
    """Conformal factor ``2 / (1 - c |x|^2)``: how much the metric magnifies Euclidean lengths at ``x``."""
    cc = nx.as_curvature(c, x)
    return 2 / torch.clamp_min(1 - cc * (x * x).sum(-1, keepdim=keepdim), nx.MIN_NORM)


def mobius_add(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Möbius addition ``x ⊕_c y`` (curved-geometric-networks eq. 5), broadcasting over leading axes."""
    cc = nx.as_curvature(c, x)
    xy = (x * y).sum(-1, keepdim=True)
    x2 = (x * x).sum(-1, keepdim=True)
    y2 = (y * y).sum(-1, keepdim=True)
    num = (1 + 2 * cc * xy + cc * y2) * x + (1 - cc * x2) * y
    den = 1 + 2 * cc * xy + cc * cc * x2 * y2
    return num / torch.clamp_min(den, nx.MIN_NORM)


def project(x: Tensor, c: float | Tensor) -> Tensor:
    """Pull points at or beyond the edge back to radius ``(1 - eps)/sqrt(c)``; inner points are unchanged."""
    cc = nx.as_curvature(c, x)
    max_norm = (1 - nx.boundary_eps(x.dtype)) / torch.sqrt(cc)
    n = nx.norm(x)
    return torch.where(n > max_norm, x / n * max_norm, x)


def clip_features(x: Tensor, xi: float | None = None, c: float | Tensor = 1.0) -> Tensor:
    """Embed Euclidean features in the ball by clipping their norm (curved-geometric-networks eq. 4).

    Eq. 4 keeps ``x`` when ``|x| <= 1/|kappa|`` and otherwise rescales it to ``(1 - xi)/|kappa|``. Two
    deliberate differences: the radius is the ball's true radius ``1/sqrt(c)`` (eq. 4's ``1/|kappa|`` only
    agrees at ``c = 1``), and every norm above ``(1 - xi)/sqrt(c)`` is clipped, so the map is continuous and
    never returns a point on the edge itself.

    Args:
        x: Euclidean features ``(..., d)``.
        xi: relative margin from the edge; ``None`` uses the dtype's boundary epsilon (float32 4e-3).
        c: curvature magnitude.
    """
    cc = nx.as_curvature(c, x)
    xi = nx.boundary_eps(x.dtype) if xi is None else xi
    if not 0 < xi < 1:
        raise ValueError(f"clip_features: xi must be in (0, 1), got {xi}")
    return x * torch.clamp_max((1 - xi) / (torch.sqrt(cc) * nx.norm(x)), 1.0)


def expmap0(v: Tensor, c: float | Tensor) -> Tensor:
    """Exponential map at the origin: ``tanh(sqrt(c)|v|) v / (sqrt(c)|v|)``."""
    cc = nx.as_curvature(c, v)
    return project(nx.tanhc(torch.sqrt(cc) * nx.norm(v)) * v, cc)


def logmap0(y: Tensor, c: float | Tensor) -> Tensor:
    """Logarithmic map at the origin: ``atanh(sqrt(c)|y|) y / (sqrt(c)|y|)``; inverse of ``expmap0``."""
    cc = nx.as_curvature(c, y)
    return _atanh_over(torch.sqrt(cc) * nx.norm(y)) * y


def expmap(x: Tensor, v: Tensor, c: float | Tensor) -> Tensor:
    """Exponential map at ``x``: ``x ⊕ tanh(sqrt(c) λ_x |v| / 2) v / (sqrt(c)|v|)``."""
    cc = nx.as_curvature(c, x)
    lam = lambda_x(x, cc)
    second = nx.tanhc(torch.sqrt(cc) * lam * nx.norm(v) / 2) * (lam / 2) * v
    return project(mobius_add(x, second, cc), cc)


def logmap(x: Tensor, y: Tensor, c: float | Tensor) -> Tensor:
    """Logarithmic map at ``x``: ``2/(sqrt(c) λ_x) atanh(sqrt(c)|u|) u/|u|`` with ``u = (-x) ⊕ y``."""
    cc = nx.as_curvature(c, x)
    u = mobius_add(-x, y, cc)
    return (2 / lambda_x(x, cc)) * _atanh_over(torch.sqrt(cc) * nx.norm(u)) * u


def dist(x: Tensor, y: Tensor, c: float | Tensor, keepdim: bool = False) -> Tensor:
    """Geodesic distance ``2/sqrt(c) atanh(sqrt(c) |(-x) ⊕ y|)``.

    Curved-geometric-networks eq. 6 prints ``x ⊕ y``; the distance needs the Möbius difference
    ``(-x) ⊕ y`` (Ganea et al.), otherwise ``dist(x, x)`` would not be 0.
    """
    cc = nx.as_curvature(c, x)
    n = nx.norm(mobius_add(-x, y, cc), keepdim=keepdim)
    return 2 * n * _atanh_over(torch.sqrt(cc) * n)


def dist0(x: Tensor, c: float | Tensor, keepdim: bool = False) -> Tensor:
    """Distance to the origin, ``2/sqrt(c) atanh(sqrt(c)|x|)``."""
    cc = nx.as_curvature(c, x)
    n = nx.norm(x, keepdim=keepdim)
    return 2 * n * _atanh_over(torch.sqrt(cc) * n)


def mobius_matvec(m: Tensor, x: Tensor, c: float | Tensor) -> Tensor:
    """Möbius matrix-vector product (curved-geometric-networks eq. 7); ``m`` is like ``nn.Linear.weight``.

    ``(1/sqrt(c)) tanh(|Mx|/|x| atanh(sqrt(c)|x|)) Mx/|Mx|``, rewritten as
    ``tanhc(t) * atanhc(sqrt(c)|x|) * Mx`` with ``t = sqrt(c)|Mx| atanhc(sqrt(c)|x|)`` so that neither
    ``x = 0`` nor ``Mx = 0`` divides by zero. It tends to ``Mx`` as ``c → 0``.
    """
    cc = nx.as_curvature(c, x)
    sc = torch.sqrt(cc)
    mx = x @ m.transpose(-1, -2)
    a = _atanh_over(sc * nx.norm(x))
    t = sc * nx.norm(mx) * a
    return project(nx.tanhc(t) * a * mx, cc)


def mlr(x: Tensor, a: Tensor, p: Tensor, c: float | Tensor) -> Tensor:
    """Hyperbolic multinomial logistic regression logits (curved-geometric-networks eq. 8, Ganea et al.).

    ``logit_k = λ_{p_k} |a_k| / sqrt(c) * asinh(2 sqrt(c) <u_k, a_k> / ((1 - c|u_k|^2) |a_k|))`` with
    ``u_k = (-p_k) ⊕ x``. Eq. 8 prints the conformal factor at ``x``; Ganea et al.'s derivation (the cited
    source) has it at ``p_k``, which is what makes the logit the signed distance to the hyperplane times
    ``λ_{p_k}|a_k|``. As ``c → 0`` the logit tends to ``4 <x - p_k, a_k>`` (Euclidean MLR).

    Args:
        x: points ``(..., d)`` in the ball.
        a: hyperplane normals ``(K, d)`` (tangent vectors at ``p_k``).
        p: hyperplane offsets ``(K, d)``, points in the ball.
        c: curvature magnitude.

    Returns:
        Logits ``(..., K)``.
    """
    cc = nx.as_curvature(c, x)
    u = mobius_add(-p, x.unsqueeze(-2), cc)  # (..., K, d)
    lam_p = lambda_x(p, cc, keepdim=False)  # (K,)
    an = nx.norm(a, keepdim=False)  # (K,)
    den = torch.clamp_min(1 - cc * (u * u).sum(-1), nx.MIN_NORM)
    s = 2 * (u * a).sum(-1) / den  # Euclidean-limit term, ``2 <u, a> / (1 - c|u|^2)``
    return lam_p * s * nx.asinhc(torch.sqrt(cc) * s / an)


def check_point_on_manifold(
    x: Tensor, c: float | Tensor, explain: bool = False, atol: float = 0.0
) -> bool | tuple[bool, str | None]:
    """Whether every row of ``x`` is finite and strictly inside the ball (``sqrt(c)|x| < 1 + atol``).

    Returns:
        ``ok``, or ``(ok, reason)`` with ``explain=True``.
    """
    with torch.no_grad():
        reason: str | None = None
        cc = nx.as_curvature(c, x).detach()
        if not torch.isfinite(x).all():
            reason = "non-finite coordinates"
        else:
            r = torch.sqrt(cc) * torch.linalg.vector_norm(x, dim=-1)
            if (r >= 1 + atol).any():
                reason = f"point outside the ball: sqrt(c)|x| up to {float(r.max()):.6g}"
        ok = reason is None
        return (ok, reason) if explain else ok
