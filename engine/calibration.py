"""Calibrating a detector from normal slices only, and applying the calibration to its results.

No anomalous example is ever needed: the normaliser, the plain threshold, and SCR's threshold, τ and λ
all come from the false-positive area on normals (the paper's rule for λ). Two operating points share
one false-positive budget on normals (``target_fpr``): the plain threshold, and SCR (a looser unary
threshold tightened by λ), so "with SCR" vs. "without" compares like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .detectors.base import Detector, fingerprint
from .detectors.result import AnomalyResult
from .errors import ModelError
from .preprocess.foreground import foreground_mask
from .progress import CancelToken, ProgressCallback, stage


def calibrate_detector(detector: Detector, normals: np.ndarray, foreground: np.ndarray | None = None,
                       target_fpr: float = 0.01, mode: str = "2d", progress: ProgressCallback | None = None,
                       cancel: CancelToken | None = None, threshold_fpr: float | None = None) -> dict[str, Any]:
    """Score normal slices, fit the calibration, store it on ``detector.calibration`` and return it.

    Use normals the detector was not fitted on where possible: a model's own training slices score lower
    than new normals, which makes thresholds too permissive. ``threshold_fpr`` fixes SCR's unary rate
    instead of the default ladder (``postprocess.calibrate``).
    """
    from .postprocess.calibrate import calibrate

    fg = foreground_mask(normals) if foreground is None else np.asarray(foreground, bool)
    result = detector.score(normals, progress=stage(progress, 0.0, 0.5), cancel=cancel)
    cal = calibrate(result.heatmaps, fg, features=result.features, intensities=normals, target_fpr=target_fpr,
                    threshold_fpr=threshold_fpr, mode=mode, seed=detector.seed, progress=stage(progress, 0.5, 1.0),
                    cancel=cancel)
    # The bundle's names: ``threshold`` is the plain operating point, ``scr_threshold`` SCR's unary one.
    cal["scr_threshold"] = cal.pop("threshold")
    cal["fp_area_unary"] = cal.pop("fp_area")
    cal["threshold"] = cal.pop("plain_threshold")
    cal["fp_area"] = cal.pop("fp_area_plain")
    cal["n_slices"] = len(normals)
    cal["fingerprint"] = fingerprint(normals)
    detector.calibration = cal
    return cal


@dataclass
class Calibrated:
    """A result mapped through a model's calibration: normalised maps and the two operating-point masks."""

    maps: np.ndarray
    mask: np.ndarray
    scr_mask: np.ndarray | None
    threshold: float
    params: dict[str, Any]


def normalise_result(detector: Detector, result: AnomalyResult) -> np.ndarray:
    """The heatmaps in normal-quantile units (a model without calibration raises)."""
    from .postprocess.normalise import ScoreNormaliser

    cal = detector.calibration or {}
    if "normaliser" not in cal:
        raise ModelError("this model is not calibrated yet: run 'anomalens calibrate' with a few normal scans")
    return ScoreNormaliser.from_dict(cal["normaliser"]).transform(result.heatmaps)


def apply_calibration(detector: Detector, result: AnomalyResult, slices: np.ndarray,
                      foreground: np.ndarray | None = None, scr: bool = True,
                      lam: float | None = None, threshold: float | None = None, tau: float | None = None,
                      mode: str | None = None) -> Calibrated:
    """Normalise, threshold and (optionally) SCR-refine a result at the calibrated operating point.

    Any of λ, threshold (SCR's unary threshold), τ and mode may be overridden, as the viewer's sliders do.
    """
    from .postprocess.scr import scr_refine

    cal = detector.calibration or {}
    maps = normalise_result(detector, result)
    fg = foreground_mask(slices) if foreground is None else np.asarray(foreground, bool)
    plain = (maps > cal["threshold"]) & fg
    scr_mask = None
    lam = cal.get("lambda") if lam is None else lam
    if scr and lam is not None:
        tau = cal.get("tau") if tau is None else tau
        scr_mask = scr_refine(maps, cal["scr_threshold"] if threshold is None else threshold, lam, tau,
                              features=result.features, intensities=None if result.features is not None else slices,
                              mode=mode or cal.get("mode", "2d"), temperature=cal.get("temperature", 0.05),
                              foreground=fg)
    return Calibrated(maps=maps, mask=plain, scr_mask=scr_mask, threshold=float(cal["threshold"]), params=cal)
