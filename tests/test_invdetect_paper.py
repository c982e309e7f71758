"""InvDetect as in the paper: U-Net training counted in optimiser steps, and the paper's own SCR.

The SCR of the paper thresholds the raw one-class-SVM decision value at t = 0 with temperature T = 1 and
weighs neighbours by the full aggregated noise latents; the product's SCR works in normal-quantile units.
These tests pin the difference down on a constructed case, check the exact latent distances against the
literal definition, and check that training length is a number of Adam steps whatever the data size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anomalens.engine.errors import Cancelled, ConfigError, ModelError
from anomalens.engine.postprocess.normalise import ScoreNormaliser
from anomalens.engine.postprocess.scr import scr_refine
from anomalens.engine.progress import CancelToken
from anomalens.plugins.invdetect import InvDetectDetector
from anomalens.plugins.invdetect.patches import aggregate, extract_patches
from anomalens.plugins.invdetect.scr_paper import (
    flagged_fraction,
    neighbour_sq_distances,
    paper_scr,
    paper_weights,
    select_lambda,
    tau_from,
)
from tests.counting import StepCounter
from tests.phantoms import phantom_slices

TINY = InvDetectDetector.test_config()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fitted() -> InvDetectDetector:
    normals, _ = phantom_slices(4, 32, seed=5)
    return InvDetectDetector(TINY | {"train_steps": 6}, seed=1).fit(normals)


# -- training in optimiser steps ----------------------------------------------------------------------
@pytest.mark.parametrize("n_slices", [1, 7])
def test_the_unet_takes_exactly_train_steps_adam_steps_whatever_the_data_size(n_slices: int) -> None:
    normals, _ = phantom_slices(n_slices, 32, seed=2)  # 9 patches per 32² slice (b = 16): 9 or 63 patches
    det = InvDetectDetector(TINY | {"train_steps": 11, "batch_size": 4}, seed=0)
    with StepCounter() as count:
        det.fit(normals)
    assert count.n == 11
    assert det.training_log["optimiser_steps"] == 11
    assert len(det.training_log["loss_log"]["mean_loss"]) == 1  # one log entry per 100 steps, the last partial


def test_legacy_epochs_are_passes_over_the_patches_and_are_counted_too() -> None:
    normals, _ = phantom_slices(3, 32, seed=2)  # 27 patches, batch 8 → 4 batches per pass
    det = InvDetectDetector(TINY | {"epochs": 2, "batch_size": 8}, seed=0)
    with StepCounter() as count:
        det.fit(normals)
    assert count.n == 2 * 4 == det.training_log["optimiser_steps"]


def test_training_reports_each_step_and_stops_when_cancelled() -> None:
    normals, _ = phantom_slices(2, 32, seed=2)
    det = InvDetectDetector(TINY | {"train_steps": 50, "batch_size": 4}, seed=0)
    token = CancelToken()
    messages: list[str] = []

    def progress(f: float, m: str) -> None:
        messages.append(m)
        if m.startswith("U-Net step 3/50"):
            token.cancel()

    with StepCounter() as count, pytest.raises(Cancelled):
        det.fit(normals, progress=progress, cancel=token)
    assert count.n == 3
    assert [m.split(",")[0] for m in messages if m.startswith("U-Net")] == [f"U-Net step {i}/50" for i in (1, 2, 3)]
    assert not det.fitted


def test_step_options_are_checked() -> None:
    assert InvDetectDetector.config_class().train_steps >= 10_000  # the default is a diffusion model's budget
    for bad in ({"train_steps": 0}, {"train_steps": 10**8}, {"epochs": -1}, {"scr_mode": "quantile"},
                {"scr_fpr": 0.0}, {"scr_lambda": -1.0}):
        with pytest.raises(ConfigError):
            InvDetectDetector(bad)


# -- the paper's SCR ---------------------------------------------------------------------------------
def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw maps: normal tissue at −2, block A at −0.3 (inside the SVM boundary, but above every normal pixel)
    and block B at +0.4 (just outside the boundary). Also the normals' raw map and the B mask."""
    rng = np.random.default_rng(0)
    normals = (-2.0 + 0.1 * rng.standard_normal((4, 24, 24))).astype(np.float32)
    raw = (-2.0 + 0.1 * rng.standard_normal((1, 24, 24))).astype(np.float32)
    raw[0, 2:8, 2:8] = -0.3
    raw[0, 14:20, 14:20] = 0.4
    b = np.zeros_like(raw, bool)
    b[0, 14:20, 14:20] = True
    return normals, raw, b


