"""The user's folders (platformdirs), each overridable by an environment variable for tests and sites."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """Models, the case library and site profiles (``ANOMALENS_DATA_DIR`` overrides)."""
    env = os.environ.get("ANOMALENS_DATA_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("anomalens", appauthor=False))


def config_dir() -> Path:
    """Settings and recent files (``ANOMALENS_CONFIG_DIR`` overrides)."""
    env = os.environ.get("ANOMALENS_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("anomalens", appauthor=False))
