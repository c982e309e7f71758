"""The sphere of curvature ``+c``: radius ``1/sqrt(c)`` (curved-geometric-networks eq. 1–3).

The spherical branch of the curved-geometry networks only needs the projection onto the sphere, the angular
(cosine) logits and the geodesic distance; they are plain functions so the layers and tests share them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _numerics as nx


def project(x: Tensor, c: float | Tensor) -> Tensor:
    """Project onto the sphere of radius ``1/sqrt(c)``: ``x / (sqrt(c)|x|)`` (eq. 2); 0 maps to 0."""
    cc = nx.as_curvature(c, x)
    return x / (torch.sqrt(cc) * nx.norm(x))


def angular_logits(x: Tensor, w: Tensor, scale: float | Tensor = 1.0) -> Tensor:
    """Cosine logits ``scale * cos(x, w_k)``: features ``(..., d)``, prototypes ``(K, d)`` → ``(..., K)``.

    The paper's angular mapping is ``<x, w_k>`` with both on the sphere of curvature ``c``, i.e.
    ``cos(x, w_k) / c``: pass ``scale = 1/c`` for exactly that (``AngularLinear`` does).
    """
    xh = x / nx.norm(x)
    wh = w / nx.norm(w)
    return scale * (xh @ wh.transpose(-1, -2))


def dist(x: Tensor, y: Tensor, c: float | Tensor, keepdim: bool = False) -> Tensor:
    """Geodesic distance on the sphere of radius ``1/sqrt(c)`` between the directions of ``x`` and ``y``.

    The angle is ``2 atan2(|x̂ - ŷ|, |x̂ + ŷ|)`` (Kahan), accurate at 0 and at antipodes where ``acos`` of
    the cosine loses all digits.
    """
    cc = nx.as_curvature(c, x)
    xh = x / nx.norm(x)
    yh = y / nx.norm(y)
    angle = 2 * torch.atan2(nx.norm(xh - yh, keepdim=keepdim), nx.norm(xh + yh, keepdim=keepdim))
    return angle / torch.sqrt(cc)


def check_point_on_manifold(
    x: Tensor, c: float | Tensor, explain: bool = False, atol: float = 0.0, rtol: float | None = None
) -> bool | tuple[bool, str | None]:
    """Whether every row of ``x`` is finite with ``sqrt(c)|x| ≈ 1`` (tolerance ``atol + rtol``).

    Returns:
        ``ok``, or ``(ok, reason)`` with ``explain=True``.
    """
    with torch.no_grad():
        reason: str | None = None
        cc = nx.as_curvature(c, x).detach()
        rtol = nx.check_rtol(x.dtype) if rtol is None else rtol
        if not torch.isfinite(x).all():
            reason = "non-finite coordinates"
        else:
            err = (torch.sqrt(cc) * torch.linalg.vector_norm(x, dim=-1) - 1).abs()
            if (err > atol + rtol).any():
                reason = f"sqrt(c)|x| differs from 1 by up to {float(err.max()):.3g}"
        ok = reason is None
        return (ok, reason) if explain else ok