def test_paper_mode_thresholds_the_raw_decision_value_at_zero_where_quantile_mode_does_not() -> None:
    normals, raw, b = _case()
    flat = np.zeros((1, 23, 24)), np.zeros((1, 24, 23))  # identical latents: α = 1 everywhere
    weights = paper_weights(*flat, tau=1.0)
    # λ = 0: the paper's unary alone is A > 0, in raw units: block B only.
    np.testing.assert_array_equal(paper_scr(raw, weights, 0.0), raw > 0)
    np.testing.assert_array_equal(paper_scr(raw, weights, 0.0), b)
    # The product's SCR in normal-quantile units flags block A too: −0.3 is above every normal pixel.
    norm = ScoreNormaliser().fit(normals)
    quantile = scr_refine(norm.transform(raw), 0.99, 0.0)
    assert quantile[0, 2:8, 2:8].all() and quantile[b].all()
    assert not paper_scr(raw, weights, 0.0)[0, 2:8, 2:8].any()
    # T = 1 on raw values: B's unary gain is 36 × 0.4 = 14.4 against λ × 24 boundary edges, so λ = 1 removes
    # it; at T = 0.05 in quantile units (the product) the same λ keeps it.
    np.testing.assert_array_equal(paper_scr(raw, weights, 0.3), b)
    assert not paper_scr(raw, weights, 1.0).any()
    assert scr_refine(norm.transform(raw), 0.99, 1.0, weights=weights)[b].all()


