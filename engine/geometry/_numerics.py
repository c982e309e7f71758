"""Shared numerics for the geometry modules: per-dtype epsilons, safe norms and the ``f(t)/t`` family.

Hyperbolic formulas are full of ``sinh(t)/t``, ``tanh(t)/t``, ``atanh(t)/t``: written naively they divide
zero by zero at the origin and their autograd gradients are NaN there, and ``cosh``/``sinh`` overflow at
large radii in float32. Every module goes through these helpers instead, so the guards live in one place.

The ``*c`` helpers ("sinc-like") evaluate a short Taylor series below a per-dtype threshold and the exact
expression above it. ``torch.where`` differentiates both branches, so each branch is fed a harmless stand-in
value wherever the other one is used; otherwise a ``0 * inf`` in the unused branch (the series overflows at
large ``t``, the exact form divides by 0 at ``t = 0``) would turn the gradient into NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

#: Smallest norm used as a divisor; below it a vector is treated as zero (geoopt uses the same value).
MIN_NORM = 1e-15

#: Margin kept from a boundary (Poincaré ball edge, ``atanh(1)``, ``asin(1)``); float32 needs a wide one
#: because ``1 - 4e-3`` is the last value whose ``atanh`` still has useful precision there.
_BOUNDARY_EPS = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 4e-3, torch.float64: 1e-5}

#: Largest ``sqrt(c) * radius`` fed to ``cosh``/``sinh``: keeps ``cosh(t)**3`` (``logmap`` multiplies an inner
#: product by a point) finite in the dtype with room for sums. A hyperbolic radius of 20/sqrt(c) is far beyond
#: anything float32 can still resolve (coordinates ~1e8), so nothing useful is lost.
_MAX_ARG = {torch.float16: 3.0, torch.bfloat16: 20.0, torch.float32: 20.0, torch.float64: 150.0}

#: Below this argument the ``f(t)/t`` helpers use their series up to ``t**6``: the truncation error is under
#: half an ulp there, while the exact branch's autograd derivative (``cosh(t)/t - sinh(t)/t**2``) would lose
#: digits to cancellation.
_SERIES_BELOW = {torch.float16: 0.15, torch.bfloat16: 0.15, torch.float32: 0.15, torch.float64: 1e-2}

#: Relative tolerance of the manifold membership checks.
_CHECK_RTOL = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-4, torch.float64: 1e-9}


def boundary_eps(dtype: torch.dtype) -> float:
    """Margin from a boundary for ``dtype`` (float32 4e-3, float64 1e-5, as in geoopt)."""
    return _BOUNDARY_EPS.get(dtype, 4e-3)


def max_arg(dtype: torch.dtype) -> float:
    """Largest argument fed to ``cosh``/``sinh`` for ``dtype``."""
    return _MAX_ARG.get(dtype, 20.0)


def check_rtol(dtype: torch.dtype) -> float:
    """Default relative tolerance of ``check_point_on_manifold`` for ``dtype``."""
    return _CHECK_RTOL.get(dtype, 1e-4)


def as_curvature(c: float | Tensor, like: Tensor) -> Tensor:
    """``c`` as a tensor with ``like``'s dtype and device; a differentiable cast if ``c`` is a parameter.

    A Python number becomes a ``torch.full`` on the device (a fill kernel, not a host-to-device copy).
    """
    if isinstance(c, Tensor):
        return c.to(dtype=like.dtype, device=like.device)
    return torch.full((), float(c), dtype=like.dtype, device=like.device)


def norm(x: Tensor, dim: int = -1, keepdim: bool = True) -> Tensor:
    """Euclidean norm clamped below by ``MIN_NORM``: safe to divide by, finite (zero) gradient at 0."""
    return torch.sqrt(torch.clamp_min((x * x).sum(dim=dim, keepdim=keepdim), MIN_NORM**2))


def _series_or_exact(
    t: Tensor, exact: Callable[[Tensor], Tensor], series: Callable[[Tensor], Tensor]
) -> Tensor:
    small = t.abs() < _SERIES_BELOW.get(t.dtype, 0.15)
    # each branch only ever sees arguments where it is finite (the series overflows for huge t)
    return torch.where(small, series(torch.where(small, t, 0.0)), exact(torch.where(small, 0.5, t)))


def sinhc(t: Tensor) -> Tensor:
    """``sinh(t) / t`` with value 1 at 0."""
    return _series_or_exact(
        t, lambda s: torch.sinh(s) / s, lambda s: 1 + s * s / 6 + s**4 / 120 + s**6 / 5040
    )


def asinhc(t: Tensor) -> Tensor:
    """``asinh(t) / t`` with value 1 at 0."""
    return _series_or_exact(
        t, lambda s: torch.asinh(s) / s, lambda s: 1 - s * s / 6 + 3 * s**4 / 40 - 5 * s**6 / 112
    )


def tanhc(t: Tensor) -> Tensor:
    """``tanh(t) / t`` with value 1 at 0."""
    return _series_or_exact(
        t, lambda s: torch.tanh(s) / s, lambda s: 1 - s * s / 3 + 2 * s**4 / 15 - 17 * s**6 / 315
    )


def atanhc(t: Tensor) -> Tensor:
    """``atanh(t) / t`` with value 1 at 0 (callers keep ``|t| < 1``)."""
    return _series_or_exact(t, lambda s: torch.atanh(s) / s, lambda s: 1 + s * s / 3 + s**4 / 5 + s**6 / 7)


def asinc(t: Tensor) -> Tensor:
    """``asin(t) / t`` with value 1 at 0 (callers keep ``|t| < 1``)."""
    return _series_or_exact(
        t, lambda s: torch.asin(s) / s, lambda s: 1 + s * s / 6 + 3 * s**4 / 40 + 5 * s**6 / 112
    )
