"""AnomaLens: the repository root is the package ``anomalens`` (``engine/`` is ``anomalens.engine``, …).

The product's folders sit at the top level and import each other relatively, so the source tree reads
exactly as the installed package does, for Python and for tools that read imports from the files. Tests,
benchmarks and the installer live beside them but are not part of the package (``setup.py`` lists it).
"""
