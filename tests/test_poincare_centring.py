"""Centring the Poincaré disk on normal tissue: the isometries' properties, in float64 over several seeds.

As geoopt tests its manifolds: random points, curvatures and dimensions; an isometry must keep pairwise
distances (to ~1e-9), put the reference centroid at the origin, keep points on the manifold, and move the
classifier hyperplane so that every point keeps its side and its signed distance. Then the projection:
a blob far from the origin (what a trained Lorentz model gives, brain1's "blob near the rim") is centred,
spread, and its anomalous points drawn across the hyperplane.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from anomalens.engine.detectors import Embeddings
from anomalens.engine.errors import ConfigError
from anomalens.engine.geometry import isometries, lorentz, sphere
from anomalens.engine.projection import (
    NORMAL_RADIUS,
    centre_embeddings,
    disk_views,
    geodesic_polyline,
    project_embeddings,
    reference_selection,
)

CASES = [(seed, c, d) for seed, (c, d) in enumerate([(1.0, 2), (0.05, 8), (0.5, 16), (4.0, 5), (0.02, 64), (1.7, 3)])]


def _points(seed: int, c: float, d: int, n: int = 80, far: float = 2.0) -> torch.Tensor:
    """Points on the hyperboloid: a cloud of spread ~1 around a centre ``far`` from the origin (float64)."""
    rng = np.random.default_rng(seed)
    v = torch.from_numpy(rng.standard_normal((n, d)) / math.sqrt(c) * 0.5)
    centre = torch.from_numpy(rng.standard_normal(d))
    centre = centre / centre.norm() * far / math.sqrt(c)
    p = lorentz.expmap0(centre, c)
    to_p = isometries.lorentz_boost(torch.cat([p[:1], -p[1:]]), c)  # origin → p
    return isometries.lorentz_apply(lorentz.expmap0(v, c), to_p, c)


def _pairwise(x: torch.Tensor, c: float) -> torch.Tensor:
    return lorentz.dist(x[:, None, :], x[None, :, :], c)


@pytest.mark.parametrize(("seed", "c", "d"), CASES)
def test_the_boost_is_an_isometry_that_centres_the_reference(seed, c, d):
    x = _points(seed, c, d)
    ref = torch.from_numpy(np.random.default_rng(seed + 100).random(len(x)) < 0.7)
    m = lorentz.centroid(x[ref], None, c)
    assert float(lorentz.dist0(m, c)) > 0.5 / math.sqrt(c)  # a real move, not the identity
    boost = isometries.lorentz_boost(m, c)
    y = isometries.lorentz_apply(x, boost, c)
    # Minkowski-orthogonal: Lᵀ J L = J
    j = torch.diag(torch.tensor([-1.0] + [1.0] * d, dtype=torch.float64))
    torch.testing.assert_close(boost.T @ j @ boost, j, atol=1e-10, rtol=0)
    # distances kept, centroid at the origin, points on the manifold
    before, after = _pairwise(x, c), _pairwise(y, c)
    assert float((before - after).abs().max()) < 1e-9 * max(1.0, float(before.max()))
    assert float(lorentz.dist0(isometries.lorentz_apply(m, boost, c), c)) < 1e-9
    assert float(lorentz.dist0(lorentz.centroid(y[ref], None, c), c)) < 1e-9  # the centroid is equivariant
    assert lorentz.check_point_on_manifold(y, c, rtol=1e-9)
    # the distance of each point from the new origin is its distance from the old centroid
    torch.testing.assert_close(lorentz.dist0(y, c), lorentz.dist(x, m.expand_as(x), c), atol=1e-9, rtol=1e-9)
    # the inverse boost brings the points back
    back = isometries.lorentz_apply(y, isometries.lorentz_boost(torch.cat([m[:1], -m[1:]]), c), c)
    torch.testing.assert_close(back, x, atol=1e-8 * float(x.abs().max()), rtol=0)


@pytest.mark.parametrize(("seed", "c", "d"), CASES)
def test_the_hyperplane_moves_with_the_points(seed, c, d):
    rng = np.random.default_rng(seed + 7)
    x = _points(seed, c, d)
    m = lorentz.centroid(x, None, c)
    z = torch.from_numpy(rng.standard_normal(d))
    a = float(rng.normal(0, 1.5)) / math.sqrt(c)
    z2, a2 = isometries.lorentz_translate_hyperplane(z, a, m, c)
    y = isometries.lorentz_translate(x, m, c)
    # each point keeps its logit, hence its side and its signed distance (logit / |z|); |z| is kept
    assert float(z2.norm()) == pytest.approx(float(z.norm()), rel=1e-10)
    l0, l1 = lorentz.hyperplane_logit(x, z, a, c), lorentz.hyperplane_logit(y, z2, a2, c)
    torch.testing.assert_close(l1, l0, atol=1e-9 * max(1.0, float(l0.abs().max())), rtol=0)
    assert torch.equal(l0 > 0, l1 > 0)
    torch.testing.assert_close(lorentz.hyperplane_distance(y, z2, a2, c), lorentz.hyperplane_distance(x, z, a, c),
                               atol=1e-9, rtol=1e-9)
    # a2 is the signed distance from the old centroid (now the origin) to the hyperplane
    d_m = float(lorentz.hyperplane_logit(m, z, a, c)) / float(z.norm())
    assert float(a2) == pytest.approx(-d_m, abs=1e-9)
    # (z, a) ↔ Minkowski normal round trip
    zz, aa = isometries.hyperplane_from_normal(lorentz.hyperplane_normal(z, a, c), c)
    torch.testing.assert_close(zz, z, atol=1e-10, rtol=1e-10)
    assert float(aa) == pytest.approx(a, abs=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_the_sphere_rotation_and_the_euclidean_translation_are_isometries(seed):
    rng = np.random.default_rng(seed)
    d, c = 7, 2.0
    x = torch.from_numpy(rng.standard_normal((40, d)) + np.r_[3.0, np.zeros(d - 1)] * (seed % 2 * 2 - 1))
    x = sphere.project(x, c)
    mean = x.mean(0)
    rot = isometries.sphere_rotation(mean)
    torch.testing.assert_close(rot @ rot.T, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    assert float(torch.linalg.det(rot)) == pytest.approx(1.0, abs=1e-10)  # a rotation, not a reflection
    torch.testing.assert_close(rot @ (mean / mean.norm()), torch.eye(d, dtype=torch.float64)[0], atol=1e-12, rtol=0)
    y = x @ rot.T
    torch.testing.assert_close(sphere.dist(y[:, None], y[None], c), sphere.dist(x[:, None], x[None], c),
                               atol=1e-9, rtol=0)
    # the log map at the pole: length = geodesic distance from the pole
    pole = torch.eye(d, dtype=torch.float64)[0] / math.sqrt(c)
    torch.testing.assert_close(isometries.sphere_logmap_pole(y, c).norm(dim=-1),
                               sphere.dist(y, pole.expand_as(y), c), atol=1e-9, rtol=0)
    # the antipode of the pole: still a rotation to the pole
    anti = isometries.sphere_rotation(-torch.eye(d, dtype=torch.float64)[0])
    torch.testing.assert_close(anti @ -torch.eye(d, dtype=torch.float64)[0], torch.eye(d, dtype=torch.float64)[0])
    # Euclidean: a translation moves the boundary's offset so w·x + b is unchanged
    feats = rng.standard_normal((30, d)) + 5
    w, b = rng.standard_normal(d), 0.3
    emb = Embeddings(points=feats, slice_index=np.zeros(30, int), centers=np.zeros((30, 2)), hyperplane=w,
                     hyperplane_offset=b)
    moved = centre_embeddings(emb, np.ones(30, bool)).embeddings
    np.testing.assert_allclose(moved.points.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(moved.points @ w + moved.hyperplane_offset, feats @ w + b, atol=1e-10)


def test_poincare_embeddings_are_centred_like_their_lorentz_twins():
    c = 0.8
    x = _points(3, c, 5)
    ref = np.arange(len(x)) % 3 > 0
    lz = Embeddings(points=x.numpy(), slice_index=np.zeros(len(x), int), centers=np.zeros((len(x), 2)),
                    manifold="lorentz", curvature=c)
    ball = Embeddings(points=lorentz.to_poincare(x, c).numpy(), slice_index=lz.slice_index, centers=lz.centers,
                      manifold="poincare", curvature=c)
    a, b = centre_embeddings(lz, ref), centre_embeddings(ball, ref)
    np.testing.assert_allclose(lorentz.to_poincare(torch.from_numpy(a.embeddings.points), c).numpy(),
                               b.embeddings.points, atol=1e-9)
    assert a.shift == pytest.approx(b.shift, rel=1e-9) and a.shift > 1.0


def _blob(seed: int = 0, n: int = 600, d: int = 12, c: float = 0.5):
    """A trained model's picture: normal blob far out, 10 % anomalies moved along z beyond the hyperplane."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)) * 0.12
    anomalous = np.arange(n) % 10 == 0
    v[anomalous, 0] += 1.2
    far = rng.standard_normal(d)
    far *= 2.2 / np.linalg.norm(far)
    p = lorentz.expmap0(torch.from_numpy(far), c)
    to_far = isometries.lorentz_boost(torch.cat([p[:1], -p[1:]]), c)
    pts = isometries.lorentz_apply(lorentz.expmap0(torch.from_numpy(v), c), to_far, c)
    z0 = torch.zeros(d, dtype=torch.float64)
    z0[0] = 3.0
    z, a = isometries.hyperplane_from_normal(to_far @ lorentz.hyperplane_normal(z0, 0.6, c), c)
    scores = np.where(anomalous, 2.0, 0.5) + rng.random(n) * 0.1
    emb = Embeddings(points=pts.numpy(), slice_index=np.repeat(np.arange(n // 20), 20), centers=rng.random((n, 2)),
                     manifold="lorentz", curvature=c, scores=scores, hyperplane=z.numpy(), hyperplane_offset=float(a))
    return emb, anomalous, pts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_blob_near_the_rim_is_centred_spread_and_split_by_the_hyperplane(seed):
    emb, anomalous, pts = _blob(seed)
    old = np.hypot(*project_embeddings(emb).xy.astype(np.float64).T)
    assert old.min() > 0.5 and np.ptp(old) < 0.3  # the picture: one small blob near the rim
    normal, how = reference_selection(emb.scores, threshold=1.0)
    assert normal.sum() == (~anomalous).sum() and "below the calibrated threshold" in how
    patches, slices = disk_views(emb, normal, how)
    r = np.hypot(*patches.xy.astype(np.float64).T)
    assert np.quantile(r, 0.95) >= 0.5  # spread over at least half the disk's radius
    assert np.quantile(r[normal], 0.95) == pytest.approx(NORMAL_RADIUS, abs=0.02)
    assert np.median(r[~normal]) > np.quantile(r[normal], 0.9)  # normal near the centre, anomalies further out
    assert patches.scale > 1 and "not an isometry" in patches.note and "below the calibrated threshold" in patches.note
    # exact sides equal the uncentred model's own (the isometry moves no point across)
    zt = torch.from_numpy(np.asarray(emb.hyperplane))
    exact = (lorentz.hyperplane_logit(pts, zt, emb.hyperplane_offset, emb.curvature) / zt.norm()).numpy()
    np.testing.assert_allclose(patches.side, exact, atol=1e-5)
    assert np.all(patches.side[anomalous] > 0) and np.all(patches.side[~anomalous] < 0)
    # drawn: anomalies right of the line, normal points left; the line crosses the picture
    assert np.mean(patches.drawn_side[anomalous] > 0) > 0.9 and np.mean(patches.drawn_side[~anomalous] < 0) > 0.9
    assert patches.geodesic is not None and patches.xy[anomalous, 0].mean() > patches.xy[~anomalous, 0].mean()
    assert len(slices) == 30 and slices.side is not None


@pytest.mark.parametrize(("c", "a", "scale"), [(0.5, 0.7, 1.0), (0.5, 0.7, 3.0), (2.0, -0.3, 0.4), (1.0, 0.0, 2.0)])
def test_the_drawn_boundary_is_the_hyperplane_through_the_display_map(c, a, scale):
    z2 = np.array([0.6, -0.8]) * 2.0
    line = geodesic_polyline(z2, a, c, scale)
    rho = np.linalg.norm(line, axis=1)
    assert rho.max() == pytest.approx(0.999, abs=1e-6) and np.all(rho < 1)
    # undo the display map: radius ρ ↔ tangent length 2 atanh(ρ) / (√c · scale), then exp map in 2-D
    u = line / np.maximum(rho, 1e-300)[:, None] * (2 * np.arctanh(rho) / (math.sqrt(c) * scale))[:, None]
    x = lorentz.expmap0(torch.from_numpy(u), c)
    dist = lorentz.hyperplane_distance(x, torch.from_numpy(z2), a, c).numpy()
    assert dist[rho < 0.99].max() < 1e-9  # on the hyperplane (the rim itself has no digits left)


def test_which_patches_are_normal_and_bad_references():
    values = np.array([0.2, 0.5, 1.5, 0.1, 2.0, 0.3])
    z = np.array([0, 0, 1, 1, 2, 2])
    ref, how = reference_selection(values, threshold=1.0, slice_index=z, marked=[2, 7])
    assert ref.tolist() == [False, False, False, False, True, True] and "marked normal" in how  # marks first
    ref, how = reference_selection(values, threshold=1.0, slice_index=z, marked=[7])  # marked slice not scored
    assert ref.tolist() == [True, True, False, True, False, True] and "below the calibrated threshold" in how
    ref, how = reference_selection(values, threshold=None, slice_index=z)
    assert ref.all() and "all 6 patches" in how
    emb, _, _ = _blob(n=40)
    with pytest.raises(ConfigError, match="reference mask"):
        centre_embeddings(emb, np.ones(3, bool))
    # an empty reference falls back to all points; product embeddings are left alone with a note
    assert centre_embeddings(emb, np.zeros(40, bool)).centred
    prod = Embeddings(points=np.ones((4, 3)), slice_index=np.zeros(4, int), centers=np.zeros((4, 2)),
                      manifold="product")
    out = centre_embeddings(prod, np.ones(4, bool))
    assert not out.centred and "product" in out.note
    with pytest.raises(ConfigError, match="plane must be"):
        project_embeddings(emb, plane="sideways")


def test_sphere_features_are_centred_on_the_normal_direction():
    rng = np.random.default_rng(11)
    d, c = 6, 1.0
    base = np.r_[0.0, 0.0, 1.0, np.zeros(d - 3)]
    x = base + rng.standard_normal((200, d)) * 0.1
    x[:20] += np.r_[1.0, np.zeros(d - 1)]  # anomalies off towards the first axis
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = Embeddings(points=x, slice_index=np.zeros(200, int), centers=np.zeros((200, 2)), manifold="sphere",
                     curvature=c, scores=np.r_[np.ones(20), np.zeros(180)])
    normal = np.arange(200) >= 20
    proj = project_embeddings(emb, reference=normal, reference_note="the test's normals")
    r = np.hypot(*proj.xy.astype(np.float64).T)
    assert "rotation of the sphere" in proj.note and "display only" in proj.note
    assert np.median(r[~normal]) > np.quantile(r[normal], 0.9)
