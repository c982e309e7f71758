"""PatchCore-kind reference detector: the baseline every seed paper compares against."""

from .detector import PatchCoreConfig, PatchCoreDetector

__all__ = ["PatchCoreConfig", "PatchCoreDetector"]
