"""Lorentz detector specifics beyond the shared contract: geometry switch, embeddings, residual inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from anomalens.engine.detectors import load_bundle
from anomalens.engine.errors import ConfigError
from anomalens.engine.geometry import lorentz
from anomalens.engine.outputs import read_scores_csv
from anomalens.plugins.lorentz import LorentzDetector
from tests.phantoms import phantom_slices
from tests.test_cli import run_json


@pytest.fixture(scope="module")
def data():
    normals, _ = phantom_slices(6, 64, seed=3)
    tests, _ = phantom_slices(2, 64, seed=4, lesion=True)
    return normals, tests


def make(**kw) -> LorentzDetector:
    return LorentzDetector(config={**LorentzDetector.test_config(), **kw}, seed=0)


def test_lorentz_embeddings_lie_on_the_hyperboloid(data) -> None:
    normals, tests = data
    det = make().fit(normals)
    res = det.score(tests)
    emb = res.embeddings
    assert emb.manifold == "lorentz" and emb.curvature > 0
    assert emb.points.shape[1] == det.config.dim + 1
    import torch

    ok = lorentz.check_point_on_manifold(torch.as_tensor(emb.points, dtype=torch.float64), emb.curvature,
                                         atol=1e-3, rtol=1e-3)
    assert ok
    assert emb.hyperplane is not None and np.isfinite(emb.hyperplane).all()
    assert det.head.manifold.c.requires_grad, "the curvature is learnable"
    assert 0.0 <= emb.scores.min() and emb.scores.max() <= 1.0, "points are coloured by probability"
    assert res.heatmaps.min() >= 0.0, "a fused heatmap is a sum of surprises"
    # every head's view of the same patches, with its own curvature and hyperplane, for the disk to choose from
    assert len(emb.alternatives) == len(det.heads) - 1
    for k, (alt, head) in enumerate(zip(emb.alternatives, det.heads[1:], strict=True), start=2):
        assert alt.points.shape == emb.points.shape and alt.curvature == pytest.approx(head.curvature)
        assert alt.hyperplane_of.startswith(f"head {k} of {len(det.heads)}") and alt.scores is emb.scores
        logits = head.logit(torch.as_tensor(alt.points, dtype=torch.float32)).detach().numpy()
        from anomalens.engine.projection import hyperplane_side

        assert np.array_equal(hyperplane_side(alt) > 0, logits > 0)  # the side drawn is the head's decision
    np.testing.assert_allclose(res.scores, res.heatmaps.reshape(2, -1).max(1))
    det.config.fuse_memory = False  # the paper's classifier alone: the heads' evidence −log(1 − p̄), in nats
    alone = det.score(tests).heatmaps
    assert 0.0 <= alone.min() and np.isfinite(alone).all() and alone.max() > 0.0


def test_euclidean_ablation_is_one_switch_away(data) -> None:
    normals, tests = data
    det = make(geometry="euclidean").fit(normals)
    emb = det.score(tests).embeddings
    assert emb.manifold == "euclidean" and emb.curvature == 0.0
    assert emb.points.shape[1] == det.config.dim


def test_residual_inputs_round_trip(data, tmp_path: Path) -> None:
    normals, tests = data
    det = make(inputs="residual").fit(normals)
    assert det.bank is not None and det.bank.shape[1] == sum(det.extractor.channels.values())
    for lv in det.config.levels:
        assert float(det.stats[f"{lv}.rscale"]) > 0
    again = load_bundle(det.save(tmp_path / "m"))
    np.testing.assert_allclose(det.score(tests).heatmaps, again.score(tests).heatmaps, atol=1e-6)
    n_before = len(again.bank)
    again.fine_tune(normals[:2])
    assert len(again.bank) > n_before, "few-shot normals join the memory bank"


def test_bad_options_are_refused() -> None:
    for bad in ({"geometry": "spherical"}, {"inputs": "pixels"}, {"curvature": -1.0}, {"epochs": 0},
                {"anomaly_margin": -0.1}, {"anomaly_margin": 0.5}, {"memory_ratio": 0.0}):
        with pytest.raises(ConfigError):
            make(**bad)


def test_synthetic_anomalies_stay_inside_the_outline(data, monkeypatch) -> None:
    """With a margin, every synthetic label lies in the interior of its slice's foreground."""
    import anomalens.engine.synthesis as synthesis
    from anomalens.engine.preprocess import foreground_mask
    from anomalens.engine.preprocess.foreground import interior_mask

    normals, _ = data
    seen: list[np.ndarray] = []
    real = synthesis.synthesize_batch

    def spy(images, rng, foregrounds=None, **kw):
        out, masks = real(images, rng, foregrounds=foregrounds, **kw)
        seen.append(masks)
        return out, masks

    monkeypatch.setattr(synthesis, "synthesize_batch", spy)
    make(anomaly_margin=0.15, n_variants=3).fit(normals)
    inner = interior_mask(foreground_mask(normals), 0.15)
    labels = np.concatenate(seen)
    assert labels.any()
    assert not (labels & ~np.tile(inner, (len(seen), 1, 1))).any()


