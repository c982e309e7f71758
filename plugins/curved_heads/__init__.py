"""Curved-geometry heads detector: spherical, hyperbolic and mixed heads, in-One and in-Two (README.md)."""

from .detector import CurvedHeadsConfig, CurvedHeadsDetector
from .heads import VARIANTS, CurvedHeads

__all__ = ["VARIANTS", "CurvedHeads", "CurvedHeadsConfig", "CurvedHeadsDetector"]
