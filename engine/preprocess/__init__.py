"""Preprocessing shared by all detectors: intensity normalisation, foreground masks, resizing."""

from .foreground import foreground_mask
from .intensity import IntensityConfig, normalise_array, normalise_volume
from .resize import resize_back, resize_slices, resize_tensor, to_tensor

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
