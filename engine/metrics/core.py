"""Image- and pixel-level anomaly metrics with the UPD benchmark's conventions (Lagogiannis et al.).

* Pixel metrics count only foreground (tissue) pixels: air is trivially "normal" and would inflate them.
* A slice is anomalous when its ground-truth mask has any positive pixel; its image score is the
  maximum of its map inside the foreground by default (independent of lesion size), the mean on request.
* All metrics are dataset-wise: pixels of every slice are pooled before computing a curve.
* A metric that is undefined for the data (no positive or no negative pixel/slice, nothing predicted)
  is returned as ``None`` and, when a ``notes`` list is passed, explained there — never NaN.
* Beyond ``max_pixels`` foreground pixels the curves are computed on a seeded, re-weighted subsample
  (see ``_inputs.pixel_sample``).
"""

from __future__ import annotations

import numpy as np

from ..checks import check_fraction
from ..errors import ConfigError, InvalidVolumeError
from ._inputs import (
    MAX_PIXELS,
    ArrayLike,
    add_note,
    as_stack,
    check_inputs,
    check_maps,
    check_mask,
    pixel_sample,
)

REDUCTIONS = ("max", "mean")


def image_scores(maps: ArrayLike, reduce: str = "max", foreground: ArrayLike | None = None) -> np.ndarray:
    """One score per slice: max (default) or mean of the map inside the foreground.

    A slice whose foreground is empty gets the lowest score of all maps (no tissue, no anomaly);
    :func:`evaluate` drops such slices instead.
    """
    if reduce not in REDUCTIONS:
        raise ConfigError(f"image score reduction must be one of {REDUCTIONS}, got {reduce!r}")
    m = check_maps(maps)
    if foreground is None:
        flat = m.reshape(len(m), -1)
        return (flat.max(axis=1) if reduce == "max" else flat.mean(axis=1, dtype=np.float64)).astype(np.float64)
    fg = check_mask(foreground, m.shape, "foreground masks")
    count = fg.reshape(len(m), -1).sum(axis=1)
    lowest = float(m.min())
    if reduce == "max":
        out = np.where(fg, m, -np.inf).reshape(len(m), -1).max(axis=1).astype(np.float64)
    else:
        total = np.where(fg, m, 0).reshape(len(m), -1).sum(axis=1, dtype=np.float64)
        out = total / np.maximum(count, 1)
    out[count == 0] = lowest
    return out


def image_labels(masks: ArrayLike) -> np.ndarray:
    """True for slices with any positive ground-truth pixel."""
    a = as_stack(masks, "ground-truth masks")
    y = check_mask(a, a.shape, "ground-truth masks")
    return y.reshape(len(y), -1).any(axis=1)


def _both_classes(y: np.ndarray, what: str, metric: str, notes: list[str] | None) -> bool:
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0:
        add_note(notes, f"{metric}: undefined because there are no anomalous {what}")
        return False
    if n_pos == y.size:
        add_note(notes, f"{metric}: undefined because there are no normal {what}")
        return False
    return True


def _note_constant(s: np.ndarray, metric: str, notes: list[str] | None) -> None:
    if s.size and float(s.min()) == float(s.max()):
        add_note(notes, f"{metric}: all scores are equal, so the result is chance level")


def image_auroc(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    reduce: str = "max",
    notes: list[str] | None = None,
) -> float | None:
    """Slice-level AUROC (None when all slices are normal or all anomalous)."""
    from sklearn.metrics import roc_auc_score

    return _image_metric(roc_auc_score, "image AUROC", maps, masks, foreground, reduce, notes)


def image_ap(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    reduce: str = "max",
    notes: list[str] | None = None,
) -> float | None:
    """Slice-level average precision (None without anomalous or without normal slices)."""
    from sklearn.metrics import average_precision_score

    return _image_metric(average_precision_score, "image AP", maps, masks, foreground, reduce, notes)


def _image_metric(fn, name: str, maps: ArrayLike, masks: ArrayLike, foreground: ArrayLike | None, reduce: str,
                  notes: list[str] | None) -> float | None:
    """A scikit-learn ranking metric over slices (score = the reduced map, label = any lesion voxel)."""
    m, y, fg = check_inputs(maps, masks, foreground)
    s = image_scores(m, reduce, None if foreground is None else fg)
    lab = y.reshape(len(y), -1).any(axis=1)
    if not _both_classes(lab, "slices", name, notes):
        return None
    _note_constant(s, name, notes)
    return float(fn(lab, s))


def pixel_auroc(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    notes: list[str] | None = None,
) -> float | None:
    """Pixel AUROC within the foreground (None without both anomalous and normal pixels)."""
    from sklearn.metrics import roc_auc_score

    return _pixel_metric(roc_auc_score, "pixel AUROC", maps, masks, foreground, max_pixels, seed, notes)


def pixel_ap(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    notes: list[str] | None = None,
) -> float | None:
    """Pixel average precision within the foreground (None without both classes)."""
    from sklearn.metrics import average_precision_score

    return _pixel_metric(average_precision_score, "pixel AP", maps, masks, foreground, max_pixels, seed, notes)


def _pixel_metric(fn, name: str, maps: ArrayLike, masks: ArrayLike, foreground: ArrayLike | None,
                  max_pixels: int, seed: int, notes: list[str] | None) -> float | None:
    """A scikit-learn ranking metric over (subsampled, reweighted) foreground pixels."""
    s, y, w = pixel_sample(*check_inputs(maps, masks, foreground), max_pixels, seed)
    if not _both_classes(y, "foreground pixels", name, notes):
        return None
    _note_constant(s, name, notes)
    return float(fn(y, s, sample_weight=w))


