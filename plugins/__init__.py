"""Detector plugins shipped with AnomaLens; each registers itself under the ``anomalens.detectors`` entry point."""
