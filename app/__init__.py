"""Qt and napari user interface of AnomaLens: it shows and asks, the engine computes."""
