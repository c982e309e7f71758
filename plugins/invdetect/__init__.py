"""InvDetect: one-class SVM in the noise-latent space of DDIM inversion (see README.md beside this file)."""

from anomalens.plugins.invdetect.detector import InvDetectConfig, InvDetectDetector

__all__ = ["InvDetectConfig", "InvDetectDetector"]
