"""Isometries that carry a chosen point to the origin: centring a picture without distorting it.

The Poincaré-disk view puts the manifold's origin at the centre of the disk. The origin of a trained
detector's embedding space means little to a reader (brain1's Lorentz patches all sit ~2 hyperbolic units
from it, a blob near the rim), while "how far from normal tissue, and on which side of the classifier" is
what explains the model. So the view first moves the centroid of the normal patches to the origin with an
isometry of the manifold: every pairwise distance, and every point's signed distance to the classifier's
hyperplane (moved by the same map), stays what it was; only the vantage point changes.

* Lorentz model: the boost along the geodesic from the centre ``m`` to the origin (a hyperbolic
  translation, no rotation). It is linear on Minkowski space, so it moves the hyperplane's Minkowski
  normal ``w`` exactly like a point and ``<Lw, Lx>_L = <w, x>_L``.
* Poincaré ball: the same boost, through the Lorentz model (``lorentz.from_poincare``/``to_poincare`` are
  isometries), which is the Möbius translation ``x ↦ (−m) ⊕ x``.
* Sphere: the rotation in the plane of the centre's direction and the pole that carries one to the other
  (identity on the rest).
* Euclidean space: the translation by ``−m``; a hyperplane ``w·x + b = 0`` becomes ``w·x + (b + w·m) = 0``.

Everything works in the dtype it is given; tests use float64 (distances kept to ~1e-12 relative).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _numerics as nx
from . import lorentz


def lorentz_boost(m: Tensor, c: float | Tensor) -> Tensor:
    """The ``(d + 1, d + 1)`` Lorentz boost ``L`` with ``L m = origin`` (a hyperbolic translation).

    On the unit hyperboloid (coordinates times ``sqrt(c)``; ``L`` is the same matrix for every ``c``), with
    ``m = (m_0, m_s)``::

        L = [[ m_0,   -m_sᵀ                       ],
             [ -m_s,  I + m_s m_sᵀ / (1 + m_0)    ]]

    ``L`` is symmetric and Minkowski-orthogonal (``Lᵀ J L = J``), so it preserves the Lorentz inner product,
    hence distances, and keeps the upper sheet. Written with ``1 + m_0`` (never ``|m_s|``) it is exact at
    ``m = origin`` (the identity) with no division by zero. Its inverse is the boost towards ``-m_s``.

    Args:
        m: a point of the hyperboloid ``(d + 1,)``; it is put back on the manifold first.
        c: curvature magnitude.
    """
    if m.ndim != 1 or m.shape[0] < 2:
        raise ValueError(f"lorentz_boost takes one point of shape (d + 1,), got {tuple(m.shape)}")
    cc = nx.as_curvature(c, m)
    mt = lorentz.project(m, cc) * torch.sqrt(cc)
    m0, ms = mt[0], mt[1:]
    eye = torch.eye(ms.shape[0], dtype=m.dtype, device=m.device)
    top = torch.cat([m0.reshape(1), -ms]).unsqueeze(0)
    rest = torch.cat([-ms.unsqueeze(1), eye + torch.outer(ms, ms) / (1 + m0)], dim=1)
    return torch.cat([top, rest], dim=0)


def lorentz_apply(x: Tensor, boost: Tensor, c: float | Tensor) -> Tensor:
    """Apply a boost to points ``(..., d + 1)``, then recompute the time coordinate (rounding off the sheet)."""
    return lorentz.project(x @ boost.transpose(0, 1), c)


def lorentz_translate(x: Tensor, m: Tensor, c: float | Tensor) -> Tensor:
    """Points ``x`` ``(..., d + 1)`` moved by the isometry that takes ``m`` to the origin."""
    return lorentz_apply(x, lorentz_boost(m, c), c)


def hyperplane_from_normal(w: Tensor, c: float | Tensor) -> tuple[Tensor, Tensor]:
    """``(z, a)`` of the hyperplane with Minkowski normal ``w`` (inverse of ``lorentz.hyperplane_normal``).

    ``w = (sinh(√c a)|z|, cosh(√c a) z)`` is space-like with ``|w|_L = |z|``; so ``|z|`` is the Minkowski
    norm, ``sinh(√c a) = w_0 / |z|`` (``asinh``, accurate also far from the origin where ``w_0 / |w_s|``
    nears 1) and ``z = w_s / cosh(√c a)``. A positive multiple of ``w`` gives the same hyperplane and side
    with ``z`` scaled alike.
    """
    cc = nx.as_curvature(c, w)
    w0, ws = w[0], w[1:]
    wsn = torch.linalg.vector_norm(ws)
    zn = torch.sqrt(torch.clamp_min((wsn - w0) * (wsn + w0), nx.MIN_NORM**2))
    ratio = w0 / zn
    a = torch.asinh(ratio) / torch.sqrt(cc)
    return ws / torch.sqrt(1 + ratio * ratio), a


def lorentz_translate_hyperplane(z: Tensor, a: Tensor | float, m: Tensor, c: float | Tensor) -> tuple[Tensor, Tensor]:
    """The hyperplane ``(z, a)`` moved by the isometry that takes ``m`` to the origin, as ``(z', a')``.

    ``a'`` is then the signed distance from ``m`` to the hyperplane along ``z'`` (``z'`` the hyperplane's
    normal direction at ``m``, carried to the origin), and every point keeps its logit:
    ``hyperplane_logit(L x, z', a') == hyperplane_logit(x, z, a)``.
    """
    w = lorentz.hyperplane_normal(z, a, c)
    return hyperplane_from_normal(lorentz_boost(m, c) @ w, c)


def sphere_rotation(m: Tensor) -> Tensor:
    """The ``(d, d)`` rotation taking the direction of ``m`` to the first axis (the "pole" ``e_0``).

    It turns the plane spanned by ``m̂`` and ``e_0`` by their angle and leaves its orthogonal complement
    alone (n-dimensional Rodrigues formula), the smallest rotation that does it. For ``m̂ = −e_0`` that plane
    is undefined; the second axis is used.
    """
    if m.ndim != 1 or m.shape[0] < 2:
        raise ValueError(f"sphere_rotation takes one vector of shape (d,), got {tuple(m.shape)}")
    d = m.shape[0]
    u = m / nx.norm(m)
    e = torch.zeros_like(u)
    e[0] = 1.0
    cos = u[0].clamp(-1.0, 1.0)
    perp = u - cos * e
    pn = torch.linalg.vector_norm(perp)
    eye = torch.eye(d, dtype=m.dtype, device=m.device)
    if float(pn) < 1e-12:
        if float(cos) > 0:
            return eye
        v = torch.zeros_like(u)
        v[1] = 1.0
        sin = torch.zeros((), dtype=m.dtype, device=m.device)
    else:
        v = perp / pn
        sin = pn
    return (eye + sin * (torch.outer(e, v) - torch.outer(v, e))
            + (cos - 1) * (torch.outer(e, e) + torch.outer(v, v)))


def sphere_logmap_pole(x: Tensor, c: float | Tensor) -> Tensor:
    """Tangent vectors ``(..., d - 1)`` at the pole ``e_0 / sqrt(c)`` of points on the sphere of radius ``1/√c``.

    The length is the geodesic distance from the pole (``angle / sqrt(c)``, the angle by ``atan2``, exact
    near the pole and near the antipode), the direction that of the point's off-pole coordinates.
    """
    cc = nx.as_curvature(c, x)
    xs = x[..., 1:]
    n = nx.norm(xs)
    angle = torch.atan2(n, x[..., :1])
    return xs * (angle / (n * torch.sqrt(cc)))
