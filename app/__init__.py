"""Qt and napari user interface of AnomaLens: it shows and asks, the engine computes."""

if __name__ != "anomalens.app":  # one import path: the folder app/ IS anomalens.app
    raise ImportError(f"import anomalens.app, not {__name__} (the source folder is not a package of its own)")
