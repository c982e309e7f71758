"""Issue #20: the curved heads' scores come from the trained classifiers, the curvature enters them, the
Patch-SVDD base trains and scores, and version-1 bundles still load as they scored."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalens.engine.detectors import load_bundle
from anomalens.engine.errors import Cancelled, ConfigError, ModelError
from anomalens.engine.progress import CancelToken
from anomalens.plugins.curved_heads import CurvedHeads, CurvedHeadsDetector
from anomalens.plugins.curved_heads.patchsvdd import DIRECTIONS, position_scores, sample_pairs
from tests.phantoms import phantom_slices

CURVED = ("SiO", "HiO", "MiO", "SiT", "HiT", "MiT")
#: Which curvature each variant's score must respond to.
KAPPAS = {"SiO": ("kappa_s",), "HiO": ("kappa_h",), "MiO": ("kappa_s", "kappa_h"), "SiT": ("kappa_s",),
          "HiT": ("kappa_h",), "MiT": ("kappa_s", "kappa_h")}
OTHER_KAPPA = {"kappa_s": 0.25, "kappa_h": -0.05}


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    normals, _ = phantom_slices(6, 64, seed=1)
    tests, masks = phantom_slices(2, 64, seed=2, lesion=True)
    return {"normals": normals, "tests": tests, "masks": masks}


def _head(variant: str, **kw) -> CurvedHeads:
    torch.manual_seed(0)
    return CurvedHeads(12, 16, 6, variant, score_from="classifiers", **kw).eval()


def _x() -> torch.Tensor:
    return 3 * torch.randn(40, 12, generator=torch.Generator().manual_seed(1))


# -- the score rule ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", CURVED)
def test_the_score_is_read_off_the_trained_classifiers(variant: str) -> None:
    """GiT: KL between the Euclidean and the curved posteriors; GiO: the curved posterior of the true class."""
    head = _head(variant)
    target = torch.arange(40) % 4
    with torch.no_grad():
        out = head(_x())
    p = {b: F.softmax(lg.double(), 1) for b, lg in out.logits.items()}
    curved = [b for b in ("S", "H") if b in p]
    if variant.endswith("iT"):
        parts = [(p["E"] * (p["E"].log() - p[b].log())).sum(1) for b in curved]
    else:
        parts = [p[b].gather(1, target[:, None])[:, 0] for b in curved]
    z = parts[0] if len(parts) == 1 else torch.sqrt(sum(q * q for q in parts))
    torch.testing.assert_close(head.geometric_score(out, target), z, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.anomaly_score(out, target), 1 - torch.tanh(z), rtol=1e-6, atol=1e-9)
    if variant.endswith("iO"):  # the true class decides: another target gives another score
        assert not torch.allclose(head.anomaly_score(out, target), head.anomaly_score(out, (target + 1) % 4))


@pytest.mark.parametrize("variant", ("SiT", "HiT", "MiT"))
def test_in_two_scores_change_when_the_curved_classifier_changes(variant: str) -> None:
    """The review's finding: under the literal rule, perturbing the curved classifier changed nothing."""
    x = _x()
    for rule, should_change in (("classifiers", True), ("embeddings", False)):
        head = _head(variant)
        head.score_from = rule
        with torch.no_grad():
            before = head.anomaly_score(head(x))
            for name in ("s_classifier", "h_mlr"):
                if hasattr(head, name):
                    for prm in getattr(head, name).parameters():
                        prm.add_(0.5 * torch.randn_like(prm))
            after = head.anomaly_score(head(x))
        assert (not torch.allclose(before, after, rtol=1e-4, atol=1e-6)) is should_change, rule
    head = _head(variant)  # and the Euclidean classifier is the other side of the comparison
    with torch.no_grad():
        before = head.anomaly_score(head(x))
        head.e_classifier.weight.mul_(3.0)
        assert not torch.allclose(before, head.anomaly_score(head(x)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", CURVED)
def test_the_curvature_changes_the_score_of_the_same_weights(variant: str) -> None:
    x = _x()
    base = _head(variant, kappa_h=-1.0)
    with torch.no_grad():
        ref = base.anomaly_score(base(x), 0)
    for kappa in KAPPAS[variant]:
        kw = {"kappa_s": 1.0, "kappa_h": -1.0, kappa: OTHER_KAPPA[kappa]}
        other = CurvedHeads(12, 16, 6, variant, score_from="classifiers", **kw).eval()
        weights = {k: v for k, v in base.state_dict().items() if not k.endswith("log_c")}  # the curvature stays
        assert not other.load_state_dict(weights, strict=False).unexpected_keys
        with torch.no_grad():
            moved = other.anomaly_score(other(x), 0)
        assert torch.isfinite(moved).all()
        assert not torch.allclose(ref, moved, rtol=1e-4, atol=1e-6), f"{variant}: {kappa} did not enter the score"


# -- the Patch-SVDD base -------------------------------------------------------------------------------------

def test_pairs_lie_in_their_direction_on_tissue() -> None:
    h = w = 9
    tissue = torch.zeros(2 * h * w, dtype=torch.bool)
    tissue.view(2, h, w)[:, 1:8, 1:8] = True
    cells = torch.nonzero(tissue).flatten()
    idx = torch.arange(len(cells) * 8)
    b = sample_pairs(idx, cells, tissue, (h, w), step=3, jitter=1, gen=torch.Generator().manual_seed(0))
    assert 0 < len(b.label) < len(idx)  # pairs leaving the tissue are dropped
    assert tissue[b.partner].all() and (b.anchor // (h * w) == b.partner // (h * w)).all()
    dy = b.partner % (h * w) // w - b.anchor % (h * w) // w
    dx = b.partner % w - b.anchor % w
    d = torch.tensor(DIRECTIONS)[b.label]
    assert ((dy - 3 * d[:, 0]).abs() <= 1).all() and ((dx - 3 * d[:, 1]).abs() <= 1).all()
    assert (torch.bincount(b.label, minlength=8) > 0).all()
    ny, nx = b.neighbour % (h * w) // w - b.anchor % (h * w) // w, b.neighbour % w - b.anchor % w
    assert (ny.abs() <= 1).all() and (nx.abs() <= 1).all()


def _make(variant: str, seed: int = 0, **extra) -> CurvedHeadsDetector:
    cfg = {**CurvedHeadsDetector.test_config(), "base": "patchsvdd", "variant": variant, **extra}
    return CurvedHeadsDetector(config=cfg, seed=seed)


def test_patchsvdd_learns_the_positions_and_scores(data) -> None:
    det = _make("MiT", epochs=12).fit(data["normals"])
    log = det.training_log
    assert log["pretext"] == "relative position" and set(log["position_accuracy"]) == {"E", "S", "H"}
    assert max(log["position_accuracy"].values()) > 0.3  # chance is 1/8
    res = det.score(data["tests"])
    assert res.heatmaps.shape == data["tests"].shape and np.isfinite(res.heatmaps).all()
    assert res.heatmaps.max() > 0 and (res.heatmaps[data["tests"] == 0] == 0).all()
    assert res.info["base"] == "patchsvdd" and res.info["score_from"] == "classifiers"
    emb = res.embeddings
    assert emb.manifold == "poincare" and (np.linalg.norm(emb.points, axis=1) < 1).all()


def _with_curvatures(state: dict[str, torch.Tensor], kappa_s: float, kappa_h: float) -> dict[str, torch.Tensor]:
    """The trained weights with the manifolds' stored curvatures replaced (sphere: κ_S, ball: |κ_H|)."""
    out = {}
    for k, v in state.items():
        if k.endswith("log_c"):
            on_sphere = "sphere" in k or "s_classifier" in k
            v = torch.full_like(v, math.log(kappa_s if on_sphere else -kappa_h))
        out[k] = v
    return out


@pytest.mark.parametrize("variant", CURVED)
def test_patchsvdd_maps_follow_the_curvature(variant: str, data) -> None:
    """Same trained weights, another curvature: another map (the geometry is in the score, not only in training)."""
    det = _make(variant, kappa_h=-1.0).fit(data["normals"])
    ref = det.score(data["tests"]).heatmaps
    for kappa in KAPPAS[variant]:
        other = _make(variant, **{"kappa_h": -1.0, kappa: OTHER_KAPPA[kappa]})
        other.load_state_dict(_with_curvatures(det.state_dict(), other.config.kappa_s, other.config.kappa_h))
        other.fitted = True
        assert not np.allclose(ref, other.score(data["tests"]).heatmaps, rtol=1e-4, atol=1e-6), (variant, kappa)


def test_compare_scores_the_distance_to_the_nearest_normal_patch(data, tmp_path: Path) -> None:
    from anomalens.engine.coreset import nearest_distance

    det = _make("euclidean", compare=True).fit(data["normals"])
    assert det.bank is not None and det.bank.dtype == torch.float16
    res = det.score(data["tests"])
    with torch.no_grad():
        feats = det._standardise(det.extractor.features(det._square(data["tests"])).concat())
        emb = det.head.encoder(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
        bank = det.head.encoder(det.bank.float())
    np.testing.assert_allclose(res.embeddings.scores, nearest_distance(emb, bank).numpy(), rtol=1e-4, atol=1e-5)

    mit = _make("MiT", compare=True).fit(data["normals"])
    a = mit.score(data["tests"])
    again = load_bundle(mit.save(tmp_path / "m"))
    np.testing.assert_allclose(a.heatmaps, again.score(data["tests"]).heatmaps, rtol=1e-5, atol=1e-7)
    n_bank = len(again.bank)
    again.fine_tune(data["normals"][:2])  # the marked normals join the bank
    assert len(again.bank) > n_bank
    assert CurvedHeadsDetector(config={"base": "rotation", "compare": True}).config.compare is False
    with pytest.raises(ConfigError, match="position_jitter"):
        CurvedHeadsDetector(config={"position_step": 2, "position_jitter": 2})


def test_position_scores_average_the_pairs_on_the_grid() -> None:
    det = _make("SiT")
    det.config.input_size = 64
    torch.manual_seed(0)
    from anomalens.plugins.curved_heads.patchsvdd import PatchSVDDNet

    net = PatchSVDDNet(5, 8, 4, "SiT", 1.0, -1.0, 4e-3, "classifiers").eval()
    emb = torch.randn(1, 7, 7, 4)
    with torch.no_grad():
        a, count = position_scores(net, emb, torch.ones(1, 7, 7, dtype=torch.bool), step=3)
        corner = torch.stack([net.heads.anomaly_score(net.pair(emb[0, 0, 0], emb[0, 3 * dy, 3 * dx]), j)
                              for j, (dy, dx) in enumerate(DIRECTIONS) if dy >= 0 and dx >= 0])
    assert count[0, 0, 0] == 3 and count[0, 3, 3] == 8
    torch.testing.assert_close(a[0, 0, 0], corner.mean())


# -- bundles -------------------------------------------------------------------------------------------------

def _as_version_1(path: Path) -> Path:
    """Rewrite a saved rotation/embeddings model's manifest as version 1 of the detector wrote it."""
    manifest = json.loads((path / "bundle.json").read_text())
    for key in ("base", "score_from", "position_step", "position_jitter", "svdd_weight", "compare", "max_bank"):
        manifest["config"].pop(key)
    manifest["extra"].pop("format")
    manifest["detector_version"] = "1"
    (path / "bundle.json").write_text(json.dumps(manifest))
    return path


def test_a_stored_curvature_must_match_the_configuration(data) -> None:
    det = _make("HiT", kappa_h=-1.0).fit(data["normals"])
    other = _make("HiT", kappa_h=-0.5)
    with pytest.raises(ValueError, match="curvature"):
        other.load_state_dict(det.state_dict())


def test_a_version_1_bundle_loads_and_scores_as_it_did(data, tmp_path: Path) -> None:
    v1 = CurvedHeadsDetector(config={**CurvedHeadsDetector.test_config(), "variant": "HiT", "base": "rotation",
                                     "score_from": "embeddings"}).fit(data["normals"])
    expected = v1.score(data["tests"]).heatmaps
    old = load_bundle(_as_version_1(v1.save(tmp_path / "v1")))
    assert (old.config.base, old.config.score_from) == ("rotation", "embeddings")
    assert any("version 1" in n for n in old.notes)
    np.testing.assert_allclose(old.score(data["tests"]).heatmaps, expected, rtol=1e-5, atol=1e-7)

    new = load_bundle(v1.save(tmp_path / "v2"))
    assert not new.notes and new.config.score_from == "embeddings"
    forged = v1.save(tmp_path / "v9")
    manifest = json.loads((forged / "bundle.json").read_text())
    manifest["extra"]["format"] = 9
    (forged / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="state format 9"):
        load_bundle(forged)


def test_defaults_are_the_measured_choices() -> None:
    c = CurvedHeadsDetector().config
    assert (c.base, c.compare, c.score_from, c.variant) == ("patchsvdd", True, "classifiers", "MiT")
    assert math.isclose(c.kappa_h_effective, -1.0) and c.kappa_s == 1.0


def test_patchsvdd_is_seeded_round_trips_fine_tunes_and_cancels(data, tmp_path: Path) -> None:
    """The shared contract's checks (run there on the rotation base) on the Patch-SVDD base without compare."""
    det = _make("HiT", compare=False).fit(data["normals"])
    a = det.score(data["tests"]).heatmaps
    np.testing.assert_allclose(a, _make("HiT", compare=False).fit(data["normals"]).score(data["tests"]).heatmaps,
                               rtol=1e-4, atol=1e-7)
    assert not np.allclose(a, _make("HiT", seed=3, compare=False).fit(data["normals"]).score(data["tests"]).heatmaps)
    again = load_bundle(det.save(tmp_path / "m"))
    assert again.bank is None and again.config.base == "patchsvdd"
    np.testing.assert_allclose(a, again.score(data["tests"]).heatmaps, rtol=1e-5, atol=1e-7)
    before = {k: v.clone() for k, v in again.state_dict().items()}
    again.fine_tune(data["normals"][:2])
    assert any(not torch.equal(before[k], v) for k, v in again.state_dict().items() if k.startswith("head.encoder"))
    token = CancelToken()

    def progress(f: float, m: str) -> None:
        if m.startswith("epoch"):
            token.cancel()

    fresh = _make("MiT", epochs=3)
    with pytest.raises(Cancelled):
        fresh.fit(data["normals"], progress=progress, cancel=token)
    assert not fresh.fitted
