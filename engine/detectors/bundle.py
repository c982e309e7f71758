"""Model bundles: a folder with ``weights.safetensors`` and ``bundle.json``, loaded with no pickle.

Like MONAI bundles without executable config: the JSON names a registered detector and its plain-data
config; tensors come from safetensors, which cannot run code. Files that need unpickling (``.pt``,
``.pkl``, …) are refused, because unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..calibration import Calibration
from ..domain import TrainingDomain
from ..errors import ModelError, UnsafeModelFileError
from ..fileio import atomic_dir
from ..logredact import remember

if TYPE_CHECKING:
    from .base import Detector

SCHEMA_VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "bundle.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".npy")


def _refuse_pickles(path: Path) -> None:
    candidates = [path] if path.is_file() else list(path.glob("*")) if path.is_dir() else []
    for p in candidates:
        if p.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeModelFileError(
                f"{p.name} is a pickle-based file; AnomaLens never unpickles model files because that can run "
                "arbitrary code. Use a bundle folder (weights.safetensors + bundle.json) made by 'anomalens train'."
            )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check ``bundle.json`` of a bundle folder (no weights are loaded)."""
    path = Path(path)
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not path.exists():
        raise ModelError(f"no model at {path}")
    _refuse_pickles(path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a model bundle folder (expected {MANIFEST} and {WEIGHTS} inside)")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ModelError(f"{path} is not a model bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{manifest_path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelError(f"{manifest_path} must hold a JSON object")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int):
        raise ModelError(f"{manifest_path} has no integer schema_version")
    if schema > SCHEMA_VERSION:
        raise ModelError(
            f"this model bundle uses schema version {schema}, but this AnomaLens reads up to version "
            f"{SCHEMA_VERSION}: update AnomaLens to a release that reads schema {schema}"
        )
    for key in ("detector", "config"):
        if key not in manifest:
            raise ModelError(f"{manifest_path} lacks the required key {key!r}")
    return manifest


def manifest_calibration(manifest: dict[str, Any]) -> Calibration | None:
    """The calibration a ``bundle.json`` holds (checked; None: not calibrated), without loading any weight."""
    return Calibration.from_dict(manifest.get("calibration"))


def save_bundle(detector: Detector, path: str | Path, overwrite: bool = False,
                parent: dict[str, Any] | None = None, note: str = "") -> Path:
    """Save a fitted detector atomically (temporary folder, then rename)."""
    from .. import __version__

    if not detector.fitted:
        raise ModelError("refusing to save an untrained detector")
    path = Path(path)
    # clone: a parameter shared by several layers (one curvature) appears under several keys, and
    # safetensors refuses tensors that share memory.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in detector.state_dict().items()}
    bundle_version = 1 if parent is None else int(parent.get("bundle_version", 1)) + 1
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "detector": detector.name,
        "detector_version": detector.version,
        "config": detector.config_dict(),
        "seed": detector.seed,
        "preprocessing": detector.preprocessing,
        "training": detector.training,
        "calibration": None if detector.calibration is None else detector.calibration.to_dict(),
        "extra": detector.extra_state(),
        "bundle_version": bundle_version,
        "parent": None if parent is None else {k: parent.get(k) for k in ("created", "bundle_version", "path")},
        "note": note,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "anomalens_version": __version__,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)
    try:
        with atomic_dir(path, overwrite=overwrite, verify=lambda folder: _verify_saved(folder, text)) as tmp:
            _save_weights(tensors, tmp / WEIGHTS)
            (tmp / MANIFEST).write_text(text, encoding="utf-8")
    except FileExistsError as exc:
        raise ModelError(f"{path} already exists; choose a new folder (bundles are never overwritten)") from exc
    detector.bundle_manifest = manifest  # it is now this saved version
    return path


def _save_weights(tensors: dict[str, Any], target: Path) -> None:
    """Safetensors' writer, its I/O failures as the OSError they are (its own error type hides the errno)."""
    import errno
    import re

    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(target))
    except SafetensorError as exc:
        m = re.search(r"os error (\d+)", str(exc))
        raise OSError(int(m.group(1)) if m else errno.EIO, str(exc)) from exc


def _verify_saved(folder: Path, manifest_text: str) -> None:
    """A written bundle is whole: the manifest reads back as written, the weights file as long as its header says."""
    if (folder / MANIFEST).read_text(encoding="utf-8") != manifest_text:
        raise ValueError(f"{MANIFEST} did not read back as written")
    weights = folder / WEIGHTS
    with weights.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if weights.stat().st_size != 8 + n + end:
        raise ValueError(f"{WEIGHTS} holds {weights.stat().st_size} bytes, its header describes {8 + n + end}")


def load_bundle(path: str | Path, device: str = "cpu") -> Detector:
    """Load a bundle folder into its registered detector class."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .registry import get_detector_class

    path = Path(path)
    remember(path)
    manifest = read_manifest(path)
    cls = get_detector_class(manifest["detector"])
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{path} has no {WEIGHTS}")
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{weights} is damaged or not a safetensors file: {exc}") from exc
    detector = cls(config=manifest["config"], device=device, seed=int(manifest.get("seed", 0)))
    detector.preprocessing = dict(manifest.get("preprocessing") or {})
    detector.training = dict(manifest.get("training") or {})
    detector.calibration = Calibration.from_dict(manifest.get("calibration"))
    TrainingDomain.from_training(detector.training)  # a damaged record fails here, not at the first scan
    try:
        detector.load_extra_state(dict(manifest.get("extra") or {}))
        detector.load_state_dict(tensors)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path} does not match the {cls.name} detector's layout: {exc}") from exc
    detector.fitted = True
    detector.bundle_manifest = manifest
    return detector
