"""The user's model folder: bundles, site profiles with numbered versions, and which version is active.

Layout (``<data dir>/models``, ``ANOMALENS_DATA_DIR`` overrides the data dir)::

    models/
      brain-ct/                 a site profile
        v0001/                  bundle folders (weights.safetensors + bundle.json), never modified
        v0002/                  fine-tuned from v0001: bundle.json's parent.path is "v0001" (its folder name)
        active.json             {"version": "v0001"}: the one in use, written atomically
        bases.json              {"v0001": "/abs/path"}: a version fine-tuned from a bundle outside the profile
      some-bundle/              a lone bundle is listed too

A fine-tune writes a *new* version (``save_bundle(parent=...)`` is atomic) and makes it active; a
rollback only rewrites ``active.json``. A bundle names no file on disk: its parent is a sibling version's
folder name, and the path of a base outside the profile (a user's ``/data/Doe_John_model``) is kept in the
profile's own ``bases.json``, not in the bundle that may be copied to another site. No version is ever
deleted or overwritten, so any state a site ran with can be restored and audited.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .detectors.bundle import MANIFEST, read_manifest, save_bundle
from .errors import AnomaLensError, ConfigError, ModelError, OutputError
from .fileio import atomic_write_text
from .paths import data_dir
from .progress import CancelToken, ProgressCallback, check, report, stage

if TYPE_CHECKING:
    from .detectors.base import Detector
    from .recalibration import Recalibration

ACTIVE = "active.json"
#: The profile's record of the bundles outside it that versions were fine-tuned from: ``{version: path}``.
BASES = "bases.json"
_VERSION = re.compile(r"^v(\d{4,})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def models_dir() -> Path:
    """``<data dir>/models`` (not created here)."""
    return data_dir() / "models"


@dataclass(frozen=True)
class BundleInfo:
    """A bundle as listed from its ``bundle.json``, without loading weights."""

    path: Path
    name: str
    detector: str
    bundle_version: int
    created: str
    parent: str | None
    note: str
    manifest: dict[str, Any] = field(repr=False, compare=False)

    @property
    def calibrated(self) -> bool:
        """Whether the bundle holds a (valid) calibration; a damaged one counts as none."""
        from .detectors.bundle import manifest_calibration

        try:
            return manifest_calibration(self.manifest) is not None
        except ModelError:
            return False

    @property
    def version(self) -> str | None:
        """``v0002`` for a version folder of a profile, else None."""
        return self.path.name if _VERSION.match(self.path.name) else None

    @classmethod
    def read(cls, path: Path) -> BundleInfo:
        m = read_manifest(path)
        parent = m.get("parent") or {}
        name = f"{path.parent.name}/{path.name}" if _VERSION.match(path.name) else path.name
        return cls(path=path, name=name, detector=str(m.get("detector")),
                   bundle_version=int(m.get("bundle_version") or 1), created=str(m.get("created") or ""),
                   parent=_parent_path(path, parent), note=str(m.get("note") or ""), manifest=m)


def _parent_path(path: Path, parent: Any) -> str | None:
    """Where a bundle's parent is, as an absolute path (None: none recorded or found).

    A sibling version named in it, a base the profile's ``bases.json`` names for it, or (bundles saved before
    either existed) the absolute path it holds.
    """
    if not isinstance(parent, dict):
        return None
    ref = parent.get("path")
    if isinstance(ref, str) and _VERSION.match(ref):
        return str((path.parent / ref).resolve())
    if parent.get("base") and _VERSION.match(path.name):
        try:
            bases = json.loads((path.parent / BASES).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        base = bases.get(path.name) if isinstance(bases, dict) else None
        return base if isinstance(base, str) else None
    return ref if isinstance(ref, str) else None


def _is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file() and not path.name.startswith(".")


class ModelStore:
    """The model folder: list bundles and profile versions, save new versions, roll back."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else models_dir()

    # -- listing --------------------------------------------------------------------------------
    def bundles(self) -> list[BundleInfo]:
        """Every readable bundle directly in the folder or one level down (profile versions), by name."""
        if not self.root.is_dir():
            return []
        found: list[BundleInfo] = []
        for p in sorted(self.root.iterdir()):
            # a bundle folder may hold versions too: fine-tunes of a bundle in the store were saved inside it
            # before they got a profile of their own ("<name>-site"), and were listed nowhere
            candidates = ([p, *self._version_dirs(p)] if _is_bundle(p) else sorted(q for q in p.iterdir()
                                                                                   if _is_bundle(q))) \
                if p.is_dir() and not p.name.startswith(".") else []
            for q in candidates:
                try:
                    found.append(BundleInfo.read(q))
                except ModelError:  # a damaged or foreign folder must not hide the others
                    continue
        return found

    def profiles(self) -> list[str]:
        """Names of site profiles (folders holding ``vNNNN`` versions)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and any(self._version_dirs(p)))

    def _profile_dir(self, profile: str) -> Path:
        if not _NAME.match(profile):
            raise ConfigError(f"a profile name may hold letters, digits, '.', '_' and '-' only, got {profile!r}")
        return self.root / profile

    @staticmethod
    def _version_dirs(folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        return sorted((p for p in folder.iterdir() if _VERSION.match(p.name) and _is_bundle(p)),
                      key=lambda p: int(p.name[1:]))

    def versions(self, profile: str) -> list[BundleInfo]:
        """A profile's versions, oldest first."""
        return [BundleInfo.read(p) for p in self._version_dirs(self._profile_dir(profile))]

    def active(self, profile: str) -> BundleInfo | None:
        """The version in use: the one ``active.json`` names, else the newest; None for an empty profile."""
        folder = self._profile_dir(profile)
        pointer = folder / ACTIVE
        if pointer.is_file():
            try:
                name = json.loads(pointer.read_text(encoding="utf-8")).get("version")
            except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
                name = None
            if isinstance(name, str) and _VERSION.match(name) and _is_bundle(folder / name):
                return BundleInfo.read(folder / name)
        versions = self._version_dirs(folder)
        return BundleInfo.read(versions[-1]) if versions else None

    def lineage(self, path: str | Path) -> list[BundleInfo]:
        """A bundle and its ancestors through ``parent.path``, newest first (stops at a missing parent)."""
        out: list[BundleInfo] = []
        seen: set[Path] = set()
        cur: Path | None = Path(path)
        while cur is not None and cur.resolve() not in seen and _is_bundle(cur):
            seen.add(cur.resolve())
            info = BundleInfo.read(cur)
            out.append(info)
            cur = Path(info.parent) if info.parent else None
        return out

    # -- writing --------------------------------------------------------------------------------
    def new_version_path(self, base: str | Path) -> Path:
        """The folder for the next version of a profile: ``base`` is a profile name or any of its versions.

        A bundle outside any profile (e.g. one trained elsewhere) starts a profile named after it.
        """
        base_path = Path(base)
        if _VERSION.match(base_path.name) and base_path.parent.is_dir():
            folder = base_path.parent
        elif _is_bundle(base_path) or len(base_path.parts) > 1:
            folder = self._profile_dir(re.sub(r"[^A-Za-z0-9._-]", "-", base_path.name).lstrip(".-") or "profile")
            if folder.resolve() == base_path.resolve() and not self._version_dirs(folder):
                # the bundle lives in the store under that very name: its versions get a profile of their own
                # (saved inside the bundle's folder, they were listed nowhere after a restart)
                folder = self._profile_dir(f"{folder.name}-site")
        else:
            folder = self._profile_dir(str(base))
        existing = [int(p.name[1:]) for p in folder.iterdir() if _VERSION.match(p.name)] if folder.is_dir() else []
        return folder / f"v{max(existing, default=0) + 1:04d}"

    def move_versions_out(self, bundle: str | Path) -> Path | None:
        """Move versions saved inside a bundle's folder into a profile of their own; returns it (None: none).

        Earlier releases saved the fine-tunes of a bundle kept in the store inside its folder (``v0001``,
        ``active.json``); replacing the bundle (the demo retrains its model) deleted them with it. They go to
        ``<name>-site``, the profile ``new_version_path`` gives such a bundle now (or a dated one if taken).
        """
        folder = Path(bundle)
        items = [p for p in folder.iterdir() if _VERSION.match(p.name) or p.name in (ACTIVE, BASES)] \
            if folder.is_dir() else []
        if not items:
            return None
        target = self._profile_dir(f"{folder.name}-site")
        if target.exists():
            target = self._profile_dir(f"{folder.name}-site-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}")
        target.mkdir(parents=True)
        for item in items:
            shutil.move(str(item), str(target / item.name))
        return target

    def _record_base(self, version: Path, base: Path) -> None:
        """Note in the profile's ``bases.json`` that ``version`` is fine-tuned from ``base`` (outside the profile)."""
        record = version.parent / BASES
        try:
            bases = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            bases = {}
        bases = bases if isinstance(bases, dict) else {}
        bases[version.name] = str(base.resolve())
        version.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(bases, indent=2) + "\n")

    def set_active(self, version_path: str | Path) -> BundleInfo:
        """Make a version its profile's active one (``active.json`` replaced atomically)."""
        p = Path(version_path)
        if not (_VERSION.match(p.name) and _is_bundle(p)):
            raise ModelError(f"{p} is not a version folder of a profile")
        info = BundleInfo.read(p)
        atomic_write_text(p.parent / ACTIVE, json.dumps({"version": p.name}, indent=2) + "\n")
        return info

    def base(self, profile: str) -> Path | None:
        """The bundle outside the profile that its first version was fine-tuned from, while it is there.

        A site rolls back to it too: without it, after a first fine-tune nothing led back to the model the
        site started from.
        """
        try:
            versions = self.versions(profile)
        except (AnomaLensError, OSError):
            return None
        if not versions or not versions[0].parent:
            return None
        base = Path(versions[0].parent).resolve()
        if base.parent == versions[0].path.resolve().parent or not _is_bundle(base):
            return None
        return base

    def rollback(self, profile: str, version: str | int) -> BundleInfo:
        """Make an earlier (or any) version active again; nothing is deleted."""
        name = f"v{int(version):04d}" if isinstance(version, int) or str(version).isdigit() else str(version)
        p = self._profile_dir(profile) / name
        if not (_VERSION.match(name) and _is_bundle(p)):
            have = ", ".join(v.path.name for v in self.versions(profile)) or "none"
            raise ConfigError(f"profile {profile!r} has no version {name!r} (versions: {have})")
        return self.set_active(p)

    def save_version(self, detector: Detector, base: str | Path, note: str = "",
                     parent: str | Path | None = None, activate: bool = True) -> BundleInfo:
        """Save a detector as the next version of a profile (atomically) and, by default, make it active.

        Args:
            detector: the fitted (e.g. fine-tuned) detector.
            base: profile name, or the bundle it was derived from (its profile is used, or started).
            note: why this version exists (shown in the version list).
            parent: the bundle it was derived from, recorded as ``parent.path`` (default: ``base`` when that
                is a bundle).
            activate: point ``active.json`` at the new version.
        """
        target = self.new_version_path(base)
        parent_path = Path(parent) if parent is not None else (Path(base) if _is_bundle(Path(base)) else None)
        parent_info = None
        for _ in range(5):  # another process may take the same number first: then use the next one
            if parent_path is not None:
                m = read_manifest(parent_path)
                sibling = _VERSION.match(parent_path.name) and parent_path.resolve().parent == target.parent.resolve()
                parent_info = {"created": m.get("created"), "bundle_version": m.get("bundle_version", 1),
                               "path": parent_path.name if sibling else None, "base": not sibling}
                if not sibling:  # the path stays in the profile's own record, never in the bundle
                    self._record_base(target, parent_path)
            try:
                save_bundle(detector, target, parent=parent_info, note=note)
                break
            except ModelError:
                if not target.exists():
                    raise
                target = self.new_version_path(base)
        else:
            raise ModelError(f"could not find a free version folder next to {target}")
        if not activate:
            return BundleInfo.read(target)
        try:
            return self.set_active(target)
        except OutputError as exc:  # the version is whole and kept: say so, not only that the write failed
            raise OutputError(f"saved {target.parent.name}/{target.name}, but could not make it the version in use "
                              f"({exc}); it is in the version list, and the one in use is unchanged") from exc


