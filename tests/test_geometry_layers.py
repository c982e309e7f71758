"""Manifold modules, layers, and float32 stability (values AND gradients) at the origin and at large norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from anomalens.engine.geometry import lorentz, poincare, sphere
from anomalens.engine.geometry.layers import (
    AngularLinear,
    LorentzHyperplaneClassifier,
    LorentzLinear,
    PoincareLinear,
    PoincareMLR,
)
from anomalens.engine.geometry.manifolds import Lorentz, PoincareBall, Sphere

F32 = torch.float32


def _finite_grad(t: torch.Tensor) -> bool:
    return t.grad is not None and bool(torch.isfinite(t.grad).all())


# ----------------------------------------------------------------------------------------- manifolds


@pytest.mark.parametrize("cls", [Lorentz, PoincareBall, Sphere])
def test_curvature_is_positive_learnable_and_saved(cls: type) -> None:
    m = cls(c=0.25, learnable=True)
    assert isinstance(m.c, torch.Tensor) and m.c.ndim == 0
    assert abs(float(m.c.detach()) - 0.25) < 1e-6
    assert [n for n, _ in m.named_parameters()] == ["log_c"]
    (m.c * 3).backward()
    assert m.log_c.grad is not None and abs(float(m.log_c.grad) - 0.75) < 1e-6
    fixed = cls(c=4.0, learnable=False)
    assert list(fixed.parameters()) == [] and "log_c" in fixed.state_dict()
    fixed.load_state_dict(m.state_dict())
    assert abs(float(fixed.c) - 0.25) < 1e-6
    # however the raw parameter moves, c stays positive and bounded
    with torch.no_grad():
        m.log_c.fill_(-1e3)
    assert float(m.c.detach()) > 0
    for bad in (0.0, -1.0, float("nan"), 1e9):
        with pytest.raises(ValueError, match="curvature"):
            cls(c=bad)


def test_manifold_methods_delegate_with_their_curvature() -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(6, 3, generator=g, dtype=torch.float64)
    man = Lorentz(c=2.0).double()
    x = man.expmap0(v)
    torch.testing.assert_close(x, lorentz.expmap0(v, 2.0))
    assert man.check_point_on_manifold(x) and not man.check_point_on_manifold(lorentz.expmap0(v, 3.0))
    torch.testing.assert_close(man.dist(x[:3], x[3:]), lorentz.dist(x[:3], x[3:], 2.0))
    torch.testing.assert_close(
        man.centroid(x.reshape(2, 3, 4)), lorentz.centroid(x.reshape(2, 3, 4), None, 2.0)
    )
    ball = PoincareBall(c=2.0).double()
    torch.testing.assert_close(
        ball.dist(man.to_poincare(x[:3]), man.to_poincare(x[3:])), man.dist(x[:3], x[3:])
    )
    sph = Sphere(c=2.0).double()
    assert sph.check_point_on_manifold(sph.project(v))
    # a float32 curvature module works on float64 data without downcasting it
    assert Lorentz(c=2.0).expmap0(v).dtype == torch.float64


# ----------------------------------------------------------------------------------------- layers


def test_lorentz_linear_maps_onto_the_manifold_and_trains_curvature() -> None:
    torch.manual_seed(0)
    man = Lorentz(c=0.5)
    layer = LorentzLinear(7, 3, man)
    x = man.expmap0(torch.randn(4, 5, 7))
    y = layer(x)
    assert y.shape == (4, 5, 4)
    ok, reason = man.check_point_on_manifold(y, explain=True)
    assert ok, reason
    y.sum().backward()
    assert _finite_grad(layer.linear.weight) and _finite_grad(man.log_c)
    assert float(man.log_c.grad.abs()) > 0
    with pytest.raises(ValueError, match="coordinates"):
        layer(torch.randn(4, 7))
    # shared manifold: one curvature parameter however many layers use it
    head = nn.ModuleList([LorentzLinear(7, 3, man), LorentzLinear(3, 2, man)])
    assert sum(p is man.log_c for p in head.parameters()) == 1


def test_hyperplane_classifier_learns_a_separable_toy_problem() -> None:
    torch.manual_seed(0)
    man = Lorentz(c=1.0, learnable=False)
    clf = LorentzHyperplaneClassifier(2, man)
    z, a = clf.hyperplane()
    assert z.shape == (2,) and a == 0.0
    # two clusters on the hyperboloid: near the origin (normal) and out along (1, 1) (anomalous)
    normal = lorentz.expmap0(0.3 * torch.randn(64, 2), 1.0)
    anomal = lorentz.expmap0(torch.tensor([1.5, 1.5]) + 0.3 * torch.randn(64, 2), 1.0)
    x = torch.cat([normal, anomal])
    y = torch.cat([torch.zeros(64), torch.ones(64)])
    opt = torch.optim.Adam(clf.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(clf(x), y)
        loss.backward()
        opt.step()
    logits = clf(x)
    assert logits.shape == (128,)
    assert ((logits > 0).float() == y).float().mean() > 0.95
    torch.testing.assert_close(clf.distance(x), logits.abs() / clf.z.norm())
    z, a = clf.hyperplane()
    assert (
        a > 0 and torch.dot(z, torch.tensor([1.0, 1.0])) > 0
    )  # the boundary moved out towards the anomalies
    geo = clf.poincare_geodesic()
    assert geo.center is not None and geo.radius > 0
    with pytest.raises(ValueError, match="coordinates"):
        clf(torch.randn(5, 2))


def test_poincare_layers_and_angular_linear() -> None:
    torch.manual_seed(0)
    ball = PoincareBall(c=1.0)
    x = ball.expmap0(torch.randn(10, 6))
    lin = PoincareLinear(6, 4, ball)
    y = lin(x)
    assert y.shape == (10, 4) and ball.check_point_on_manifold(y)
    mlr = PoincareMLR(4, 3, ball)
    logits = mlr(y)
    assert logits.shape == (10, 3)
    logits.sum().backward()
    assert (
        _finite_grad(lin.weight)
        and _finite_grad(lin.bias)
        and _finite_grad(mlr.a)
        and _finite_grad(mlr.p_tangent)
    )
    assert ball.check_point_on_manifold(mlr.p)
    ang = AngularLinear(6, 3, Sphere(c=0.5))
    feats = torch.randn(10, 6)
    out = ang(feats)
    assert out.shape == (10, 3) and out.abs().max() <= 2.0 + 1e-5
    # inner products of the features and prototypes projected on the sphere of radius 1/sqrt(0.5)
    expected = sphere.project(feats, 0.5) @ sphere.project(ang.weight.detach(), 0.5).T
    torch.testing.assert_close(out.detach(), expected)


# ------------------------------------------------------------------------------- float32 stability


def test_float32_gradients_at_the_origin_are_finite_and_correct() -> None:
    for fn in (lambda v: lorentz.expmap0(v, 1.0)[..., 1:], lambda v: poincare.expmap0(v, 1.0)):
        v = torch.zeros(3, 4, dtype=F32, requires_grad=True)
        out = fn(v)
        assert torch.isfinite(out).all() and out.abs().max() == 0
        out.sum().backward()
        # d expmap0 / dv = identity at 0
        torch.testing.assert_close(v.grad, torch.ones_like(v))
    # Lorentz time coordinate: flat at the origin
    v = torch.zeros(4, dtype=F32, requires_grad=True)
    lorentz.expmap0(v, 1.0)[0].backward()
    assert torch.equal(v.grad, torch.zeros(4))
    # the maps back, distances on the diagonal and from the origin
    o = lorentz.origin(4, 1.0, dtype=F32).requires_grad_(True)
    (lorentz.logmap0(o, 1.0).sum() + lorentz.dist(o, o.detach(), 1.0) + lorentz.dist0(o, 1.0)).backward()
    assert _finite_grad(o)
    p = torch.zeros(4, dtype=F32, requires_grad=True)
    (poincare.logmap0(p, 1.0).sum() + poincare.dist(p, p.detach(), 1.0) + poincare.dist0(p, 1.0)).backward()
    assert _finite_grad(p)
    s = torch.ones(4, dtype=F32, requires_grad=True)
    sphere.dist(s, s.detach(), 1.0).backward()
    assert _finite_grad(s)


@pytest.mark.parametrize("scale", [1e-30, 1e-8, 1e-3, 0.3, 3.0, 30.0, 1e3, 1e8])
@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_float32_values_and_gradients_finite_at_any_norm(scale: float, c: float) -> None:
    g = torch.Generator().manual_seed(1)
    v = (torch.randn(8, 16, generator=g) * scale).requires_grad_(True)
    cc = torch.tensor(c, requires_grad=True)
    x = lorentz.expmap0(v, cc)
    p = poincare.expmap0(v, cc)
    z = torch.randn(16, generator=g)
    outputs = [
        x,
        lorentz.logmap0(x, cc),
        lorentz.dist(x[:4], x[4:], cc),
        lorentz.dist0(x, cc),
        lorentz.centroid(x.reshape(2, 4, 17), torch.rand(2, 4, generator=g), cc),
        lorentz.hyperplane_logit(x, z, 0.3, cc),
        lorentz.to_poincare(x, cc),
        lorentz.logmap(x[:4], x[4:], cc),
        p,
        poincare.logmap0(p, cc),
        poincare.dist(p[:4], p[4:], cc),
        poincare.mobius_matvec(torch.randn(5, 16, generator=g), p, cc),
        poincare.mlr(p, torch.randn(3, 16, generator=g), p[:3].detach(), cc),
        sphere.dist(v[:4], v[4:], cc),
    ]
    for i, out in enumerate(outputs):
        assert torch.isfinite(out).all(), f"output {i} not finite at scale {scale}"
    assert poincare.check_point_on_manifold(p, c)
    assert lorentz.check_point_on_manifold(x, c)
    sum(o.sum() for o in outputs).backward()
    assert _finite_grad(v), f"NaN/inf gradient at scale {scale}"
    assert _finite_grad(cc)


def test_float32_head_end_to_end_gradients_finite() -> None:
    """The detector's path: expmap0 → LorentzLinear → weighted centroid → hyperplane logit → BCE."""
    torch.manual_seed(0)
    man = Lorentz(c=1.0)
    proj = LorentzLinear(32, 8, man)
    clf = LorentzHyperplaneClassifier(8, man)
    feats = torch.cat([torch.zeros(4, 2, 32), torch.randn(4, 2, 32) * 0.5, torch.randn(4, 2, 32) * 100])
    feats.requires_grad_(True)
    pts = proj(man.expmap0(feats))
    weights = man.to_poincare(pts).norm(dim=-1)
    logit = clf(man.centroid(pts, weights))
    loss = nn.functional.binary_cross_entropy_with_logits(logit, torch.arange(12.0) % 2)
    loss.backward()
    assert torch.isfinite(loss)
    for t in (feats, proj.linear.weight, clf.z, clf.a, man.log_c):
        assert _finite_grad(t)
