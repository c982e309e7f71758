"""Curved geometry for the hyperbolic and spherical detectors: Lorentz, Poincaré ball, sphere.

Math lives in the function modules ``lorentz``, ``poincare`` and ``sphere`` (tensors and a curvature
magnitude ``c > 0`` in, tensors out); ``manifolds`` holds the curvature as a (learnable) module and
``layers`` the trainable layers. Import the submodules directly, e.g.
``from anomalens.engine.geometry import lorentz``.
"""
