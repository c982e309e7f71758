"""Anomaly-detection metrics with the UPD benchmark's conventions (foreground-only, dataset-wise, no NaN)."""

from .bootstrap import bootstrap_ci
from .core import (
    best_dice,
    dice,
    fpr_at_tpr,
    image_ap,
    image_auroc,
    image_labels,
    image_scores,
    pixel_ap,
    pixel_auroc,
    precision,
)
from .evaluate import METRIC_KEYS, evaluate

__all__ = [
    "METRIC_KEYS",
    "best_dice",
    "bootstrap_ci",
    "dice",
    "evaluate",
    "fpr_at_tpr",
    "image_ap",
    "image_auroc",
    "image_labels",
    "image_scores",
    "pixel_ap",
    "pixel_auroc",
    "precision",
]
