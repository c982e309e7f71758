"""One call that scores a detector on labelled data, with a result dict whose keys never change."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidVolumeError
from ._inputs import MAX_PIXELS, ArrayLike, add_note, check_inputs, check_mask
from .bootstrap import SliceHistograms, interval, resample_weights
from .core import (
    best_dice,
    dice,
    fpr_at_tpr,
    image_ap,
    image_auroc,
    image_scores,
    pixel_ap,
    pixel_auroc,
    precision,
)

#: Metric keys of :func:`evaluate`; each also has a ``<key>_ci`` entry.
METRIC_KEYS = (
    "image_auroc",
    "image_ap",
    "pixel_auroc",
    "pixel_ap",
    "best_dice",
    "dice",
    "precision",
    "dice_scr",
    "precision_scr",
    "fpr95",
)


def _counts(pred: np.ndarray, y: np.ndarray, fg: np.ndarray) -> np.ndarray:
    """Per-slice (TP, FP, FN) inside the foreground, shape (n, 3)."""
    p = pred & fg
    t = y & fg
    n = len(p)
    tp = (p & t).reshape(n, -1).sum(axis=1)
    fp = p.reshape(n, -1).sum(axis=1) - tp
    fn = t.reshape(n, -1).sum(axis=1) - tp
    return np.stack([tp, fp, fn], axis=1).astype(np.float64)


def _dice_precision(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp, fp, fn = c[..., 0], c[..., 1], c[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        p = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
    return d, p


def evaluate(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    threshold: float | None = None,
    scr_masks: ArrayLike | None = None,
    reduce: str = "max",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    max_pixels: int = MAX_PIXELS,
) -> dict[str, Any]:
    """All metrics of a set of anomaly maps against ground-truth masks (UPD conventions, see ``core``).

    Args:
        maps: Anomaly maps (n, H, W) (or a list of stacks on one in-plane grid).
        masks: Ground-truth masks on the same grid; any non-zero label is anomalous.
        foreground: Tissue masks; pixel metrics count only these pixels, and slices with an empty
            foreground are dropped (as in the UPD study). None: every pixel counts.
        threshold: Operating threshold for ``dice``/``precision`` (``maps > threshold``); None leaves
            them None.
        scr_masks: Boolean SCR masks for ``dice_scr``/``precision_scr``; None leaves them None.
        reduce: Image score from the map, "max" (default) or "mean".
        n_boot: Bootstrap replicates over slices for the ``*_ci`` intervals (0 disables them).
        seed: Seed for subsampling and bootstrap.
        confidence: Interval coverage.
        max_pixels: Pixel budget for scikit-learn curves (see ``_inputs.pixel_sample``).

    Returns:
        A dict with every key of :data:`METRIC_KEYS` (float or None), each ``<key>_ci`` ([low, high] or
        None), ``best_dice_threshold``, ``n_slices``, ``n_anomalous_slices``, ``n_pixels`` (foreground),
        ``reduce``, ``threshold``, ``confidence`` and ``notes`` (why a metric is None, what was dropped).
        ``best_dice`` is tuned on this very data: an optimistic bound, not an expected Dice.
    """
    m, y, fg = check_inputs(maps, masks, foreground)
    scr = None if scr_masks is None else check_mask(scr_masks, m.shape, "SCR masks")
    notes: list[str] = []
    keep = fg.reshape(len(fg), -1).any(axis=1)
    if not keep.any():
        raise InvalidVolumeError("every slice has an empty foreground mask; there is nothing to evaluate")
    if not keep.all():
        add_note(notes, f"{int((~keep).sum())} slice(s) with an empty foreground were left out")
        m, y, fg = m[keep], y[keep], fg[keep]
        scr = None if scr is None else scr[keep]
    fg_arg = None if foreground is None else fg

    out: dict[str, Any] = dict.fromkeys(METRIC_KEYS)
    out["image_auroc"] = image_auroc(m, y, fg_arg, reduce, notes)
    out["image_ap"] = image_ap(m, y, fg_arg, reduce, notes)
    out["pixel_auroc"] = pixel_auroc(m, y, fg, max_pixels, seed, notes)
    out["pixel_ap"] = pixel_ap(m, y, fg, max_pixels, seed, notes)
    bd, bd_thr = best_dice(m, y, fg, max_pixels, seed, notes, return_threshold=True)
    out["best_dice"] = bd
    out["fpr95"] = fpr_at_tpr(m, y, fg, 0.95, "pixel", reduce, max_pixels, seed, notes)
    if threshold is not None:
        out["dice"] = dice(m, y, threshold, fg, notes)
        out["precision"] = precision(m, y, threshold, fg, notes)
    if scr is not None:
        out["dice_scr"] = dice(scr, y, None, fg, notes)
        out["precision_scr"] = precision(scr, y, None, fg, notes)

    cis: dict[str, list[float] | None] = {f"{k}_ci": None for k in METRIC_KEYS}
    if n_boot > 0 and len(m) >= 2:
        w = resample_weights(len(m), n_boot, seed)
        img = SliceHistograms.from_scores(image_scores(m, reduce, fg_arg), y.reshape(len(y), -1).any(axis=1)).curves(w)
        pix = SliceHistograms.from_maps(m, y, fg).curves(w)
        cis["image_auroc_ci"] = interval(img["auroc"], confidence)
        cis["image_ap_ci"] = interval(img["ap"], confidence)
        cis["pixel_auroc_ci"] = interval(pix["auroc"], confidence)
        cis["pixel_ap_ci"] = interval(pix["ap"], confidence)
        cis["best_dice_ci"] = interval(pix["best_dice"], confidence)
        cis["fpr95_ci"] = interval(pix["fpr95"], confidence)
        if threshold is not None:
            d, p = _dice_precision(w @ _counts(m > float(threshold), y, fg))
            cis["dice_ci"], cis["precision_ci"] = interval(d, confidence), interval(p, confidence)
        if scr is not None:
            d, p = _dice_precision(w @ _counts(scr, y, fg))
            cis["dice_scr_ci"], cis["precision_scr_ci"] = interval(d, confidence), interval(p, confidence)
        # Intervals are only reported for metrics that exist on the full data.
        for k in METRIC_KEYS:
            if out[k] is None:
                cis[f"{k}_ci"] = None
    elif n_boot > 0:
        add_note(notes, "confidence intervals need at least two slices")

    out.update(cis)
    out.update(
        {
            "best_dice_threshold": bd_thr,
            "n_slices": len(m),
            "n_anomalous_slices": int(y.reshape(len(y), -1).any(axis=1).sum()),
            "n_pixels": int(np.count_nonzero(fg)),
            "reduce": reduce,
            "threshold": None if threshold is None else float(threshold),
            "confidence": float(confidence),
            "bootstrap": int(n_boot) if n_boot > 0 and len(m) >= 2 else 0,  # resamples behind the *_ci intervals
            "notes": notes,
        }
    )
    return out
