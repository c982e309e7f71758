"""Folders the viewer uses, and the model list it shows (read from the engine's model store).

``ANOMALENS_DATA_DIR`` moves the data folder (models) and ``ANOMALENS_CONFIG_DIR`` the settings folder
(recent files), so tests and shared installations never touch a real home folder.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from ..engine.errors import AnomaLensError
from ..engine.modelstore import ModelStore, models_dir
from ..engine.paths import config_dir

__all__ = ["BundleEntry", "config_dir", "describe_bundle", "list_bundles", "models_dir"]


@dataclass(frozen=True)
class BundleEntry:
    """A model bundle found on disk, described without loading its weights."""

    path: Path
    name: str = ""
    detector: str = ""
    calibrated: bool = False
    error: str = ""
    site_default: bool = False  # its profile's active version (what the site uses)

    @property
    def label(self) -> str:
        name = self.name or self.path.name
        if self.error:
            return f"{name} (unreadable)"
        return (f"{name} ({self.detector}{', calibrated' if self.calibrated else ''}"
                f"{', site default' if self.site_default else ''})")


def describe_bundle(path: str | Path) -> BundleEntry:
    """Read a bundle's manifest; a broken or newer-schema bundle gives an entry with ``error`` set."""
    from ..engine.detectors import read_manifest
    from ..engine.detectors.bundle import manifest_calibration
    from ..engine.logredact import remember

    p = Path(path)
    remember(p)  # its error text is shown and logged: a token there, never the folder's name
    try:
        manifest = read_manifest(p)
        calibrated = manifest_calibration(manifest) is not None
    except AnomaLensError as exc:
        return BundleEntry(p, error=str(exc))
    return BundleEntry(p, p.name, str(manifest.get("detector", "")), calibrated)


def list_bundles(folder: str | Path | None = None) -> list[BundleEntry]:
    """Bundles of the model folder (lone bundles and profile versions), unreadable ones included and marked.

    Unreadable bundles (damaged, or from a newer AnomaLens) stay in the list so choosing one shows why it
    cannot be used, instead of the model silently missing.
    """
    from ..engine.logredact import remember

    store = ModelStore(folder)
    active = set()
    for profile in store.profiles():
        with contextlib.suppress(AnomaLensError, OSError):
            info = store.active(profile)
            if info is not None:
                active.add(info.path)
    entries = {b.path: BundleEntry(b.path, b.name, b.detector, b.calibrated, site_default=b.path in active)
               for b in store.bundles()}
    for p in entries:
        remember(p)  # profiles trained before names were hashed may be named after a scan's file
    if store.root.is_dir():
        for p in sorted(store.root.iterdir()):
            if p not in entries and p.is_dir() and not p.name.startswith(".") and (p / "bundle.json").is_file():
                entries[p] = describe_bundle(p)
    return sorted(entries.values(), key=lambda e: str(e.path))
