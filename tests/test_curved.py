"""The curved-heads detector: every variant through fit/score/save-load/determinism, and the paper's formulas."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalens.engine.detectors import load_bundle
from anomalens.engine.errors import Cancelled, ConfigError
from anomalens.engine.geometry import poincare
from anomalens.engine.progress import CancelToken
from anomalens.plugins.curved_heads import VARIANTS, CurvedHeads, CurvedHeadsDetector
from anomalens.plugins.curved_heads.heads import kl_softmax, one_minus_max_softmax, one_minus_tanh
from tests.phantoms import phantom_slices

EXPECTED_MANIFOLD = {"euclidean": "euclidean", "SiO": "sphere", "SiT": "sphere", "HiO": "poincare",
                     "HiT": "poincare", "MiO": "poincare", "MiT": "poincare"}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    normals, _ = phantom_slices(6, 64, seed=1)
    tests, masks = phantom_slices(3, 64, seed=2, lesion=True)
    return {"normals": normals, "tests": tests, "masks": masks}


def make(variant: str, seed: int = 0, **extra) -> CurvedHeadsDetector:
    return CurvedHeadsDetector(config={**CurvedHeadsDetector.test_config(), "variant": variant, **extra}, seed=seed)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_fits_scores_round_trips_and_repeats(variant: str, data, tmp_path: Path) -> None:
    det = make(variant).fit(data["normals"])
    res = det.score(data["tests"])
    assert res.heatmaps.shape == data["tests"].shape and res.scores.shape == (3,)
    assert np.isfinite(res.heatmaps).all() and (res.heatmaps >= 0).all()
    assert res.heatmaps.max() > 0, "a constant-zero map carries no information"
    np.testing.assert_allclose(res.scores, res.heatmaps.reshape(3, -1).max(1))
    emb = res.embeddings
    assert emb is not None and emb.manifold == EXPECTED_MANIFOLD[variant]
    assert np.isfinite(emb.points).all() and len(emb.scores) == len(emb.points)
    if emb.manifold == "poincare":
        c = 0.01 if variant in ("HiO", "MiO") else 1.0
        assert emb.curvature == pytest.approx(c)
        assert (np.linalg.norm(emb.points, axis=1) < 1 / math.sqrt(c)).all()
    if emb.manifold == "sphere":
        np.testing.assert_allclose(np.linalg.norm(emb.points, axis=1), 1.0, rtol=1e-4)
    assert set(det.training_log["rotation_accuracy"]) == {"euclidean": {"E"}, "SiO": {"S"}, "HiO": {"H"},
                                                          "MiO": {"S", "H"}, "SiT": {"E", "S"},
                                                          "HiT": {"E", "H"}, "MiT": {"E", "S", "H"}}[variant]

    again = load_bundle(det.save(tmp_path / "model"), device="cpu")
    assert again.config.variant == variant
    b = again.score(data["tests"])
    np.testing.assert_allclose(res.heatmaps, b.heatmaps, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.scores, b.scores, rtol=1e-5, atol=1e-7)

    twin = make(variant, seed=0).fit(data["normals"])
    np.testing.assert_allclose(res.heatmaps, twin.score(data["tests"]).heatmaps, rtol=1e-4, atol=1e-7)


def _random_out(variant: str, seed: int = 0, scale: float = 1.0):
    torch.manual_seed(seed)
    head = CurvedHeads(12, 16, 6, variant).eval()
    with torch.no_grad():
        out = head(scale * torch.randn(50, 12))
    return head, out


@pytest.mark.parametrize("variant", VARIANTS[1:])
def test_anomaly_score_is_one_minus_tanh_of_the_papers_z(variant: str) -> None:
    head, out = _random_out(variant, scale=3.0)
    e = out.e_E.double()
    e_s = e / e.norm(dim=1, keepdim=True)  # κ_S = 1: the unit sphere (eq. 2)
    c = -head.kappa_h
    e_h = poincare.clip_features(out.e_E, head.xi, c).double()  # eq. 4
    if variant.endswith("iO"):
        w = head.s_classifier.weight.double() if "S" in head.branches else None
        z_s = (e_s @ (w / w.norm(dim=1, keepdim=True)).T).max(1).values if w is not None else None
        z_h = 2 / math.sqrt(c) * torch.atanh(math.sqrt(c) * e_h.norm(dim=1)) if "H" in head.branches else None
    else:
        def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
            return (F.softmax(p, 1) * (F.log_softmax(p, 1) - F.log_softmax(q, 1))).sum(1)
        z_s = kl(e, e_s) if "S" in head.branches else None
        z_h = kl(e, e_h) if "H" in head.branches else None
    parts = [z for z in (z_s, z_h) if z is not None]
    z = parts[0] if len(parts) == 1 else torch.sqrt(sum(p * p for p in parts))  # eqs. 11 and 13
    torch.testing.assert_close(head.geometric_score(out), z, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.anomaly_score(out), 1 - torch.tanh(z), rtol=1e-4, atol=1e-6)


def test_the_baseline_scores_one_minus_max_softmax() -> None:
    head, out = _random_out("euclidean")
    expected = 1 - F.softmax(out.logits["E"].double(), 1).max(1).values
    torch.testing.assert_close(head.anomaly_score(out), expected)
    with pytest.raises(ValueError, match="no geometric score"):
        head.geometric_score(out)


def test_scores_keep_their_order_where_float32_would_round_to_zero() -> None:
    z = torch.tensor([15.0, 20.0, 40.0])
    assert (1 - torch.tanh(z) == 0).all()  # the naive float32 form: three ties
    a = one_minus_tanh(z).float()
    assert (a > 0).all() and a[0] > a[1] > a[2]
    logits = torch.tensor([[30.0, 0.0, 0.0, 0.0], [40.0, 0.0, 0.0, 0.0]])
    m = one_minus_max_softmax(logits).float()
    assert m[0] > m[1] > 0
    assert kl_softmax(logits, logits).abs().max() == 0


def test_in_two_discrepancy_vanishes_inside_the_ball() -> None:
    """HiT: an embedding the clip leaves alone has e_H = e_E, so z = 0 and AS = 1 (most anomalous)."""
    head, out = _random_out("HiT", scale=1e-3)
    assert (out.e_E.norm(dim=1) < 1 / math.sqrt(-head.kappa_h)).all()
    torch.testing.assert_close(head.anomaly_score(out), torch.ones(50, dtype=torch.float64))


def test_config_names_variants_and_curvatures() -> None:
    assert CurvedHeadsDetector(config={"variant": "mit"}).config.variant == "MiT"
    assert CurvedHeadsDetector().config.variant == "MiT"
    assert CurvedHeadsDetector(config={"variant": "HiO"}).config.kappa_h_effective == -0.01
    assert CurvedHeadsDetector(config={"variant": "HiT"}).config.kappa_h_effective == -1.0
    assert CurvedHeadsDetector(config={"variant": "HiT", "kappa_h": -0.5}).config.kappa_h_effective == -0.5
    for bad in ({"variant": "LiO"}, {"kappa_h": 1.0}, {"kappa_s": -1.0}, {"xi": 0.0}, {"score_rotations": 2},
                {"epochs": 0}, {"no_such_option": 1}):
        with pytest.raises(ConfigError):
            CurvedHeadsDetector(config=bad)


def test_four_rotation_scoring_is_exactly_rotation_equivariant(data) -> None:
    det = make("SiT", score_rotations=4).fit(data["normals"])
    x = data["tests"][:2]
    a = det.score(x).heatmaps
    b = det.score(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))).heatmaps
    np.testing.assert_allclose(np.rot90(a, 1, axes=(1, 2)), b, rtol=1e-4, atol=1e-6)


def test_the_pretext_task_is_learnt_air_is_masked_and_the_seed_matters(data) -> None:
    det = make("euclidean", epochs=15).fit(data["normals"])
    assert det.training_log["rotation_accuracy"]["E"] > 0.3  # chance is 0.25
    res = det.score(data["tests"])
    assert (res.heatmaps[data["tests"] == 0] == 0).all()
    det.config.mask_background = False
    assert (det.score(data["tests"]).heatmaps[data["tests"] == 0] > 0).any()
    det.config.mask_background = True
    other = make("euclidean", seed=5, epochs=15).fit(data["normals"])
    assert not np.allclose(res.heatmaps, other.score(data["tests"]).heatmaps)


def test_fine_tune_continues_training(data) -> None:
    det = make("HiT").fit(data["normals"])
    before = {k: v.clone() for k, v in det.state_dict().items()}
    det.fine_tune(data["normals"][:2])
    after = det.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("head.extractor"))
    torch.testing.assert_close(before["stats.mean"], after["stats.mean"])  # statistics stay the fitted ones
    assert np.isfinite(det.score(data["tests"]).heatmaps).all()


def test_cancel_between_epochs_leaves_it_unfitted(data) -> None:
    token = CancelToken()

    def progress(f: float, m: str) -> None:
        if m.startswith("epoch"):
            token.cancel()

    det = make("MiT", epochs=3)
    with pytest.raises(Cancelled):
        det.fit(data["normals"], progress=progress, cancel=token)
    assert not det.fitted


def test_variants_are_offered_to_pickers_and_the_cli(tmp_path) -> None:
    from anomalens.engine.cli.main import main
    from anomalens.engine.detectors import detector_choices, read_manifest
    from anomalens.engine.io import write_like
    from anomalens.engine.volume import Volume
    from tests.phantoms import phantom_slices

    labels = {label: (name, cfg) for label, name, cfg in detector_choices()}
    assert labels["curved (MiT)"] == ("curved", {"variant": "MiT"})
    assert {f"curved ({v})" for v in ("SiO", "HiO", "MiO", "SiT", "HiT", "MiT")} <= set(labels)
    assert "patchcore" in labels and not any(k.startswith("patchcore (") for k in labels)
    scan = write_like(Volume(phantom_slices(4, 64)[0]), phantom_slices(4, 64)[0], tmp_path / "n.nii.gz")
    code = main(["train", "--detector", "curved", "--variant", "MiT", "--normals", str(scan), "--out",
                 str(tmp_path / "m"), "--set", "input_size=64", "--set", "epochs=1"])
    assert code == 0
    assert read_manifest(tmp_path / "m")["config"]["variant"] == "MiT"
    assert main(["train", "--detector", "patchcore", "--variant", "x", "--normals", str(scan), "--out",
                 str(tmp_path / "p")]) == 2
