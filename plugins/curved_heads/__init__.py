"""Curved-geometry heads detector: spherical, hyperbolic and mixed heads, in-One and in-Two (README.md)."""

from anomalens.plugins.curved_heads.detector import CurvedHeadsConfig, CurvedHeadsDetector
from anomalens.plugins.curved_heads.heads import VARIANTS, CurvedHeads

__all__ = ["VARIANTS", "CurvedHeads", "CurvedHeadsConfig", "CurvedHeadsDetector"]
