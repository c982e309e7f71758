"""The Lorentz hyperbolic classifier detector (flagship; see README.md beside this file)."""

from anomalens.plugins.lorentz.detector import LorentzConfig, LorentzDetector

__all__ = ["LorentzConfig", "LorentzDetector"]
