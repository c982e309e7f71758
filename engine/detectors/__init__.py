"""The detector interface, its result type, the plugin registry and model bundles."""

from .base import Detector, DetectorConfig, validate_slices
from .bundle import load_bundle, read_manifest, save_bundle
from .registry import (
    available_detectors,
    create_detector,
    detector_choices,
    get_detector_class,
)
from .result import AnomalyResult, Embeddings

__all__ = [
    "AnomalyResult",
    "Detector",
    "DetectorConfig",
    "Embeddings",
    "available_detectors",
    "create_detector",
    "detector_choices",
    "get_detector_class",
    "load_bundle",
    "read_manifest",
    "save_bundle",
    "validate_slices",
]
