"""The AnomaLens dock widgets (each takes the napari viewer; they share state through ``app.state``)."""
