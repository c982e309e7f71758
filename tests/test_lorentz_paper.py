"""Lorentz detector, issue #20: the fast embedding path, the head-alone output and the feature-norm option."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalens.engine.detectors import load_bundle
from anomalens.engine.errors import ConfigError
from anomalens.engine.geometry import lorentz
from anomalens.plugins.lorentz import LorentzDetector
from anomalens.plugins.lorentz.head import LorentzHead
from tests.phantoms import phantom_slices


@pytest.fixture(scope="module")
def data():
    normals, _ = phantom_slices(6, 64, seed=3)
    tests, _ = phantom_slices(2, 64, seed=4, lesion=True)
    return normals, tests


def make(**kw) -> LorentzDetector:
    return LorentzDetector(config={**LorentzDetector.test_config(), **kw}, seed=0)


@pytest.mark.parametrize("scale", [0.0, 0.05, 1.0, 4.0, 8.0])
def test_fast_embedding_equals_the_library_maps(scale: float) -> None:
    """exp map + Lorentz linear + centroid, fused into per-row scalars, is the same map with the same gradients.

    Scales cover the series branch (tiny norms), the nearly flat default (√c·r ≈ 1) and the curved regime
    (√c·r of 2–7, where coordinates reach e⁷).
    """
    torch.manual_seed(0)
    head = LorentzHead({"a": 5, "b": 12}, 8, curvature=0.7)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))  # the time column and bias start at zero: make them matter
    feats = {"a": torch.randn(50, 5) * scale / 5 ** 0.5, "b": torch.randn(50, 12) * scale / 12 ** 0.5}
    feats["a"][0] = 0.0  # a zero vector: the exp map's origin
    fast = head.embed(feats)
    g_fast = torch.autograd.grad(head.logit(fast).sum(), list(head.parameters()))
    # The oracle: the library's maps step by step, in float64 (both float32 paths round differently where
    # the centroid's Minkowski norm cancels, so each is compared with the exact value).
    ref_head = copy.deepcopy(head).double()
    ref = ref_head.embed_reference({k: v.double() for k, v in feats.items()})
    g_ref = torch.autograd.grad(ref_head.logit(ref).sum(), list(ref_head.parameters()))
    assert lorentz.check_point_on_manifold(fast.double(), head.curvature, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fast.double(), ref, rtol=5e-4, atol=1e-5 * float(ref.detach().abs().max()))
    lib32 = head.embed_reference(feats)
    g_lib = torch.autograd.grad(head.logit(lib32).sum(), list(head.parameters()))
    err_fast, err_lib = (fast.detach().double() - ref).abs().max(), (lib32.detach().double() - ref).abs().max()
    assert err_fast <= 2 * err_lib + 1e-6, "no less accurate than the library's own float32 path"
    for a, b, lib in zip(g_fast, g_ref, g_lib, strict=True):
        assert torch.isfinite(a).all()
        err_fast, err_lib = (a.double() - b).abs().max(), (lib.double() - b).abs().max()
        # Far out (√c·r ≈ 7) the curvature's gradient loses digits to the centroid's cancellation either way.
        assert err_fast <= 5 * err_lib + 1e-3 * float(b.abs().max()) + 1e-7, "gradients as accurate as the library's"


def test_fast_embedding_stays_finite_at_the_cosh_clamp() -> None:
    """Far past float32's useful range (√c·r ≫ 20) the point stops moving outwards instead of overflowing."""
    torch.manual_seed(0)
    head = LorentzHead({"a": 5, "b": 12}, 8)
    feats = {"a": torch.randn(20, 5) * 100, "b": torch.randn(20, 12) * 100}
    z = head.embed(feats)
    assert torch.isfinite(z).all()
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(head.logit(z).sum(), list(head.parameters())))


