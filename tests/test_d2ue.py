"""D2UE: the CKA's invariances, the grouped ensemble's exactness, dual-space maps, RAR, switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomalens.engine.errors import ConfigError
from anomalens.plugins.d2ue import D2UEDetector
from anomalens.plugins.d2ue.cka import linear_cka, mean_cka
from anomalens.plugins.d2ue.model import EnsembleAE, ensemble_maps, reconstruction_loss, stack_members
from tests.phantoms import phantom_slices

TINY = {"input_size": 32, "width": 4, "mid": 32, "latent": 8, "batch_size": 8, "fine_tune_epochs": 2}


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _orthogonal(d: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(40, 12, generator=gen, dtype=torch.float64)
    q = p[:, :7] @ torch.randn(7, 9, generator=gen, dtype=torch.float64) + 0.5 * torch.randn(
        40, 9, generator=gen, dtype=torch.float64)
    return p, q, gen


# -- CKA -------------------------------------------------------------------------------------------
def test_cka_matches_the_paper_formula_with_the_centring_matrix() -> None:
    p, q, _ = _features()
    r = p.shape[0]
    h = torch.eye(r, dtype=p.dtype) - torch.ones(r, r, dtype=p.dtype) / r

    def hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:  # eq. 3, literally
        return torch.trace(k @ h @ l_ @ h) / (r - 1) ** 2

    k, l_ = p @ p.T, q @ q.T
    expected = hsic(k, l_) / torch.sqrt(hsic(k, k)) / torch.sqrt(hsic(l_, l_))
    assert float(linear_cka(p, q)) == pytest.approx(float(expected), rel=1e-5)


def test_cka_is_invariant_to_isotropic_scaling() -> None:
    p, q, _ = _features(1)
    base = float(linear_cka(p, q))
    for alpha, beta in [(3.7, 0.01), (1e-3, 250.0), (42.0, 42.0)]:
        assert float(linear_cka(alpha * p, beta * q)) == pytest.approx(base, rel=1e-5)


def test_cka_is_invariant_to_orthogonal_transforms() -> None:
    p, q, gen = _features(2)
    base = float(linear_cka(p, q))
    for _ in range(3):
        u, v = _orthogonal(p.shape[1], gen), _orthogonal(q.shape[1], gen)
        assert float(linear_cka(p @ u, q @ v)) == pytest.approx(base, rel=1e-5)
    perm = torch.randperm(p.shape[1], generator=gen)  # a permutation of neurons is orthogonal too
    assert float(linear_cka(p[:, perm], q)) == pytest.approx(base, rel=1e-5)


def test_cka_is_not_invariant_to_anisotropic_scaling() -> None:
    """The invariance tests above could fail: a transform outside the two families changes CKA."""
    p, q, _ = _features(3)
    scale = torch.ones(p.shape[1], dtype=p.dtype)
    scale[:3] = 20.0
    assert abs(float(linear_cka(p * scale, q)) - float(linear_cka(p, q))) > 0.02


def test_cka_range_symmetry_and_extremes() -> None:
    p, q, gen = _features(4)
    assert float(linear_cka(p, p)) == pytest.approx(1.0, rel=1e-6)
    assert float(linear_cka(p, q)) == pytest.approx(float(linear_cka(q, p)), rel=1e-6)
    assert 0.0 <= float(linear_cka(p, q)) <= 1.0
    unrelated = torch.randn(2000, 5, generator=gen, dtype=torch.float64)
    other = torch.randn(2000, 5, generator=gen, dtype=torch.float64)
    assert float(linear_cka(unrelated, other)) < 0.05
    assert float(linear_cka(torch.ones(10, 4), torch.randn(10, 4))) == 0.0  # no geometry: 0, not NaN


def test_mean_cka_only_moves_the_new_learner() -> None:
    p, q, _ = _features(5)
    trained = [p.clone().requires_grad_(True), (2 * p[:, :5]).clone().requires_grad_(True)]
    cur = q.clone().requires_grad_(True)
    loss = mean_cka(trained, cur)
    expected = (linear_cka(p, q) + linear_cka(2 * p[:, :5], q)) / 2
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    loss.backward()
    assert cur.grad is not None and torch.isfinite(cur.grad).all() and cur.grad.abs().sum() > 0
    assert all(t.grad is None for t in trained)
    assert float(mean_cka([], cur)) == 0.0


# -- the grouped ensemble ----------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["ae", "aeu"])
def test_grouped_ensemble_equals_separate_learners(backbone: str) -> None:
    torch.manual_seed(0)
    learners = [EnsembleAE(1, 32, backbone, width=4, mid=16, latent=4).eval() for _ in range(3)]
    for lr in learners:  # non-trivial batch-norm statistics
        for mod in lr.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    ens = stack_members(learners).eval()
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        recon, log_var, feat = ens(x.expand(-1, 3, -1, -1), "enc2")
        for i, lr in enumerate(learners):
            r, lv, f = lr(x, "enc2")
            torch.testing.assert_close(recon[:, i:i + 1], r, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(feat[:, i:i + 1], f, rtol=1e-5, atol=1e-6)
            if backbone == "aeu":
                torch.testing.assert_close(log_var[:, i:i + 1], lv, rtol=1e-5, atol=1e-6)
            else:
                assert log_var is None and lv is None
            back = ens.member(i).eval()
            torch.testing.assert_close(back(x)[0], r, rtol=1e-5, atol=1e-6)


def test_input_size_128_is_selectable() -> None:
    model = EnsembleAE(2, 128, "aeu", width=4, mid=16, latent=4).eval()
    recon, log_var, _ = model(torch.rand(2, 2, 128, 128))
    assert recon.shape == (2, 2, 128, 128) and log_var is not None and log_var.shape == recon.shape


def test_losses_per_member() -> None:
    x = torch.zeros(2, 1, 4, 4)
    recon = torch.stack([torch.full((2, 4, 4), 1.0), torch.full((2, 4, 4), 2.0)], dim=1)
    torch.testing.assert_close(reconstruction_loss(recon, None, x), torch.tensor([1.0, 4.0]))
    log_var = torch.full_like(recon, float(np.log(4.0)))
    expected = torch.tensor([1.0 / 4 + np.log(4.0), 4.0 / 4 + np.log(4.0)], dtype=torch.float32)
    torch.testing.assert_close(reconstruction_loss(recon, log_var, x), expected)


@pytest.mark.parametrize("backbone", ["ae", "aeu"])
def test_dual_space_map_equals_per_learner_gradients(backbone: str) -> None:
    """One batched backward gives each learner its own ∇ₓL (eq. 6), as a per-learner loop computes it."""
    torch.manual_seed(1)
    learners = [EnsembleAE(1, 32, backbone, width=4, mid=16, latent=4).eval() for _ in range(3)]
    ens = stack_members(learners).eval()
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    maps = ensemble_maps(ens, x, ("dual", "output", "reconstruction"))
    products, recons, variances = [], [], []
    for lr in learners:
        xi = x.clone().requires_grad_(True)
        recon, log_var, _ = lr(xi)
        err = (recon - xi).abs() if log_var is None else torch.exp(-log_var) * (recon - xi) ** 2
        (g,) = torch.autograd.grad(err.sum(), xi)
        products.append(g * (recon - x).abs().detach())
        recons.append(recon.detach())
        variances.append(None if log_var is None else torch.exp(log_var.detach()))
    prod = torch.cat(products, 1)
    rec = torch.cat(recons, 1)
    if backbone == "aeu":
        var = torch.cat(variances, 1).mean(1)
        expected_dual = (prod / var.sqrt().unsqueeze(1)).std(1)
        expected_out = (rec.var(1) / var).sqrt()
        expected_rec = (x[:, 0] - rec.mean(1)) ** 2 / var
    else:
        expected_dual, expected_out = prod.std(1), rec.std(1)
        expected_rec = (x[:, 0] - rec.mean(1)) ** 2
    torch.testing.assert_close(maps["dual"], expected_dual, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(maps["output"], expected_out, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(maps["reconstruction"], expected_rec, rtol=1e-4, atol=1e-7)
    assert float(maps["dual"].abs().sum()) > 0


# -- the detector ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    normals, _ = phantom_slices(16, 48, seed=11)
    tests, masks = phantom_slices(4, 48, seed=12, lesion=True)
    return {"normals": normals, "tests": tests, "masks": masks}


def _fit(data, **cfg) -> D2UEDetector:
    det = D2UEDetector(config={**TINY, **cfg}, device="cpu", seed=3)
    return det.fit(data["normals"])


def test_repulsion_lowers_feature_similarity_between_learners(data) -> None:
    """RAR's purpose: with λ = 1 the later learners' latent features are less CKA-similar to the first's."""
    cka = {}
    for rep in (True, False):
        det = _fit(data, n_learners=2, epochs=25, repulsion=rep)
        assert det.model is not None
        x = det._inputs(data["normals"])
        with torch.no_grad():
            _, _, f = det.model(x.expand(-1, 2, -1, -1), "latent")
        cka[rep] = float(linear_cka(f[:, 0], f[:, 1]))
        log = det.training_log["learners"]
        assert (log[1]["final_cka"] is not None) == rep
    assert cka[True] < cka[False] - 0.05, cka


