"""Manifold modules: they only hold the (optionally learnable) curvature and delegate to the function modules.

Like geoopt, the math lives in ``lorentz``/``poincare``/``sphere`` as functions of ``(tensors, c)``; these
classes exist so a curvature can be an ``nn.Parameter`` shared by the layers of one model and saved with its
weights. The curvature is stored as ``log_c`` and read as ``c = exp(log_c)``: always positive, and an Adam
step changes it by the same *relative* amount whether it is 0.01 or 100 (softplus would be nearly linear
above 1 and stiff below). ``c`` is clamped to ``[1e-4, 1e4]`` so training cannot make the geometry
degenerate.

A module shared by several layers appears under each of them in ``state_dict`` (tied parameters); save such
models with ``safetensors.torch.save_model`` or drop the duplicate keys, since ``save_file`` refuses tensors
that share memory.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import lorentz, poincare, sphere

C_MIN = 1e-4
C_MAX = 1e4


class _Curvature(nn.Module):
    """Base: a positive curvature magnitude ``c``, learnable or fixed, stored as ``log_c``."""

    def __init__(self, c: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        c = float(c)
        if not (math.isfinite(c) and C_MIN <= c <= C_MAX):
            raise ValueError(f"curvature magnitude c must be in [{C_MIN}, {C_MAX}], got {c}")
        log_c = torch.tensor(math.log(c), dtype=torch.get_default_dtype())
        self.learnable = learnable
        if learnable:
            self.log_c = nn.Parameter(log_c)
        else:
            self.register_buffer("log_c", log_c)

    @property
    def c(self) -> Tensor:
        """The curvature magnitude, a 0-dim tensor (differentiable when learnable)."""
        return torch.exp(torch.clamp(self.log_c, math.log(C_MIN), math.log(C_MAX)))

    def extra_repr(self) -> str:
        return f"c={float(self.c.detach()):.4g}, learnable={self.learnable}"


class Lorentz(_Curvature):
    """The hyperboloid of curvature ``-c``; points ``(..., d + 1)``, time coordinate first."""

    def origin(self, d: int, dtype: torch.dtype | None = None, device: torch.device | None = None) -> Tensor:
        return lorentz.origin(d, self.c, dtype=dtype, device=device)

    def inner(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        return lorentz.inner(x, y, keepdim=keepdim)

    def expmap0(self, v: Tensor) -> Tensor:
        return lorentz.expmap0(v, self.c)

    def logmap0(self, x: Tensor) -> Tensor:
        return lorentz.logmap0(x, self.c)

    def expmap(self, x: Tensor, u: Tensor) -> Tensor:
        return lorentz.expmap(x, u, self.c)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return lorentz.logmap(x, y, self.c)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        return lorentz.dist(x, y, self.c, keepdim=keepdim)

    def dist0(self, x: Tensor, keepdim: bool = False) -> Tensor:
        return lorentz.dist0(x, self.c, keepdim=keepdim)

    def project(self, x: Tensor) -> Tensor:
        return lorentz.project(x, self.c)

    def from_spatial(self, xs: Tensor) -> Tensor:
        return lorentz.from_spatial(xs, self.c)

    def centroid(self, x: Tensor, w: Tensor | None = None, dim: int = -2, keepdim: bool = False) -> Tensor:
        return lorentz.centroid(x, w, self.c, dim=dim, keepdim=keepdim)

    def hyperplane_distance(self, x: Tensor, z: Tensor, a: Tensor | float) -> Tensor:
        return lorentz.hyperplane_distance(x, z, a, self.c)

    def hyperplane_logit(self, x: Tensor, z: Tensor, a: Tensor | float) -> Tensor:
        return lorentz.hyperplane_logit(x, z, a, self.c)

    def to_poincare(self, x: Tensor) -> Tensor:
        return lorentz.to_poincare(x, self.c)

    def from_poincare(self, p: Tensor) -> Tensor:
        return lorentz.from_poincare(p, self.c)

    def check_point_on_manifold(
        self, x: Tensor, explain: bool = False, atol: float = 0.0, rtol: float | None = None
    ) -> bool | tuple[bool, str | None]:
        return lorentz.check_point_on_manifold(x, self.c, explain=explain, atol=atol, rtol=rtol)


class PoincareBall(_Curvature):
    """The Poincaré ball of radius ``1/sqrt(c)`` (curvature ``-c``)."""

    def mobius_add(self, x: Tensor, y: Tensor) -> Tensor:
        return poincare.mobius_add(x, y, self.c)

    def expmap0(self, v: Tensor) -> Tensor:
        return poincare.expmap0(v, self.c)

    def logmap0(self, y: Tensor) -> Tensor:
        return poincare.logmap0(y, self.c)

    def expmap(self, x: Tensor, v: Tensor) -> Tensor:
        return poincare.expmap(x, v, self.c)

    def logmap(self, x: Tensor, y: Tensor) -> Tensor:
        return poincare.logmap(x, y, self.c)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        return poincare.dist(x, y, self.c, keepdim=keepdim)

    def dist0(self, x: Tensor, keepdim: bool = False) -> Tensor:
        return poincare.dist0(x, self.c, keepdim=keepdim)

    def project(self, x: Tensor) -> Tensor:
        return poincare.project(x, self.c)

    def clip_features(self, x: Tensor, xi: float | None = None) -> Tensor:
        return poincare.clip_features(x, xi, self.c)

    def mobius_matvec(self, m: Tensor, x: Tensor) -> Tensor:
        return poincare.mobius_matvec(m, x, self.c)

    def mlr(self, x: Tensor, a: Tensor, p: Tensor) -> Tensor:
        return poincare.mlr(x, a, p, self.c)

    def check_point_on_manifold(
        self, x: Tensor, explain: bool = False, atol: float = 0.0
    ) -> bool | tuple[bool, str | None]:
        return poincare.check_point_on_manifold(x, self.c, explain=explain, atol=atol)


class Sphere(_Curvature):
    """The sphere of radius ``1/sqrt(c)`` (curvature ``+c``); fixed curvature by default."""

    def __init__(self, c: float = 1.0, learnable: bool = False) -> None:
        super().__init__(c, learnable)

    def project(self, x: Tensor) -> Tensor:
        return sphere.project(x, self.c)

    def dist(self, x: Tensor, y: Tensor, keepdim: bool = False) -> Tensor:
        return sphere.dist(x, y, self.c, keepdim=keepdim)

    def angular_logits(self, x: Tensor, w: Tensor) -> Tensor:
        """Inner products of the projections on this sphere: ``cos(x, w_k) / c`` (the paper's angular map)."""
        return sphere.angular_logits(x, w, 1 / self.c)

    def check_point_on_manifold(
        self, x: Tensor, explain: bool = False, atol: float = 0.0, rtol: float | None = None
    ) -> bool | tuple[bool, str | None]:
        return sphere.check_point_on_manifold(x, self.c, explain=explain, atol=atol, rtol=rtol)
