"""The on-site protocol's measuring step, with and without held-out normals to calibrate on."""

from __future__ import annotations


def test_the_issue_protocol_measures_without_an_operating_point() -> None:
    """With every lesion-free slice fitted on there is nothing to calibrate on: rank metrics only."""
    from types import SimpleNamespace

    from anomalens.engine.detectors import create_detector
    from anomalens.engine.evaluation import assess_onsite
    from anomalens.engine.preprocess import foreground_mask
    from tests.phantoms import phantom_slices

    normals, _ = phantom_slices(4, 64, seed=3)
    tests, masks = phantom_slices(3, 64, seed=4, lesion=True)
    det = create_detector("patchcore", config={"input_size": 64, "max_bank": 256, "smoothing_sigma": 1.0})
    det.fit(normals)
    split = SimpleNamespace(spec_suffix=lambda what: "#0-2")
    data = SimpleNamespace(calibration=normals[:0], eval_slices=tests, eval_masks=masks,
                           eval_foreground=foreground_mask(tests), split=split)
    m = assess_onsite(det, data)
    assert m["_calibrated"] is None and m["dice"] is None and m["dice_scr"] is None
    assert 0.0 <= m["pixel_auroc"] <= 1.0 and m["best_dice"] is not None
    assert "no operating point" in m["calibrated_on"]
    held = assess_onsite(det, SimpleNamespace(**{**vars(data), "calibration": normals[:2]}))
    assert held["_calibrated"] is not None and held["dice"] is not None
