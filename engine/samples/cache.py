"""Where fetched samples live: the per-user cache, or ``ANOMALENS_CACHE_DIR`` (shared or test folders)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Environment variable that replaces the per-user cache folder.
CACHE_ENV = "ANOMALENS_CACHE_DIR"
#: A temporary folder left by a killed process is removed once it is this old (no live fetch takes as long).
STALE_TEMP_S = 24 * 3600.0


def cache_root() -> Path:
    """The AnomaLens cache folder (not created here)."""
    override = os.environ.get(CACHE_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("anomalens", appauthor=False))


def samples_dir() -> Path:
    """The folder holding every fetched or derived sample file."""
    return cache_root() / "samples"


def remove_stale_temps(target: Path) -> None:
    """Delete old ``.<name>.*.tmp`` / ``.<name>.old-*`` folders that a killed fetch of ``target`` left."""
    parent = target.parent
    if not parent.is_dir():
        return
    now = time.time()
    for pattern in (f".{target.name}.*.tmp", f".{target.name}.old-*"):
        for leftover in parent.glob(pattern):
            try:
                if now - leftover.stat().st_mtime > STALE_TEMP_S:
                    log.info("removing stale temporary folder %s", leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                continue