def test_heads_are_bagged_over_independent_draws_and_averaged(data, tmp_path: Path) -> None:
    normals, tests = data
    det = make(n_heads=3, fuse_memory=False).fit(normals)
    assert len(det.heads) == 3
    res = det.score(tests)
    x = det.heads
    singles = []
    for k in range(3):  # each head alone, through the same scoring path
        det.heads = [x[k]]
        singles.append(det.score(tests).embeddings.scores)
    det.heads = x
    # Each head saw its own synthetic draw, so they disagree; the heads' probability per patch is their mean
    # (the map shows it as evidence, −log(1 − mean)).
    assert np.abs(singles[0] - singles[1]).max() > 1e-3
    np.testing.assert_allclose(res.embeddings.scores, np.mean(singles, 0), atol=1e-5)
    # The disk can draw one head's embedding and hyperplane: the embeddings say whose, through the viewer's
    # store and the projection's centring (one head alone names none).
    from anomalens.app.embeddings import EmbeddingStore
    from anomalens.engine.projection import centre_embeddings

    assert res.embeddings.hyperplane_of.startswith("head 1 of 3")
    store = EmbeddingStore()
    store.add(res.embeddings, np.arange(len(tests)), res.heatmaps)
    combined = store.combined()
    assert combined.hyperplane_of == res.embeddings.hyperplane_of
    centred = centre_embeddings(combined, np.ones(len(combined.points), bool)).embeddings
    assert centred.hyperplane_of == res.embeddings.hyperplane_of
    from anomalens.engine.pipeline import merge_results

    merged = merge_results([det.score(tests[:1]), det.score(tests[1:])]).embeddings  # score_scan's batches
    assert merged.hyperplane_of == res.embeddings.hyperplane_of
    np.testing.assert_array_equal(merged.slice_index, res.embeddings.slice_index)
    det.heads = [x[0]]
    assert det.score(tests).embeddings.hyperplane_of == ""
    det.heads = x
    # Saved and reloaded, all three heads come back.
    back = load_bundle(det.save(tmp_path / "m"))
    assert len(back.heads) == 3
    np.testing.assert_allclose(back.score(tests).heatmaps, res.heatmaps, atol=1e-5)


def test_a_single_head_bundle_loads_as_one_head(data) -> None:
    normals, tests = data
    one = make(n_heads=1, fuse_memory=False).fit(normals)
    state = one.state_dict()
    assert not any(k.startswith("head1.") for k in state)
    fresh = make()  # today's default config asks for more heads than this bundle holds
    fresh.load_state_dict(state)
    fresh.fitted = True  # what load_bundle sets after load_state_dict
    assert len(fresh.heads) == 1 and fresh.config.n_heads == 1
    # Saved before fusion, it holds no memory bank: it scores with its head alone, as it was trained.
    assert fresh.config.fuse_memory is False
    np.testing.assert_allclose(fresh.score(tests).heatmaps, one.score(tests).heatmaps, atol=1e-6)


