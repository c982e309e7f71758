"""Disk projection: hyperbolic distances from the origin kept, the hyperplane cut exact, every detector drawable."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from anomalens.engine.detectors import Embeddings
from anomalens.engine.errors import ConfigError
from anomalens.engine.geometry import lorentz, poincare
from anomalens.engine.projection import disk_views, project_embeddings


def _lorentz(n=600, d=12, c=0.7, seed=0, scale=0.8, in_plane=False, **kw) -> tuple[Embeddings, np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, d)) * scale * np.r_[2.0, 1.5, np.full(d - 2, 0.5)]
    if in_plane:
        v[:, 2:] = 0.0
    pts = lorentz.expmap0(torch.from_numpy(v), c).numpy()
    emb = Embeddings(points=pts, slice_index=np.repeat(np.arange(n // 20), 20), centers=rng.random((n, 2)) * 64,
                     manifold="lorentz", curvature=c, scores=rng.random(n), **kw)
    return emb, v


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_points_in_the_principal_plane_keep_their_hyperbolic_radius(seed):
    c = 0.7
    emb, v = _lorentz(seed=seed, c=c, in_plane=True)
    proj = project_embeddings(emb)
    assert proj.xy.shape == (len(v), 2) and np.all(np.linalg.norm(proj.xy, axis=1) < 1)
    # unit-disk radius ρ ↔ hyperbolic radius 2/√c · atanh(ρ)
    r_disk = 2 / math.sqrt(c) * np.arctanh(np.linalg.norm(proj.xy.astype(np.float64), axis=1))
    np.testing.assert_allclose(r_disk, np.linalg.norm(v, axis=1), rtol=2e-3, atol=2e-3)
    assert proj.explained == pytest.approx(1.0, abs=1e-6)
    assert "Lorentz" in proj.note and proj.curvature == c


def test_origin_stays_at_the_centre_and_poincare_matches_lorentz():
    c = 1.3
    emb, v = _lorentz(c=c, seed=3)
    emb.points[0] = lorentz.origin(v.shape[1], c, dtype=torch.float64).numpy()
    proj = project_embeddings(emb)
    assert np.abs(proj.xy[0]).max() < 1e-6  # no centring for hyperbolic embeddings
    ball = lorentz.to_poincare(torch.from_numpy(emb.points), c).numpy()
    as_ball = Embeddings(points=ball, slice_index=emb.slice_index, centers=emb.centers, manifold="poincare",
                         curvature=c, scores=emb.scores)
    np.testing.assert_allclose(project_embeddings(as_ball).xy, proj.xy, atol=2e-4)
    # the round trip through the engine's own Poincaré maps agrees
    back = poincare.expmap0(poincare.logmap0(torch.from_numpy(ball), c), c).numpy()
    np.testing.assert_allclose(back, ball, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 0.35, -0.6])
def test_the_drawn_geodesic_lies_on_the_hyperplane(offset):
    c = 0.9
    rng = np.random.default_rng(4)
    z = rng.standard_normal(10) * np.r_[1.0, 1.0, np.full(8, 0.2)]
    emb, _ = _lorentz(d=10, c=c, hyperplane=z, hyperplane_offset=offset)
    proj = project_embeddings(emb)
    assert proj.geodesic is not None and proj.geodesic.shape[1] == 2
    assert np.all(np.linalg.norm(proj.geodesic, axis=1) < 1)
    # lift the drawn polyline back into the d-dimensional hyperboloid through the same plane
    p2 = torch.from_numpy(proj.geodesic.astype(np.float64) / math.sqrt(c))
    x2 = lorentz.from_poincare(p2, c)
    x = torch.cat([x2[:, :1], x2[:, 1:] @ torch.from_numpy(proj.basis).T], dim=1)
    inner = np.abs(lorentz.hyperplane_distance(x, torch.from_numpy(z), offset, c).numpy())
    middle = np.linalg.norm(proj.geodesic, axis=1) < 0.95  # far out the float32 polyline loses digits
    assert inner[middle].max() < 1e-3


def test_a_hyperplane_that_misses_the_plane_is_not_drawn():
    c = 1.0
    z = np.zeros(6)
    z[5] = 1.0  # orthogonal to the plane the points span
    emb, _ = _lorentz(d=6, c=c, in_plane=True, hyperplane=z, hyperplane_offset=0.5)
    proj = project_embeddings(emb)
    assert proj.geodesic is None and "does not cross" in proj.note


def test_euclidean_features_are_drawn_with_a_note_and_their_linear_boundary():
    rng = np.random.default_rng(5)
    n, d = 400, 16
    feats = rng.random((n, d)).astype(np.float32) * 5 + 10  # far from the origin, like ReLU features
    w = rng.standard_normal(d)
    b = -float(w @ feats.mean(0))  # boundary through the data's centre
    emb = Embeddings(points=feats, slice_index=np.arange(n) % 7, centers=np.zeros((n, 2)), hyperplane=w,
                     hyperplane_offset=b)
    proj = project_embeddings(emb)
    r = np.linalg.norm(proj.xy, axis=1)
    assert np.all(r < 1) and np.quantile(r, 0.95) == pytest.approx(0.9, abs=0.02)
    assert "not hyperbolic" in proj.note and proj.scores is None
    assert proj.geodesic is not None and np.linalg.norm(proj.geodesic, axis=1).min() < 0.05  # through the centre


def test_per_slice_mode_takes_means_max_scores_and_top_patch():
    emb, _ = _lorentz(n=200, d=8, seed=6)
    proj = project_embeddings(emb, per_slice=True)
    assert len(proj) == 10 and list(proj.slice_index) == list(range(10))
    for k in (0, 7):
        sel = emb.slice_index == k
        assert proj.scores[k] == pytest.approx(emb.scores[sel].max())
        np.testing.assert_allclose(proj.centers[k], emb.centers[sel][np.argmax(emb.scores[sel])], rtol=1e-6)
    mean_k = lorentz.logmap0(torch.from_numpy(emb.points[emb.slice_index == 7]), emb.curvature).numpy().mean(0)
    r = 2 / math.sqrt(emb.curvature) * np.arctanh(np.linalg.norm(proj.xy[7].astype(np.float64)))
    assert r == pytest.approx(np.linalg.norm(mean_k @ proj.basis), rel=1e-3)


def test_slice_points_take_the_results_own_slice_scores_where_given():
    """The slice point's value is the curve's (the map's maximum), not its patches' highest sampled value."""
    emb, _ = _lorentz(n=200, d=8, seed=6)
    plain = project_embeddings(emb, per_slice=True)
    own = {0: 5.5, 7: -1.25}  # slice 3 etc. missing: they keep their highest patch score
    proj = project_embeddings(emb, per_slice=True, slice_scores=own)
    assert proj.scores[0] == pytest.approx(5.5) and proj.scores[7] == pytest.approx(-1.25)
    assert proj.scores[3] == pytest.approx(plain.scores[3])
    np.testing.assert_array_equal(proj.xy, plain.xy)  # only the values change, not where the points are
    np.testing.assert_array_equal(proj.centers, plain.centers)
    _, slices = disk_views(emb, None, "all", slice_scores=own)
    assert slices.scores[0] == pytest.approx(5.5)


def test_sphere_nonfinite_and_bad_input():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[3] = np.nan
    emb = Embeddings(points=x, slice_index=np.zeros(50, int), centers=np.zeros((50, 2)), manifold="sphere",
                     curvature=1.0, scores=np.arange(50.0))
    proj = project_embeddings(emb)
    assert len(proj) == 49 and "1 non-finite" in proj.note and "Sphere" in proj.note
    assert 3.0 not in proj.scores
    with pytest.raises(ConfigError, match="positive curvature"):
        project_embeddings(Embeddings(points=np.ones((3, 4)), slice_index=np.zeros(3), centers=np.zeros((3, 2)),
                                      manifold="lorentz", curvature=0.0))


def test_the_picture_is_deterministic_and_fast():
    emb, _ = _lorentz(n=5000, d=64, c=1.0, seed=8, scale=0.3)
    emb.points = emb.points.astype(np.float32)
    a = project_embeddings(emb)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the work itself: on a shared CI box, thread hand-offs dominate otherwise
    try:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            b = project_embeddings(emb)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(a.xy, b.xy, atol=1e-5)  # same picture whatever the thread count
    assert min(times) < 0.2  # measured ~3 ms on one core (bench/bench_projection.py --threads 1)


def test_the_disk_draws_the_head_that_holds_the_flagged_patches():
    """The Lorentz detector averages heads; the disk drew the first one's hyperplane, which held 30 of brain1's 50
    flagged patches where another held 49. It now draws the one that explains the result's own mask."""
    import dataclasses

    from anomalens.engine.projection import disk_views, explaining_view, hyperplane_side

    rng = np.random.default_rng(0)
    pts = rng.standard_normal((400, 2))
    base = dict(slice_index=np.repeat(np.arange(20), 20), centers=rng.random((400, 2)) * 64, manifold="euclidean",
                scores=rng.random(400))
    across_x = Embeddings(points=pts, hyperplane=np.array([1.0, 0.0]), hyperplane_of="head 1 of 2", **base)
    across_y = Embeddings(points=pts, hyperplane=np.array([0.0, 1.0]), hyperplane_of="head 2 of 2", **base)
    emb = dataclasses.replace(across_x, alternatives=(across_y,))
    flagged = (pts[:, 1] > 0.5) & (pts[:, 0] < 0)  # what the result's mask holds: all across head 2's line
    view = explaining_view(emb, flagged)
    assert view.hyperplane[1] == 1.0 and view.hyperplane_of.startswith("head 2 of 2, the one whose hyperplane")
    assert f"({int(flagged.sum())}; the others 0)" in view.hyperplane_of and not view.alternatives
    assert np.array_equal(hyperplane_side(view) > 0, pts[:, 1] > 0)
    # nothing flagged (an uncalibrated model) or no mask: the first head, as before
    assert explaining_view(emb, np.zeros(400, bool)).hyperplane[0] == 1.0
    assert explaining_view(emb, None).hyperplane[0] == 1.0
    # a tie keeps the first; the dock's entry point draws the chosen one and names it
    both = (pts[:, 0] > 0) & (pts[:, 1] > 0)
    assert explaining_view(emb, both).hyperplane[0] == 1.0
    patches, _ = disk_views(emb, None, "", flagged=flagged)
    assert patches.hyperplane_of.startswith("head 2 of 2") and np.array_equal(patches.side > 0, pts[:, 1] > 0)


def test_batches_of_a_result_keep_every_heads_view():
    """score_scan merges batches of slices: the other heads' views must follow (they were dropped, or refused)."""
    import dataclasses

    from anomalens.engine.detectors import AnomalyResult
    from anomalens.engine.pipeline import merge_results

    parts = []
    for b in range(2):
        e, _ = _lorentz(n=40, seed=b)
        alt = dataclasses.replace(e, points=e.points * 1.0, curvature=0.3, hyperplane_of="head 2 of 2")
        parts.append(AnomalyResult(heatmaps=np.zeros((2, 8, 8), np.float32), scores=np.zeros(2),
                                   embeddings=dataclasses.replace(e, slice_index=np.repeat([0, 1], 20),
                                                                  alternatives=(dataclasses.replace(
                                                                      alt, slice_index=np.repeat([0, 1], 20)),))))
    merged = merge_results(parts).embeddings
    assert merged is not None and len(merged.alternatives) == 1
    alt = merged.alternatives[0]
    assert len(alt.points) == 80 and alt.curvature == 0.3 and alt.hyperplane_of == "head 2 of 2"
    assert np.array_equal(alt.slice_index, merged.slice_index) and list(np.unique(merged.slice_index)) == [0, 1, 2, 3]


def test_the_viewers_store_keeps_every_heads_view_per_slice():
    import dataclasses

    from anomalens.app.embeddings import EmbeddingStore

    e, _ = _lorentz(n=40)
    e = dataclasses.replace(e, slice_index=np.repeat([0, 1], 20))
    alt = dataclasses.replace(e, points=e.points[::-1].copy(), curvature=0.3, hyperplane=np.ones(12),
                              hyperplane_of="head 2 of 2")
    store = EmbeddingStore()
    store.add(dataclasses.replace(e, alternatives=(alt,)), np.array([5, 9]), np.zeros((10, 64, 64), np.float32))
    out = store.combined()
    assert out is not None and len(out.alternatives) == 1
    view = out.alternatives[0]
    assert view.curvature == 0.3 and view.hyperplane_of == "head 2 of 2"
    assert np.array_equal(view.hyperplane, np.ones(12))
    np.testing.assert_array_equal(view.points, alt.points)  # slices 5 and 9 in order: the same patches as scored
    np.testing.assert_array_equal(view.slice_index, out.slice_index)


def test_the_viewers_store_keeps_only_patches_on_the_scan():
    """The working grid pads a scan to its field of view: 7,600 of brain1's 40,000 patches were centred off the
    scan; hovering one ringed a spot beside the image and the report counted them among the others."""
    import dataclasses

    from anomalens.app.embeddings import EmbeddingStore

    e, _ = _lorentz(n=40)
    centers = np.asarray(e.centers).copy()
    centers[:5] = [[-10.0, 5.0], [5.0, -10.0], [70.0, 5.0], [5.0, 80.0], [-1.0, 64.0]]  # four off, one on the edge
    e = dataclasses.replace(e, slice_index=np.zeros(40, int), centers=centers)
    store = EmbeddingStore()
    store.add(e, np.array([0]), np.zeros((1, 64, 64), np.float32))
    out = store.combined()
    assert out is not None and len(out.points) == 36
    assert [-1.0, 64.0] in out.centers.tolist() and [-10.0, 5.0] not in out.centers.tolist()
