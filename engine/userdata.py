"""Where the user's own data lives: the case library and the model folder (``ANOMALENS_DATA_DIR`` overrides).

Unlike the sample cache, nothing here can be fetched again: marks and site profiles are the user's work,
so they go to the per-user *data* folder, never the cache. Tests and shared installations point
``ANOMALENS_DATA_DIR`` elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that replaces the per-user data folder.
DATA_ENV = "ANOMALENS_DATA_DIR"


def data_dir() -> Path:
    """The AnomaLens data folder (not created here)."""
    override = os.environ.get(DATA_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("anomalens", appauthor=False))