def test_fusion_adds_the_two_surprises(data, tmp_path: Path) -> None:
    """The fused map is the heads' surprise plus the memory bank's, both against normal references."""
    import torch

    from anomalens.engine.coreset import nearest_distance
    from anomalens.engine.preprocess.resize import resize_back
    from anomalens.engine.preprocess.smooth import gaussian_smooth

    normals, tests = data
    det = make(smoothing_sigma=0.0).fit(normals)
    assert det.memory is not None and det.memory.shape[1] == sum(det.extractor.channels.values())
    assert set(det.surprise) == {"memory", "heads"}
    res = det.score(tests)
    raw = det._raw_features(tests, None)
    x = det._inputs(det._flatten(det._standardise(raw)), det.bank)
    prob = det._mean_prob(x)
    dist = nearest_distance(det._memory_features(raw).reshape(-1, det.memory.shape[1]), det.memory)
    patch = det.surprise["heads"].transform(prob) + det.surprise["memory"].transform(dist)
    grid = raw["s8"].shape[-2:]
    want = gaussian_smooth(torch.as_tensor(resize_back(torch.as_tensor(patch).reshape(2, *grid), (64, 64))), 0.0)
    np.testing.assert_allclose(res.heatmaps, want.numpy(), atol=1e-4)
    # The bank's reference is leak-free: a normal slice's patches, measured against the bank that holds
    # them, sit far below the reference (near zero), so the reference is not made of such distances.
    own = nearest_distance(det._memory_features(det._raw_features(normals, None)).reshape(-1, det.memory.shape[1]),
                           det.memory)
    assert float(own.median()) < float(det.surprise["memory"].knots[len(det.surprise["memory"].knots) // 2])
    # Round trip through a bundle, and few-shot normals join the fusion bank within its cap.
    again = load_bundle(det.save(tmp_path / "m"))
    np.testing.assert_allclose(again.score(tests).heatmaps, res.heatmaps, atol=1e-5)
    n_before = len(again.memory)
    again.config.memory_max = n_before + 2  # below what the new normals would add
    again.fine_tune(normals[:2])
    assert len(again.memory) == n_before + 2
    assert np.isfinite(again.score(tests).heatmaps).all()


def _cli_set() -> list[str]:
    import json

    return [a for k, v in LorentzDetector.test_config().items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_cli_trains_on_a_dicom_folder_and_scores_it_on_its_own_grid(capsys, tmp_path: Path) -> None:
    """The issue's "Done when": ``anomalens train --detector lorentz`` / ``score`` on a DICOM folder."""

    import SimpleITK as sitk

    from tests.io_support import write_ct_series

    normals, _ = phantom_slices(6, 64, seed=11)
    tests, masks = phantom_slices(3, 64, seed=12, lesion=True)
    write_ct_series(tmp_path / "normals", normals * 1000.0 - 500.0, series_uid="1.2.826.0.1.3680043.8.498.21")
    write_ct_series(tmp_path / "tests", tests * 1000.0 - 500.0, series_uid="1.2.826.0.1.3680043.8.498.22")
    model = tmp_path / "model"
    out = run_json(capsys, ["train", "--detector", "lorentz", "--normals", str(tmp_path / "normals"), "--out",
                        str(model), "--device", "cpu", "--epochs", "2", *_cli_set()])
    assert out["n_training_slices"] == 6 and load_bundle(model).name == "lorentz"
    res = run_json(capsys, ["score", "--model", str(model), f"{tmp_path / 'tests'}#1-2", "--out", str(tmp_path / "o"),
                        "--device", "cpu"])
    heat = sitk.GetArrayFromImage(sitk.ReadImage(res["files"]["heatmap"]))
    assert heat.shape == (2, 64, 64) and np.isfinite(heat).all()
    assert [int(r["slice"]) for r in read_scores_csv(res["files"]["scores"])] == [1, 2]
    # the map is brighter on the lesion than on the rest of the tissue (a trained, not a constant, map)
    tissue = tests[1:] > 0.05
    assert heat[masks[1:]].mean() > heat[tissue & ~masks[1:]].mean()


def test_cli_trains_and_scores_on_a_sample(capsys, tmp_path: Path) -> None:
    model = tmp_path / "model"
    out = run_json(capsys, ["train", "--detector", "lorentz", "--normals", "sample:brain1#0-3", "--out", str(model),
                        "--device", "cpu", "--epochs", "1", *_cli_set()])
    assert out["n_training_slices"] == 4
    res = run_json(capsys, ["score", "--model", str(model), "sample:brain1#12-13", "--out", str(tmp_path / "o")])
    assert res["n_slices"] == 2 and Path(res["files"]["heatmap"]).is_file() and Path(res["files"]["scores"]).is_file()
