"""Detector plugins shipped with AnomaLens, each found through the ``anomalens.detectors`` entry point."""
