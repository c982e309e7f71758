"""Property tests of the Poincaré ball and the sphere in float64 over seeds and curvatures 0.01–100."""

from __future__ import annotations

import math

import pytest
import torch

from anomalens.engine.geometry import poincare, sphere

F64 = torch.float64
CASES = [(s, c) for s in (0, 1, 2) for c in (0.01, 0.1, 1.0, 10.0, 100.0)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ball_points(g: torch.Generator, n: int, d: int, c: float, max_radius: float = 4.0) -> torch.Tensor:
    """Points of the ball with hyperbolic radius uniform in [0, max_radius]/sqrt(c)."""
    direction = torch.randn(n, d, generator=g, dtype=F64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    radius = torch.rand(n, 1, generator=g, dtype=F64) * max_radius
    return direction * torch.tanh(radius / 2) / math.sqrt(c)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_mobius_addition_identities(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y = ball_points(g, 32, 3, c), ball_points(g, 32, 3, c)
    torch.testing.assert_close(poincare.mobius_add(x, torch.zeros_like(x), c), x)
    assert poincare.mobius_add(-x, x, c).abs().max() < 1e-12 / math.sqrt(c)
    # left cancellation: (-x) ⊕ (x ⊕ y) = y
    torch.testing.assert_close(
        poincare.mobius_add(-x, poincare.mobius_add(x, y, c), c), y, rtol=1e-9, atol=1e-12
    )
    assert poincare.check_point_on_manifold(poincare.mobius_add(x, y, c), c)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_exp_and_log_maps_are_inverse(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y = ball_points(g, 32, 4, c), ball_points(g, 32, 4, c)
    torch.testing.assert_close(poincare.expmap0(poincare.logmap0(x, c), c), x, rtol=1e-9, atol=1e-12)
    v = torch.randn(32, 4, generator=g, dtype=F64) / math.sqrt(c)
    torch.testing.assert_close(poincare.logmap0(poincare.expmap0(v, c), c), v, rtol=1e-8, atol=1e-10)
    u = poincare.logmap(x, y, c)
    torch.testing.assert_close(poincare.expmap(x, u, c), y, rtol=1e-8, atol=1e-10)
    # the Riemannian length of logmap is the distance (metric = λ_x² · Euclidean)
    torch.testing.assert_close(
        poincare.lambda_x(x, c)[:, 0] * u.norm(dim=-1), poincare.dist(x, y, c), rtol=1e-8, atol=1e-10
    )
    w = torch.randn(32, 4, generator=g, dtype=F64) / (math.sqrt(c) * poincare.lambda_x(x, c))
    torch.testing.assert_close(poincare.logmap(x, poincare.expmap(x, w, c), c), w, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_distance_is_a_metric(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y, z = (ball_points(g, 128, 3, c) for _ in range(3))
    dxy = poincare.dist(x, y, c)
    torch.testing.assert_close(dxy, poincare.dist(y, x, c), rtol=1e-10, atol=1e-12)
    assert (dxy >= 0).all()
    assert poincare.dist(x, x, c).abs().max() < 1e-12
    assert (poincare.dist(x, z, c) <= dxy + poincare.dist(y, z, c) + 1e-9).all()
    torch.testing.assert_close(poincare.dist0(x, c), poincare.dist(torch.zeros_like(x), x, c))
    # the closed form via the Euclidean distance: cosh d = 1 + 2c|x-y|^2 / ((1-c|x|^2)(1-c|y|^2))
    ref = torch.acosh(
        1 + 2 * c * ((x - y) ** 2).sum(-1) / ((1 - c * (x * x).sum(-1)) * (1 - c * (y * y).sum(-1)))
    ) / math.sqrt(c)
    torch.testing.assert_close(dxy, ref, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_mobius_matvec(seed: int, c: float) -> None:
    g = _gen(seed)
    x = ball_points(g, 16, 5, c)
    m = torch.randn(3, 5, generator=g, dtype=F64)
    n = torch.randn(5, 5, generator=g, dtype=F64)
    y = poincare.mobius_matvec(m, x, c)
    assert y.shape == (16, 3) and poincare.check_point_on_manifold(y, c)
    torch.testing.assert_close(
        poincare.mobius_matvec(torch.eye(5, dtype=F64), x, c), x, rtol=1e-9, atol=1e-12
    )
    # (M N) ⊗ x = M ⊗ (N ⊗ x), and the direction is that of Mx
    torch.testing.assert_close(
        poincare.mobius_matvec(m @ n, x, c),
        poincare.mobius_matvec(m, poincare.mobius_matvec(n, x, c), c),
        rtol=1e-7,
        atol=1e-10,
    )
    cos = torch.nn.functional.cosine_similarity(y, x @ m.T, dim=-1)
    torch.testing.assert_close(cos, torch.ones_like(cos))
    assert poincare.mobius_matvec(m, torch.zeros(5, dtype=F64), c).abs().max() == 0
    # the Euclidean limit
    e = torch.randn(16, 5, generator=g, dtype=F64)
    torch.testing.assert_close(poincare.mobius_matvec(m, e, 1e-10), e @ m.T, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_mlr_is_scaled_signed_distance_to_hyperplane(seed: int, c: float) -> None:
    g = _gen(seed)
    x = ball_points(g, 20, 3, c)
    p = ball_points(g, 4, 3, c, max_radius=2.0)
    a = torch.randn(4, 3, generator=g, dtype=F64)
    logits = poincare.mlr(x, a, p, c)
    assert logits.shape == (20, 4)
    # literal transcription of Ganea et al.'s formula (eq. 8 with λ at p_k)
    for k in range(4):
        u = poincare.mobius_add(-p[k], x, c)
        lam = 2 / (1 - c * (p[k] ** 2).sum())
        an = a[k].norm()
        arg = 2 * math.sqrt(c) * (u @ a[k]) / ((1 - c * (u**2).sum(-1)) * an)
        torch.testing.assert_close(
            logits[:, k], lam * an / math.sqrt(c) * torch.asinh(arg), rtol=1e-9, atol=1e-10
        )
    # a point on the hyperplane (p_k itself) has logit 0
    assert poincare.mlr(p, a, p, c).diagonal().abs().max() < 1e-12


def test_mlr_reduces_to_euclidean_logistic_regression() -> None:
    g = _gen(5)
    x = torch.randn(30, 4, generator=g, dtype=F64)
    a = torch.randn(3, 4, generator=g, dtype=F64)
    p = torch.randn(3, 4, generator=g, dtype=F64)
    euclid = 4 * ((x.unsqueeze(-2) - p) * a).sum(-1)
    torch.testing.assert_close(poincare.mlr(x, a, p, 1e-9), euclid, rtol=1e-5, atol=1e-6)
    # and drifts away from it as the curvature grows (the limit is not trivially satisfied)
    assert (poincare.mlr(x / 10, a, p / 10, 1.0) - euclid / 10).abs().max() > 1e-2


@pytest.mark.parametrize("c", [0.01, 1.0, 100.0])
def test_project_and_clip_features(c: float) -> None:
    g = _gen(0)
    x = (
        torch.randn(50, 3, generator=g, dtype=F64)
        * torch.logspace(-1, 1, 50, dtype=F64)[:, None]
        / math.sqrt(c)
    )
    r = 1 / math.sqrt(c)
    clipped = poincare.clip_features(x, 0.01, c)
    n = x.norm(dim=-1)
    inside = n <= 0.99 * r
    assert inside.any() and (~inside).any()
    torch.testing.assert_close(clipped[inside], x[inside])
    torch.testing.assert_close(clipped[~inside].norm(dim=-1), torch.full_like(n[~inside], 0.99 * r))
    torch.testing.assert_close(
        torch.nn.functional.cosine_similarity(clipped, x, dim=-1), torch.ones(50, dtype=F64)
    )
    assert poincare.check_point_on_manifold(clipped, c)
    projected = poincare.project(x, c)
    assert poincare.check_point_on_manifold(projected, c)
    assert (projected.norm(dim=-1) <= r * (1 - 1e-5) + 1e-15).all()
    assert not poincare.check_point_on_manifold(x, c)
    with pytest.raises(ValueError, match="xi"):
        poincare.clip_features(x, 1.5, c)


@pytest.mark.parametrize(("seed", "c"), CASES)
def test_sphere(seed: int, c: float) -> None:
    g = _gen(seed)
    x, y, z = (torch.randn(64, 4, generator=g, dtype=F64) * 3 for _ in range(3))
    px = sphere.project(x, c)
    ok, reason = sphere.check_point_on_manifold(px, c, explain=True)
    assert ok, reason
    assert not sphere.check_point_on_manifold(px * 1.1, c)
    dxy = sphere.dist(x, y, c)
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
    torch.testing.assert_close(dxy, torch.acos(cos) / math.sqrt(c), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(dxy, sphere.dist(y, x, c))
    assert sphere.dist(x, x, c).abs().max() < 1e-12
    torch.testing.assert_close(sphere.dist(x, -x, c), torch.full((64,), math.pi / math.sqrt(c), dtype=F64))
    assert (sphere.dist(x, z, c) <= dxy + sphere.dist(y, z, c) + 1e-9).all()
    # angular logits: cosines, and with scale 1/c exactly the inner products of the projections (eq. 2–3)
    w = torch.randn(5, 4, generator=g, dtype=F64)
    logits = sphere.angular_logits(x, w)
    assert logits.shape == (64, 5) and logits.abs().max() <= 1 + 1e-12
    torch.testing.assert_close(sphere.angular_logits(x, w, 1 / c), px @ sphere.project(w, c).T)
