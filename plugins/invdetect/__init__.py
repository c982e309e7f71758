"""InvDetect: one-class SVM in the noise-latent space of DDIM inversion (see README.md beside this file)."""

from .detector import SCR_MODES, InvDetectConfig, InvDetectDetector, Segmentation

__all__ = ["SCR_MODES", "InvDetectConfig", "InvDetectDetector", "Segmentation"]