def test_head_output_is_the_classifier_alone_from_the_same_model(data, tmp_path: Path) -> None:
    normals, tests = data
    det = make().fit(normals)
    fused = det.score(tests)
    det.config.output = "head"
    alone = det.score(tests)
    assert "mean anomaly probability" in alone.info["heatmap"] and "memory bank" in fused.info["heatmap"]
    assert 0.0 <= alone.heatmaps.min() and np.isfinite(alone.heatmaps).all()
    assert not np.allclose(alone.heatmaps, fused.heatmaps)
    # Same probabilities under both outputs: only the map differs.
    np.testing.assert_allclose(alone.embeddings.scores, fused.embeddings.scores, atol=1e-6)
    # The option is saved with the model and can be switched on a loaded bundle without refitting.
    back = load_bundle(det.save(tmp_path / "m"))
    assert back.config.output == "head"
    np.testing.assert_allclose(back.score(tests).heatmaps, alone.heatmaps, atol=1e-5)
    back.config.output = "fused"
    np.testing.assert_allclose(back.score(tests).heatmaps, fused.heatmaps, atol=1e-4)


def test_feature_norm_sets_the_radius_before_the_exp_map(data) -> None:
    normals, _ = data
    norms = {}
    for fn in (1.0, 3.0):
        det = make(feature_norm=fn, n_heads=1, epochs=1, fuse_memory=False).fit(normals)
        raw = det._raw_features(normals, None)
        flat = det._flatten(det._standardise(raw))
        norms[fn] = {lv: float(v.pow(2).sum(1).mean().sqrt()) for lv, v in flat.items()}
    for lv, r in norms[1.0].items():
        assert r == pytest.approx(1.0, rel=0.05), "z-scores over √C: RMS norm 1 on the normals"
        assert norms[3.0][lv] == pytest.approx(3 * r, rel=1e-4)


def test_bad_output_and_feature_norm_are_refused() -> None:
    with pytest.raises(ConfigError, match="output"):
        make(output="memory")
    with pytest.raises(ConfigError, match="feature_norm"):
        make(feature_norm=0.0)


def test_a_bundle_saved_before_these_options_loads_as_it_scored(data, tmp_path: Path) -> None:
    """Older bundles name neither ``output`` nor ``feature_norm``: they load fused, at norm 1, unchanged."""
    normals, tests = data
    det = make().fit(normals)
    want = det.score(tests).heatmaps
    path = det.save(tmp_path / "m")
    manifest = json.loads((path / "bundle.json").read_text())
    for key in ("output", "feature_norm"):
        del manifest["config"][key]
    (path / "bundle.json").write_text(json.dumps(manifest))
    back = load_bundle(path)
    assert back.config.output == "fused" and back.config.feature_norm == 1.0
    np.testing.assert_allclose(back.score(tests).heatmaps, want, atol=1e-5)


def test_head_evidence_is_the_mean_probability_in_nats_without_its_saturation() -> None:
    from anomalens.plugins.lorentz.detector import LorentzDetector

    z = torch.tensor([[-3.0, 0.5, 2.0, 20.0, 20.0], [1.0, -0.5, 4.0, 25.0, 40.0]], dtype=torch.float64)
    p = torch.sigmoid(z).mean(0)
    ev = LorentzDetector._evidence(z)
    np.testing.assert_allclose(ev[:3].numpy(), (-torch.log1p(-p[:3])).numpy(), rtol=1e-10)
    # In float32 these patches' mean probabilities tie at 1; their evidence still orders them.
    z32 = z.float()
    assert torch.sigmoid(z32[:, 3:]).mean(0).tolist() == [1.0, 1.0]
    e32 = LorentzDetector._evidence(z32)
    assert torch.isfinite(e32).all() and e32[4] > e32[3] > e32[2] > e32[1]


def test_bundles_saved_before_the_evidence_map_keep_the_probability_they_were_calibrated_on(data, tmp_path) -> None:
    normals, tests = data
    det = make(output="head").fit(normals)
    path = det.save(tmp_path / "m")
    assert load_bundle(path).head_map == "evidence"
    manifest = json.loads((path / "bundle.json").read_text())
    del manifest["extra"]["head_map"]  # as every bundle written before 2026-12-06
    (path / "bundle.json").write_text(json.dumps(manifest))
    old = load_bundle(path)
    assert old.head_map == "probability"
    maps = old.score(tests).heatmaps
    assert 0.0 <= maps.min() and maps.max() <= 1.0 and "mean anomaly probability" in old.score(tests).info["heatmap"]
    assert not np.allclose(maps, det.score(tests).heatmaps)
