"""D2UE: CKA-repulsive autoencoder ensemble with dual-space uncertainty (see README.md beside this file)."""

from .detector import D2UEConfig, D2UEDetector

__all__ = ["D2UEConfig", "D2UEDetector"]
