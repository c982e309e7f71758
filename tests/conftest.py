"""Tests never touch the user's real folders: models, marks, settings and the sample cache are redirected.

Set before any test module is imported, so every process a test starts (dask workers, the CLI) inherits
it. Samples are cached under ``build/test-cache`` (ignored by git) so that a second run does not download
brain1 again; models, the case library and settings go to a fresh temporary folder per run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="anomalens-tests-"))
    config.anomalens_scratch = scratch
    os.environ["ANOMALENS_CACHE_DIR"] = str(ROOT / "build" / "test-cache")
    os.environ["ANOMALENS_DATA_DIR"] = str(scratch / "data")
    os.environ["ANOMALENS_CONFIG_DIR"] = str(scratch / "config")
    os.environ["NAPARI_CONFIG"] = str(scratch / "napari" / "settings.yaml")  # the reader preference is napari's


def pytest_unconfigure(config) -> None:
    # One scratch folder per run was left in the temporary folder (800 after two days of runs here).
    scratch = getattr(config, "anomalens_scratch", None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
