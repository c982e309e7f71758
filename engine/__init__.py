"""AnomaLens engine: IO, preprocessing, models, post-processing and metrics, with no UI toolkit.

The engine is what the CLI, the napari plugin and the tests all call; nothing here imports Qt or napari
(an import-linter contract in CI keeps it so).
"""

if __name__ != "anomalens.engine":  # one import path: the folder engine/ IS anomalens.engine
    raise ImportError(f"import anomalens.engine, not {__name__} (the source folder is not a package of its own)")

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anomalens")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