def test_switches_change_the_maps_and_scores(data) -> None:
    det = _fit(data, epochs=3, backbone="ae")
    raw = det.raw_maps(data["tests"], ("dual", "output", "reconstruction"))
    assert not torch.allclose(raw["dual"], raw["output"])
    for kind in ("dual", "output", "reconstruction"):
        det.config.uncertainty = kind
        res = det.score(data["tests"])
        assert res.info["uncertainty"] == kind
        np.testing.assert_allclose(res.heatmaps, det.to_result(raw[kind], data["tests"].shape[1:]).heatmaps,
                                   rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(res.scores, res.heatmaps.reshape(4, -1).mean(1), rtol=1e-5)
    det.config.image_score = "max"
    res = det.score(data["tests"])
    np.testing.assert_allclose(res.scores, res.heatmaps.reshape(4, -1).max(1), rtol=1e-6)


def test_scores_under_no_grad_and_on_non_square_grids(data) -> None:
    det = _fit(data, epochs=1)
    with torch.no_grad():
        a = det.score(data["tests"])
    b = det.score(data["tests"])
    np.testing.assert_allclose(a.heatmaps, b.heatmaps, rtol=1e-6)
    wide = np.concatenate([data["tests"], data["tests"][:, :, :16]], axis=2)
    res = det.score(wide)
    assert res.heatmaps.shape == wide.shape and np.isfinite(res.heatmaps).all() and (res.heatmaps >= 0).all()


def test_dual_space_map_finds_the_phantom_lesion(data) -> None:
    det = _fit(data, epochs=60, backbone="ae", n_learners=3, smoothing_sigma=0.0)
    res = det.score(data["tests"])
    inside = res.heatmaps[data["masks"]].mean()
    ring = np.zeros_like(data["masks"])
    ring[:, 12:36, 12:36] = True  # tissue around the lesions, same brightness band as training
    outside = res.heatmaps[ring & ~data["masks"]].mean()
    assert inside > 2 * outside, (inside, outside)


def test_fine_tune_updates_every_learner_but_keeps_batch_norm_statistics(data) -> None:
    det = _fit(data, epochs=1)
    assert det.model is not None
    before = {k: v.clone() for k, v in det.model.state_dict().items()}
    det.fine_tune(data["normals"][:3])
    after = det.model.state_dict()
    for k, v in before.items():
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(after[k], v)
    w0, w1 = before["encoder.0.0.weight"], after["encoder.0.0.weight"]
    per_member = (w1 - w0).abs().reshape(det.model.members, -1).sum(1)
    assert (per_member > 0).all()
    assert not any(p.requires_grad for p in det.model.parameters())


@pytest.mark.parametrize("bad", [{"uncertainty": "both"}, {"n_learners": 1}, {"input_size": 40},
                                 {"image_score": "median"}, {"backbone": "memae"}, {"feature_layer": "z9"},
                                 {"lam": -1.0}])
def test_bad_options_are_refused_clearly(bad) -> None:
    with pytest.raises(ConfigError):
        D2UEDetector(config=bad)
