"""Anomaly-detection metrics with the UPD benchmark's conventions (foreground-only, dataset-wise, no NaN)."""

from anomalens.engine.metrics.bootstrap import bootstrap_ci
from anomalens.engine.metrics.core import (
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
from anomalens.engine.metrics.evaluate import METRIC_KEYS, evaluate

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