def test_neighbour_distances_are_those_of_the_full_aggregated_latents() -> None:
    rng = np.random.default_rng(3)
    for h, w, b in ((40, 44, 16), (36, 52, 8)):
        _, padded = extract_patches(torch.zeros(2, 1, h, w), b, b // 2)
        n_patch = len(_) // 2
        z = rng.standard_normal((2 * n_patch, b * b)).astype(np.float32)
        r = aggregate(torch.from_numpy(z), 2, (h, w), padded, b, b // 2, b / 4).double()  # (2, b², H, W): r_p
        down = (r[:, :, 1:] - r[:, :, :-1]).pow(2).sum(1).numpy()
        right = (r[:, :, :, 1:] - r[:, :, :, :-1]).pow(2).sum(1).numpy()
        got = neighbour_sq_distances(z, 2, (h, w), padded, b, b // 2, b / 4)
        np.testing.assert_allclose(got[0], down, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got[1], right, rtol=1e-4, atol=1e-7)
        tau = tau_from([got])
        assert tau**2 == pytest.approx(float(np.concatenate([down.ravel(), right.ravel()]).mean()), rel=1e-4)


def test_lambda_is_the_smallest_that_flags_under_the_target_on_normals() -> None:
    rng = np.random.default_rng(4)
    raw = (rng.standard_normal((3, 32, 32)) - 1.3).astype(np.float32)  # ~10 % of pixels above 0: speckle
    weights = paper_weights(np.zeros((3, 31, 32)), np.zeros((3, 32, 31)), 1.0)
    choice = select_lambda(raw, weights, 0.01)
    assert choice.met and choice.flagged_without > 0.05
    assert flagged_fraction(raw, weights, choice.lam) < 0.01 <= flagged_fraction(raw, weights, choice.lam / 1.05)


def test_fit_calibrates_the_paper_scr_and_segment_cuts_it(fitted) -> None:
    scr = fitted.training_log["paper_scr"]
    assert scr["tau"] > 0 and scr["lam"] >= 0 and scr["flagged"] <= scr["flagged_without"]
    assert scr["target_met"] == (scr["flagged"] < scr["fpr_target"])  # 4 tiny slices may not reach 1 %
    tests, _ = phantom_slices(2, 32, seed=9, lesion=True)
    fitted.config.scr_mode = "paper"
    try:
        seg = fitted.segment(tests)
        res, z, grid, padded = fitted._score_latents(tests, None, None)
        raw = fitted._raw_map(z, 2, grid, padded)
        np.testing.assert_allclose(raw, res.heatmaps, rtol=1e-5, atol=1e-6)  # the heatmap is A, raw units
        d = neighbour_sq_distances(z, 2, grid, padded, 16, 8, 4.0)
        np.testing.assert_array_equal(seg.masks, paper_scr(raw, paper_weights(*d, scr["tau"]), scr["lam"]))
        assert (seg.lam, seg.tau) == (scr["lam"], scr["tau"])
        fitted.config.scr_mode = "threshold"
        np.testing.assert_array_equal(fitted.segment(tests).masks, raw > 0)
        fitted.config.scr_mode = "product"
        with pytest.raises(ModelError, match="calibrate"):
            fitted.segment(tests)
    finally:
        fitted.config.scr_mode = "product"


def test_bundles_keep_the_paper_scr_and_version_1_bundles_load_but_refuse_paper_mode(fitted, tmp_path: Path) -> None:
    tests, _ = phantom_slices(1, 32, seed=9, lesion=True)
    path = fitted.save(tmp_path / "v2")
    again = InvDetectDetector.load(path)
    assert again.training_log["paper_scr"] == pytest.approx(fitted.training_log["paper_scr"])
    again.config.scr_mode = fitted.config.scr_mode = "paper"
    try:
        np.testing.assert_array_equal(again.segment(tests).masks, fitted.segment(tests).masks)
    finally:
        fitted.config.scr_mode = "product"
    # A version-1 bundle: training counted in epochs, no paper SCR in its log, no scr options in its config.
    manifest = json.loads((path / "bundle.json").read_text())
    for key in ("train_steps", "scr_mode", "scr_lambda", "scr_fpr"):
        manifest["config"].pop(key)
    manifest["config"]["epochs"] = 20
    manifest["detector_version"] = "1"
    manifest["extra"]["training_log"].pop("paper_scr")
    old = tmp_path / "v1"
    old.mkdir()
    (old / "weights.safetensors").write_bytes((path / "weights.safetensors").read_bytes())
    (old / "bundle.json").write_text(json.dumps(manifest))
    v1 = InvDetectDetector.load(old)
    np.testing.assert_allclose(v1.score(tests).heatmaps, fitted.score(tests).heatmaps, rtol=1e-5, atol=1e-6)
    v1.config.scr_mode = "paper"
    with pytest.raises(ModelError, match="version 1"):
        v1.segment(tests)


@pytest.mark.parametrize("mode", ["paper", "threshold"])
def test_the_product_path_reports_the_papers_own_masks(fitted, mode: str) -> None:
    """score_scan (the CLI's, batch's, viewer's and eval's one function) shows what ``segment`` cuts, on tissue."""
    from anomalens.engine.recalibration import calibrate_detector
    from anomalens.engine.scoring import score_scan
    from anomalens.engine.volume import Volume

    tests, _ = phantom_slices(3, 32, seed=9, lesion=True)
    vol = Volume(tests, spacing=(1.0, 1.0, 3.0), modality="MR")
    normals, _ = phantom_slices(3, 32, seed=11)
    fitted.config.scr_mode = mode
    try:
        assert fitted.cuts_own_masks
        for calibrated in (False, True):
            fitted.calibration = calibrate_detector(fitted, normals, lesion_check=False) if calibrated else None
            res = score_scan(fitted, vol)
            sl = res.prepared.batch(res.indices)
            expected = fitted.segment(sl).masks & res.prepared.batch_foreground(res.indices, sl)
            assert res.mask_scr is not None and res.scr is None  # the engine's SCR was not cut
            np.testing.assert_array_equal(res.mask_scr, expected)
            assert res.lesion_mask is res.mask_scr and res.lesion_mask_kind == "scr"
            assert "InvDetect" in res.summary()["scr"]["source"]
            assert (res.mask is not None) == calibrated  # the plain mask is the calibration's, as before
        fitted.config.scr_mode = "product"
        assert not fitted.cuts_own_masks
        res = score_scan(fitted, vol)
        assert res.scr_source is None and (res.scr is None or res.summary()["scr"].get("mode"))
    finally:
        fitted.config.scr_mode = "product"
        fitted.calibration = None


def test_calibrate_reports_the_papers_own_cut_not_the_engines_scr_point(fitted) -> None:
    """What ``anomalens calibrate`` says about SCR is the mask the product shows: the paper's own cut."""
    from anomalens.engine.preprocess.foreground import foreground_mask
    from anomalens.engine.recalibration import recalibrate

    normals, _ = phantom_slices(3, 32, seed=11)
    fitted.config.scr_mode = "paper"
    try:
        rec = recalibrate(fitted, normals)
        own = fitted.score(normals).own_masks
        fg = foreground_mask(normals)
        assert rec.own_scr and "InvDetect" in rec.own_scr
        assert rec.after.scr == pytest.approx(np.count_nonzero(own & fg) / np.count_nonzero(fg))
        text = "\n".join(rec.describe())
        assert "own cut" in text and "lesion survival" not in text and "with SCR (λ" not in text
        fitted.config.scr_mode = "product"  # the engine's SCR again: its calibrated point is what is reported
        rec = recalibrate(fitted, normals)
        assert rec.own_scr is None and "own cut" not in "\n".join(rec.describe())
        assert rec.after.scr == rec.calibration.fp_area_scr
    finally:
        fitted.config.scr_mode = "product"
        fitted.calibration = None
