"""Property tests of the Lorentz model in float64: random points over seeds and curvatures 0.01–100."""

from __future__ import annotations

import math

import pytest
import torch

from anomalens.engine.geometry import lorentz, poincare

F64 = torch.float64
SEEDS = [0, 1, 2]
CURVATURES = [0.01, 0.1, 1.0, 10.0, 100.0]
CASES = [(s, c) for s in SEEDS for c in CURVATURES]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tangent0(g: torch.Generator, n: int, d: int, c: float, max_radius: float = 4.0) -> torch.Tensor:
    """Tangent vectors at the origin; sqrt(c) x hyperbolic radius is uniform in [0, max_radius]."""
    direction = torch.randn(n, d, generator=g, dtype=F64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(n, 1, generator=g, dtype=F64) * max_radius / math.sqrt(c)
    return direction * radius


def points(g: torch.Generator, n: int, d: int, c: float, max_radius: float = 4.0) -> torch.Tensor:
    return lorentz.expmap0(tangent0(g, n, d, c, max_radius), c)


def acosh_dist(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """The textbook formula, as a reference for the chord-based implementation."""
    return torch.acosh(torch.clamp_min(-c * lorentz.inner(x, y), 1.0)) / math.sqrt(c)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_expmap0_lands_on_manifold_and_logmap0_inverts_it(seed: int, c: float) -> None:
    g = _gen(seed)
    v = tangent0(g, 64, 5, c)
    x = lorentz.expmap0(v, c)
    assert x.shape == (64, 6)
    ok, reason = lorentz.check_point_on_manifold(x, c, explain=True)
    assert ok, reason
    torch.testing.assert_close(lorentz.logmap0(x, c), v, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lorentz.expmap0(lorentz.logmap0(x, c), c), x, rtol=1e-9, atol=1e-12)
    # the exp map at the origin preserves length: radius == |v|
    torch.testing.assert_close(lorentz.dist0(x, c), v.norm(dim=-1), rtol=1e-9, atol=1e-12)
    o = lorentz.origin(5, c, dtype=F64)
    torch.testing.assert_close(lorentz.dist(o, x, c), v.norm(dim=-1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_expmap_and_logmap_are_inverse(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y = points(g, 32, 4, c), points(g, 32, 4, c)
    u = lorentz.logmap(x, y, c)
    # logmap gives a tangent vector at x whose length is the distance
    torch.testing.assert_close(lorentz.inner(x, u), torch.zeros(32, dtype=F64), atol=1e-8 / c, rtol=0)
    length = torch.sqrt(torch.clamp_min(lorentz.inner(u, u), 0))
    torch.testing.assert_close(length, lorentz.dist(x, y, c), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(lorentz.expmap(x, u, c), y, rtol=1e-7, atol=1e-9)
    # and the other way round, for a random tangent vector at x
    w = lorentz.proju(x, torch.randn(32, 5, generator=g, dtype=F64), c)
    w = w / torch.sqrt(lorentz.inner(w, w, keepdim=True)) * tangent0(g, 32, 1, c).abs()  # length <= 4/sqrt(c)
    assert lorentz.check_point_on_manifold(lorentz.expmap(x, w, c), c)
    torch.testing.assert_close(lorentz.logmap(x, lorentz.expmap(x, w, c), c), w, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_distance_is_a_metric_and_matches_acosh_formula(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y, z = points(g, 128, 3, c), points(g, 128, 3, c), points(g, 128, 3, c)
    dxy, dyx = lorentz.dist(x, y, c), lorentz.dist(y, x, c)
    torch.testing.assert_close(dxy, dyx, rtol=1e-12, atol=0)
    assert (dxy >= 0).all()
    assert lorentz.dist(x, x, c).abs().max() < 1e-12
    assert (lorentz.dist(x, z, c) <= dxy + lorentz.dist(y, z, c) + 1e-9).all()
    torch.testing.assert_close(dxy, acosh_dist(x, y, c), rtol=1e-7, atol=1e-7)
    assert lorentz.dist(x, y, c, keepdim=True).shape == (128, 1)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_poincare_isometry_preserves_distances(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y = points(g, 64, 3, c), points(g, 64, 3, c)
    px, py = lorentz.to_poincare(x, c), lorentz.to_poincare(y, c)
    assert poincare.check_point_on_manifold(px, c)
    torch.testing.assert_close(poincare.dist(px, py, c), lorentz.dist(x, y, c), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(lorentz.from_poincare(px, c), x, rtol=1e-9, atol=1e-10)
    # the exp maps agree through the isometry; the ball's metric at 0 is 4x Euclidean, hence v/2
    v = tangent0(g, 64, 3, c)
    torch.testing.assert_close(
        lorentz.to_poincare(lorentz.expmap0(v, c), c), poincare.expmap0(v / 2, c), rtol=1e-9, atol=1e-12
    )


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_centroid(seed: int, c: float) -> None:
    g = _gen(seed)
    x = points(g, 8, 4, c)
    # identical points: the centroid is that point, whatever the weights
    same = x.unsqueeze(1).expand(8, 5, 5)
    w = torch.rand(8, 5, generator=g, dtype=F64) + 0.1
    torch.testing.assert_close(lorentz.centroid(same, w, c), x, rtol=1e-9, atol=1e-10)
    # many distinct points: on the manifold, and invariant to the scale of the weights
    cloud = points(g, 40, 4, c).reshape(8, 5, 5)
    m = lorentz.centroid(cloud, w, c, dim=-2)
    ok, reason = lorentz.check_point_on_manifold(m, c, explain=True)
    assert ok, reason
    torch.testing.assert_close(lorentz.centroid(cloud, 7.5 * w, c), m, rtol=1e-9, atol=1e-10)
    # two points with equal weights: the geodesic midpoint
    a, b = cloud[:, 0], cloud[:, 1]
    mid = lorentz.centroid(torch.stack([a, b], dim=1), None, c, dim=1)
    half = lorentz.dist(a, b, c) / 2
    torch.testing.assert_close(lorentz.dist(mid, a, c), half, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(lorentz.dist(mid, b, c), half, rtol=1e-7, atol=1e-9)
    # a heavier weight pulls the centroid towards its point
    heavy = lorentz.centroid(torch.stack([a, b], dim=1), torch.tensor([[10.0, 1.0]], dtype=F64), c, dim=1)
    assert (lorentz.dist(heavy, a, c) < half + 1e-12).all()
    assert lorentz.centroid(cloud, w, c, dim=1, keepdim=True).shape == (8, 1, 5)


def test_centroid_edge_cases() -> None:
    x = points(_gen(0), 3, 2, 1.0).unsqueeze(0)
    torch.testing.assert_close(
        lorentz.centroid(x, torch.zeros(1, 3, dtype=F64), 1.0), lorentz.origin(2, 1.0, F64)[None]
    )
    with pytest.raises(ValueError, match="dim"):
        lorentz.centroid(x, None, 1.0, dim=-1)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_hyperplane_distance_and_logit(seed: int, c: float) -> None:
    g = _gen(seed)
    d = 4
    z = torch.randn(d, generator=g, dtype=F64) * 2
    a = torch.randn((), generator=g, dtype=F64) / math.sqrt(c)
    p = lorentz.hyperplane_point(z, a, c)
    w = lorentz.hyperplane_normal(z, a, c)
    # the hyperplane passes through its closest point, at distance |a| from the origin, and |w|_L = |z|
    assert abs(float(lorentz.inner(w, p))) < 1e-9 * max(1.0, float(p.abs().max()))
    o = lorentz.origin(d, c, dtype=F64)
    torch.testing.assert_close(lorentz.hyperplane_distance(o, z, a, c), a.abs(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lorentz.inner(w, w), z.norm() ** 2, rtol=1e-9, atol=0)
    # walking a signed length t along the unit normal from p: distance |t|, logit |z| t (sign flips across)
    t = (torch.rand(50, 1, generator=g, dtype=F64) * 6 - 3) / math.sqrt(c)
    x = lorentz.expmap(p.expand(50, d + 1), t * w / z.norm(), c)
    torch.testing.assert_close(lorentz.hyperplane_distance(x, z, a, c), t[:, 0].abs(), rtol=1e-7, atol=1e-9)
    logit = lorentz.hyperplane_logit(x, z, a, c)
    torch.testing.assert_close(logit, z.norm() * t[:, 0], rtol=1e-7, atol=1e-9)
    assert torch.equal(torch.sign(logit), torch.sign(t[:, 0]))
    # points reached along the hyperplane itself have logit 0
    e = lorentz.proju(p.expand(50, d + 1), torch.randn(50, d + 1, generator=g, dtype=F64), c)
    e = e - lorentz.inner(e, w, keepdim=True) * w / z.norm() ** 2
    on = lorentz.expmap(p.expand(50, d + 1), e / math.sqrt(c), c)
    assert lorentz.hyperplane_logit(on, z, a, c).abs().max() < 1e-7
    # eq. 4 and eq. 5 transcribed literally from the paper
    y = points(g, 50, d, c)
    wy = lorentz.inner(w, y)
    eq4 = torch.asinh(math.sqrt(c) * wy / z.norm()).abs() / math.sqrt(c)
    torch.testing.assert_close(lorentz.hyperplane_distance(y, z, a, c), eq4, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lorentz.hyperplane_logit(y, z, a, c), torch.sign(wy) * z.norm() * eq4)


def test_several_hyperplanes_at_once() -> None:
    g = _gen(3)
    x = points(g, 10, 3, 2.0).reshape(2, 5, 4)
    z = torch.randn(6, 3, generator=g, dtype=F64)
    a = torch.randn(6, generator=g, dtype=F64)
    logits = lorentz.hyperplane_logit(x, z, a, 2.0)
    assert logits.shape == (2, 5, 6)
    for k in range(6):
        torch.testing.assert_close(logits[..., k], lorentz.hyperplane_logit(x, z[k], a[k], 2.0))
    assert lorentz.hyperplane_normal(z, a, 2.0).shape == (6, 4)
    with pytest.raises(ValueError, match="shape"):
        lorentz.hyperplane_logit(x, z.reshape(2, 3, 3), a, 2.0)


@pytest.mark.parametrize("c", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("a", [-1.3, 0.0, 0.7])
def test_hyperplane_drawn_on_the_poincare_disk(c: float, a: float) -> None:
    z = torch.tensor([0.6, -1.1], dtype=F64)
    a = a / math.sqrt(c)
    pts = lorentz.hyperplane_geodesic_points(z, a, c, n=101)
    assert pts.shape == (101, 2)
    assert (pts.norm(dim=-1) < 1 / math.sqrt(c)).all()
    # lifted back to the hyperboloid, every drawn point is on the hyperplane
    lifted = lorentz.from_poincare(pts, c)
    assert (lorentz.hyperplane_logit(lifted, z, a, c).abs() < 1e-10 * lifted.abs().amax(-1)).all()
    geo = lorentz.hyperplane_to_poincare_geodesic(z, a, c)
    torch.testing.assert_close(geo.closest, lorentz.to_poincare(lorentz.hyperplane_point(z, a, c), c))
    if a == 0:
        assert geo.center is None and math.isinf(geo.radius)
        assert (pts @ geo.normal).abs().max() < 1e-12
    else:
        # a circle orthogonal to the disk's edge: |center|^2 = R^2 + radius^2, and the points lie on it
        torch.testing.assert_close((pts - geo.center).norm(dim=-1), torch.full((101,), geo.radius, dtype=F64))
        assert abs(float(geo.center.norm()) ** 2 - (1 / c + geo.radius**2)) < 1e-9 * (1 + geo.radius**2)


def test_check_point_on_manifold_rejects_bad_points() -> None:
    x = points(_gen(0), 4, 3, 1.0)
    assert lorentz.check_point_on_manifold(x, 1.0)
    ok, reason = lorentz.check_point_on_manifold(x * 1.01, 1.0, explain=True)
    assert not ok and "-1/c" in reason
    assert not lorentz.check_point_on_manifold(x, 2.0)
    ok, reason = lorentz.check_point_on_manifold(-x, 1.0, explain=True)
    assert not ok and "time" in reason
    bad = x.clone()
    bad[0, 1] = float("nan")
    assert lorentz.check_point_on_manifold(bad, 1.0, explain=True) == (False, "non-finite coordinates")
    assert lorentz.check_point_on_manifold(lorentz.project(x * 1.01, 1.0), 1.0)
