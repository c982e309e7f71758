"""Data files (window presets, icons) installed with the package."""

if __name__ != "anomalens.resources":  # one import path: the folder resources/ IS anomalens.resources
    raise ImportError(f"import anomalens.resources, not {__name__} (the source folder is not a package of its own)")
