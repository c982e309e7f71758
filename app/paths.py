"""Per-user folders of the viewer: models (in the data folder) and settings such as recent files.

``ANOMALENS_DATA_DIR`` moves the data folder (see ``anomalens.engine.userdata``) and
``ANOMALENS_CONFIG_DIR`` the settings folder, so tests and shared installations never touch a real
home folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from anomalens.engine.errors import AnomaLensError
from anomalens.engine.userdata import data_dir

CONFIG_ENV = "ANOMALENS_CONFIG_DIR"


def models_dir() -> Path:
    """Where the viewer lists and saves model bundles (not created here)."""
    return data_dir() / "models"


def config_dir() -> Path:
    """The viewer's settings folder (platformdirs' user config folder unless overridden)."""
    override = os.environ.get(CONFIG_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("anomalens", appauthor=False))


@dataclass(frozen=True)
class BundleEntry:
    """A model bundle found on disk, described without loading its weights."""

    path: Path
    detector: str = ""
    calibrated: bool = False
    error: str = ""

    @property
    def label(self) -> str:
        if self.error:
            return f"{self.path.name} (unreadable)"
        return f"{self.path.name} ({self.detector}{', calibrated' if self.calibrated else ''})"


def describe_bundle(path: str | Path) -> BundleEntry:
    """Read a bundle's manifest; a broken bundle gives an entry with ``error`` set instead of raising."""
    from anomalens.engine.detectors import read_manifest

    p = Path(path)
    try:
        manifest = read_manifest(p)
    except AnomaLensError as exc:
        return BundleEntry(p, error=str(exc))
    cal = manifest.get("calibration") or {}
    return BundleEntry(p, str(manifest.get("detector", "")), "normaliser" in cal)


def list_bundles(folder: str | Path | None = None) -> list[BundleEntry]:
    """Bundle folders (holding ``bundle.json``) directly inside ``folder`` (default: :func:`models_dir`)."""
    root = Path(folder) if folder is not None else models_dir()
    if not root.is_dir():
        return []
    return [describe_bundle(p) for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and (p / "bundle.json").is_file()]