def best_dice(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    notes: list[str] | None = None,
    return_threshold: bool = False,
) -> float | tuple[float | None, float | None] | None:
    """The best pooled Dice over all thresholds ("⌈Dice⌉" in the UPD study).

    The threshold is TUNED ON THE TEST DATA, so this is an upper bound on what a deployed threshold
    achieves, useful for comparing maps independent of calibration, not as an expected Dice. Computed in
    one pass from the sorted precision-recall curve: Dice = 2PR/(P + R) at every distinct score.

    Returns:
        The Dice (None without anomalous pixels), or ``(dice, threshold)`` with ``return_threshold``;
        pixels with ``score >= threshold`` are the predicted mask.
    """
    from sklearn.metrics import precision_recall_curve

    s, y, w = pixel_sample(*check_inputs(maps, masks, foreground), max_pixels, seed)
    if not np.any(y):
        add_note(notes, "best Dice: undefined because there are no anomalous foreground pixels")
        return (None, None) if return_threshold else None
    prec, rec, thr = precision_recall_curve(y, s, sample_weight=w)
    prec, rec = prec[:-1], rec[:-1]  # the last point (recall 0) has no threshold
    denom = prec + rec
    d = np.divide(2 * prec * rec, denom, out=np.zeros_like(denom), where=denom > 0)
    i = int(np.argmax(d))
    return (float(d[i]), float(thr[i])) if return_threshold else float(d[i])


def _prediction(pred_or_maps: ArrayLike, threshold: float | None) -> np.ndarray:
    if threshold is None:
        p = as_stack(pred_or_maps, "predicted masks")
        if p.dtype != bool:
            raise ConfigError("give a threshold, or a boolean predicted mask, to compute Dice/precision")
        return p
    t = float(threshold)
    if not np.isfinite(t):
        raise ConfigError(f"threshold must be finite, got {threshold!r}")
    return check_maps(pred_or_maps) > t


def _confusion(
    pred_or_maps: ArrayLike, masks: ArrayLike, threshold: float | None, foreground: ArrayLike | None
) -> tuple[int, int, int]:
    p = _prediction(pred_or_maps, threshold)
    y = check_mask(masks, p.shape, "ground-truth masks")
    if foreground is not None:
        fg = check_mask(foreground, p.shape, "foreground masks")
        p = p & fg
        y = y & fg
    tp = int(np.count_nonzero(p & y))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(y)) - tp
    return tp, fp, fn


def dice(
    pred_or_maps: ArrayLike,
    masks: ArrayLike,
    threshold: float | None = None,
    foreground: ArrayLike | None = None,
    notes: list[str] | None = None,
) -> float | None:
    """Pooled Dice of a boolean mask, or of ``maps > threshold``, inside the foreground.

    None when both the prediction and the ground truth are empty (0/0); 0.0 when only one is.
    """
    tp, fp, fn = _confusion(pred_or_maps, masks, threshold, foreground)
    den = 2 * tp + fp + fn
    if den == 0:
        add_note(notes, "Dice: undefined because both the prediction and the ground truth are empty")
        return None
    return 2 * tp / den


def precision(
    pred_or_maps: ArrayLike,
    masks: ArrayLike,
    threshold: float | None = None,
    foreground: ArrayLike | None = None,
    notes: list[str] | None = None,
) -> float | None:
    """Pooled precision (fraction of predicted pixels that are anomalous); None when nothing is predicted."""
    tp, fp, _ = _confusion(pred_or_maps, masks, threshold, foreground)
    if tp + fp == 0:
        add_note(notes, "precision: undefined because nothing was predicted anomalous")
        return None
    return tp / (tp + fp)


def fpr_at_tpr(
    maps: ArrayLike,
    masks: ArrayLike,
    foreground: ArrayLike | None = None,
    tpr: float = 0.95,
    level: str = "pixel",
    reduce: str = "max",
    max_pixels: int = MAX_PIXELS,
    seed: int = 0,
    notes: list[str] | None = None,
) -> float | None:
    """False-positive rate at the first threshold reaching ``tpr`` (FPR95 by default).

    ``level="pixel"`` uses foreground pixels; ``level="image"`` slice scores. None without both classes.
    """
    from sklearn.metrics import roc_curve

    target = check_fraction("tpr", tpr) if tpr != 1.0 else 1.0
    m, y, fg = check_inputs(maps, masks, foreground)
    if level == "pixel":
        s, lab, w = pixel_sample(m, y, fg, max_pixels, seed)
        what = "foreground pixels"
    elif level == "image":
        s = image_scores(m, reduce, None if foreground is None else fg)
        lab, w = y.reshape(len(y), -1).any(axis=1), None
        what = "slices"
    else:
        raise ConfigError(f"level must be 'pixel' or 'image', got {level!r}")
    name = f"FPR at {target:.0%} TPR"
    if not _both_classes(lab, what, name, notes):
        return None
    _note_constant(s, name, notes)
    fpr, tpr_curve, _ = roc_curve(lab, s, sample_weight=w, drop_intermediate=False)
    i = int(np.searchsorted(tpr_curve, target - 1e-12, side="left"))
    if i >= len(fpr):
        raise InvalidVolumeError("the ROC curve never reaches the requested TPR")  # cannot happen: tpr ends at 1
    return float(fpr[i])
