"""Detector plugins shipped with AnomaLens; each registers itself under the ``anomalens.detectors`` entry point."""

if __name__ != "anomalens.plugins":  # one import path: the folder plugins/ IS anomalens.plugins
    raise ImportError(f"import anomalens.plugins, not {__name__} (the source folder is not a package of its own)")
