"""The Lorentz hyperbolic classifier detector (flagship; see README.md beside this file)."""

from .detector import LorentzConfig, LorentzDetector

__all__ = ["LorentzConfig", "LorentzDetector"]
