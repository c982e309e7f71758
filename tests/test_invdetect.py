"""InvDetect plugin: batched inversion, round trip, Gaussian aggregation, pickle-free SVM, SCR features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anomalens.engine.errors import ConfigError
from anomalens.plugins.invdetect import InvDetectDetector
from anomalens.plugins.invdetect.diffusion import ddim_generate, ddim_invert, make_unet, schedulers
from anomalens.plugins.invdetect.ocsvm import KernelOCSVM, fit_ocsvm, latent_gamma
from anomalens.plugins.invdetect.patches import aggregate, extract_patches, gaussian_kernel, n_patches
from tests.phantoms import phantom_slices


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny U-Nets are dominated by thread hand-offs on a shared CI box; one thread is several times faster."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    normals, _ = phantom_slices(6, 64, seed=1)
    tests, masks = phantom_slices(2, 64, seed=2, lesion=True)
    return {"normals": normals, "tests": tests, "masks": masks}


@pytest.fixture(scope="module")
def fitted(data) -> InvDetectDetector:
    det = InvDetectDetector(InvDetectDetector.test_config(), seed=3)
    return det.fit(data["normals"])


@pytest.fixture(scope="module")
def trained_unet(data):
    """A tiny U-Net trained long enough that its noise predictions are self-consistent (round trip)."""
    cfg = InvDetectDetector.test_config() | {"channels": (8, 16), "epochs": 40, "batch_size": 16}
    det = InvDetectDetector(cfg, seed=0).fit(data["normals"])
    patches, _ = extract_patches(det._grid(data["normals"][:2]), 16, 8)
    return det.unet, patches


def test_batched_inversion_equals_per_patch() -> None:
    torch.manual_seed(0)
    unet = make_unet(16, (4, 8), 1, 4).eval()
    _, inverse = schedulers(1000)
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    batched = ddim_invert(unet, inverse, x, 4)
    single = torch.cat([ddim_invert(unet, inverse, x[i:i + 1], 4) for i in range(len(x))])
    assert not torch.allclose(batched, x)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


def test_inversion_then_generation_reconstructs_the_patch(trained_unet) -> None:
    unet, patches = trained_unet
    gen, inverse = schedulers(1000)
    x = patches[::6]
    errs = {}
    for steps in (5, 80):
        z = ddim_invert(unet, inverse, x, steps)
        errs[steps] = float((ddim_generate(unet, gen, z, steps) - x).abs().mean())
    assert errs[80] < 0.25, errs  # patches span [−1, 1]
    assert errs[80] < errs[5] / 3, errs


def test_patches_cover_the_slice_with_half_overlap() -> None:
    x = torch.arange(2 * 40 * 44, dtype=torch.float32).reshape(2, 1, 40, 44)
    p, padded = extract_patches(x, 16, 8)
    assert padded == (40, 48)
    assert len(p) == 2 * n_patches(40, 44, 16, 8) == 2 * 4 * 5
    torch.testing.assert_close(p[1], x[0, :, 0:16, 8:24])  # slice-major, row-major, stride b/2


def _naive_aggregate(values: np.ndarray, h: int, w: int, b: int, stride: int, omega: float) -> np.ndarray:
    hp = b + int(np.ceil(max(0, h - b) / stride)) * stride
    wp = b + int(np.ceil(max(0, w - b) / stride)) * stride
    num, den = np.zeros((hp, wp)), np.zeros((hp, wp))
    ys, xs = np.mgrid[0:b, 0:b]
    k = 0
    for y0 in range(0, hp - b + 1, stride):
        for x0 in range(0, wp - b + 1, stride):
            cy, cx = y0 + (b - 1) / 2, x0 + (b - 1) / 2
            wgt = np.exp(-((ys + y0 - cy) ** 2 + (xs + x0 - cx) ** 2) / omega**2)
            num[y0:y0 + b, x0:x0 + b] += wgt * values[k]
            den[y0:y0 + b, x0:x0 + b] += wgt
            k += 1
    return (num / den)[:h, :w]


def test_gaussian_aggregation_is_the_papers_weighted_average() -> None:
    h, w, b, s = 36, 44, 16, 8
    x = torch.zeros(1, 1, h, w)
    _, padded = extract_patches(x, b, s)
    n = n_patches(h, w, b, s)
    const = aggregate(torch.full((n, 1), 2.5), 1, (h, w), padded, b, s, b / 4)
    torch.testing.assert_close(const, torch.full_like(const, 2.5))
    vals = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    got = aggregate(torch.from_numpy(vals)[:, None], 1, (h, w), padded, b, s, b / 4)[0, 0].numpy()
    np.testing.assert_allclose(got, _naive_aggregate(vals, h, w, b, s, b / 4), rtol=1e-4, atol=1e-5)
    k = gaussian_kernel(b, b / 4)
    assert float(k.max()) < 1 and abs(float(k[0, 0]) - np.exp(-2 * 7.5**2 / 16)) < 1e-6  # exp(−d²/ω²)


def test_svm_matches_scikit_learn_and_survives_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from sklearn.svm import OneClassSVM

    rng = np.random.default_rng(0)
    z = rng.standard_normal((300, 12))
    q = np.concatenate([rng.standard_normal((20, 12)), 3 + rng.standard_normal((20, 12))])
    svm = fit_ocsvm(z, nu=0.1)
    ref = OneClassSVM(kernel="rbf", nu=0.1, gamma=latent_gamma(z), tol=1e-4).fit(z)
    assert svm.kind == "exact"
    np.testing.assert_allclose(svm.decision_function(q), ref.decision_function(q), rtol=1e-6, atol=1e-8)
    save_file(svm.to_tensors("svm."), str(tmp_path / "svm.safetensors"))
    again = KernelOCSVM.from_tensors(load_file(str(tmp_path / "svm.safetensors")), "svm.", "exact")
    np.testing.assert_array_equal(again.decision_function(q), svm.decision_function(q))
    dec = svm.decision_function(q)
    assert dec[20:].max() < dec[:20].min() + 1e-9 or dec[20:].mean() < dec[:20].mean()


def test_scalable_svm_is_chosen_above_the_cut_over_and_agrees_with_its_pipeline() -> None:
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import SGDOneClassSVM

    rng = np.random.default_rng(1)
    z = rng.standard_normal((400, 8))
    q = np.concatenate([rng.standard_normal((30, 8)), 4 + rng.standard_normal((30, 8))])
    svm = fit_ocsvm(z, nu=0.1, exact_max=100, n_components=50, seed=0)
    assert svm.kind == "nystroem" and svm.anchors.shape == (50, 8)
    g = latent_gamma(z)
    ny = Nystroem(kernel="rbf", gamma=g, n_components=50, random_state=0).fit(z)
    sgd = SGDOneClassSVM(nu=0.1, random_state=0, max_iter=50, tol=1e-4).fit(ny.transform(z))
    np.testing.assert_allclose(svm.decision_function(q), sgd.decision_function(ny.transform(q)), rtol=1e-6,
                               atol=1e-8)
    dec = svm.decision_function(q)
    assert dec[30:].mean() < dec[:30].mean()


def test_result_carries_low_dimensional_features_for_scr(fitted, data) -> None:
    from anomalens.engine.postprocess.scr import scr_refine

    res = fitted.score(data["tests"])
    k = fitted.cfg.feature_dims
    assert res.features is not None and res.features.shape == (*data["tests"].shape, k)
    assert np.isfinite(res.features).all() and res.features.std() > 0
    mask = scr_refine(res.heatmaps, float(np.quantile(res.heatmaps, 0.9)), 1.0, 1.0, features=res.features)
    assert mask.shape == data["tests"].shape


def test_save_load_keeps_decisions_and_needs_no_pickle(fitted, data, tmp_path: Path) -> None:
    path = fitted.save(tmp_path / "m")
    assert not any(p.suffix in (".pkl", ".pt", ".joblib") for p in path.iterdir())
    again = InvDetectDetector.load(path)
    z, _, _ = fitted.latents(data["tests"])
    np.testing.assert_array_equal(again.svm.decision_function(z), fitted.svm.decision_function(z))
    np.testing.assert_allclose(again.score(data["tests"]).features, fitted.score(data["tests"]).features,
                               rtol=1e-5, atol=1e-6)


def test_fine_tune_refits_the_svm_with_the_marked_normals(fitted, data, tmp_path: Path) -> None:
    det = InvDetectDetector.load(fitted.save(tmp_path / "m"))
    det.fine_tune(data["tests"])  # "marked normal": the refit must now enclose these slices' latents better
    z, _, _ = det.latents(data["tests"])
    assert len(det.kept) <= det.cfg.keep_latents
    assert np.mean(det.svm.decision_function(z)) > np.mean(fitted.svm.decision_function(z))


def test_bad_configs_are_refused() -> None:
    for bad in ({"patch_size": 30}, {"channels": (6, 8)}, {"inversion_steps": 0}, {"input_size": 16},
                {"nu": 0.0}, {"image_score": "median"}):
        with pytest.raises(ConfigError):
            InvDetectDetector(bad)
