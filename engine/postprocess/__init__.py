"""From anomaly maps to decisions: score normalisation, calibration on normals, and SCR graph-cut masks.

Submodules are imported on use (``from anomalens.engine.postprocess.scr import scr_refine``) so that
importing the package does not load PyMaxflow or scikit-learn.
"""