# --------------------------------------------------------------------------------------------- site fine-tuning


@dataclass
class SiteUpdate:
    """What a site fine-tune produced: the recalibration (adapted detector, false positives) and its saved version."""

    recalibration: Recalibration
    info: BundleInfo

    @property
    def detector(self) -> Detector:
        return self.recalibration.detector


def fine_tune_site(detector: Detector, normals: np.ndarray, store: ModelStore, base: str | Path, note: str = "",
                   parent: str | Path | None = None, target_fpr: float | None = None,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> SiteUpdate:
    """Fine-tune a detector on a site's normal slices, recalibrate it, and save the next profile version.

    The viewer's "Fine-tune on marks" runs this; it is ``recalibrate(fine_tune=True)`` (the same as
    ``anomalens calibrate --fine-tune``: every other slice adapts, the rest calibrate) plus a saved version.
    ``detector`` is changed in place, so pass a copy (e.g. freshly loaded from its bundle) when the original
    must stay usable. Nothing is saved if cancelled.
    """
    from .recalibration import recalibrate

    rec = recalibrate(detector, normals, fine_tune=True, target_fpr=target_fpr, progress=stage(progress, 0.0, 0.95),
                      cancel=cancel)
    check(cancel)
    report(progress, 0.97, "saving the new version")
    info = store.save_version(detector, base, note=note, parent=parent)
    report(progress, 1.0, f"saved {info.name}")
    return SiteUpdate(rec, info)
