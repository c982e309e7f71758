"""InvDetect: one-class SVM in the noise-latent space of DDIM inversion (see README.md beside this file)."""

from .detector import InvDetectConfig, InvDetectDetector

__all__ = ["InvDetectConfig", "InvDetectDetector"]
