"""Preprocessing shared by all detectors: intensity normalisation, foreground masks, resizing."""

from anomalens.engine.preprocess.foreground import foreground_mask
from anomalens.engine.preprocess.intensity import IntensityConfig, normalise_array, normalise_volume
from anomalens.engine.preprocess.resize import resize_back, resize_slices, resize_tensor, to_tensor

__all__ = [
    "IntensityConfig",
    "foreground_mask",
    "normalise_array",
    "normalise_volume",
    "resize_back",
    "resize_slices",
    "resize_tensor",
    "to_tensor",
]
