"""The guarded ``f(t)/t`` helpers and autograd through the geometry, in float32 and float64."""

from __future__ import annotations

import pytest
import torch

from anomalens.engine.geometry import _numerics as nx
from anomalens.engine.geometry import lorentz, poincare, sphere

EXACT = {
    "sinhc": lambda t: torch.sinh(t) / t,
    "asinhc": lambda t: torch.asinh(t) / t,
    "tanhc": lambda t: torch.tanh(t) / t,
    "atanhc": lambda t: torch.atanh(t) / t,
    "asinc": lambda t: torch.asin(t) / t,
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_series_helpers_match_the_exact_function(name: str) -> None:
    f = getattr(nx, name)
    t = torch.logspace(-6, -0.05, 400, dtype=torch.float64)
    t = torch.cat([-t, t])
    exact = EXACT[name](t)
    # float64: the series and the exact branch agree to rounding, including right at the switch point
    torch.testing.assert_close(f(t), exact, rtol=4e-16, atol=0)
    # float32 values to 2 ulp, and derivatives (the reason for the series) to 1e-4 relative
    t32 = t.float().requires_grad_(True)
    f(t32).sum().backward()
    t64 = t32.detach().double().requires_grad_(True)
    f(t64).sum().backward()
    torch.testing.assert_close(f(t32.detach()).double(), f(t64.detach()), rtol=2.5e-7, atol=0)
    assert ((t32.grad.double() - t64.grad).abs() <= 1e-4 * (t64.grad.abs() + 1e-3)).all()
    # value 1 at exactly 0, with zero slope
    z = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    f(z).sum().backward()
    assert torch.equal(f(z.detach()), torch.ones(3)) and torch.equal(z.grad, torch.zeros(3))


def test_gradients_match_finite_differences() -> None:
    """torch.autograd.gradcheck over points near the origin (series branch), mid-range and far out."""
    g = torch.Generator().manual_seed(0)
    for scale in (1e-4, 0.05, 1.0, 3.0):
        v = (torch.randn(3, 4, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
        w = (torch.randn(3, 4, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
        c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
        z = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
        a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

        def lorentz_fn(v, w, c, z, a):
            x, y = lorentz.expmap0(v, c), lorentz.expmap0(w, c)
            return (
                lorentz.logmap0(x, c),
                lorentz.dist(x, y, c),
                lorentz.logmap(x, y, c),
                lorentz.centroid(torch.stack([x, y], 1), None, c, dim=1),
                lorentz.hyperplane_logit(x, z, a, c),
            )

        def poincare_fn(v, w, c, z):
            x, y = poincare.expmap0(v, c), poincare.expmap0(w, c)
            return (
                poincare.logmap0(x, c),
                poincare.dist(x, y, c),
                poincare.logmap(x, y, c),
                poincare.mobius_matvec(z.reshape(1, 4).expand(2, 4), x, c),
                poincare.mlr(x, z.reshape(1, 4), y[:1], c),
                sphere.dist(v, w, c),
            )

        assert torch.autograd.gradcheck(lorentz_fn, (v, w, c, z, a))
        if scale <= 1.0:  # further out the ball's edge is too close for finite differences to be reliable
            assert torch.autograd.gradcheck(poincare_fn, (v, w, c, z))
