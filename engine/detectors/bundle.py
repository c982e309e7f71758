"""Model bundles: a folder with ``weights.safetensors`` and ``bundle.json``, loaded with no pickle.

Like MONAI bundles without executable config: the JSON names a registered detector and its plain-data
config; tensors come from safetensors, which cannot run code. Files that need unpickling (``.pt``,
``.pkl``, …) are refused, because unpickling an untrusted file can run arbitrary code.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..calibration import Calibration
from ..domain import TrainingDomain
from ..errors import ConfigError, ModelError, UnsafeModelFileError
from ..fileio import atomic_dir, file_sha256
from ..logredact import remember

if TYPE_CHECKING:
    from .base import Detector

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Tensors of backbone weights a model carries (``Detector.backbone_weights``), apart from its own state.
BACKBONE_PREFIX = "backbone_weights."
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
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ModelError(f"{MANIFEST} of this model is {manifest_path.stat().st_size:,} bytes; a real one is a few "
                         "hundred kilobytes: refusing it")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{MANIFEST} of this model is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise ModelError(f"{MANIFEST} of this model is nested too deeply to be a model's description") from exc
    return check_manifest(manifest)


#: The largest ``bundle.json`` read at all (a calibration's 1,001 knots and a config are a few hundred kB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
_OBJECT_KEYS = ("config", "preprocessing", "training", "extra", "parent")


def check_manifest(manifest: Any) -> dict[str, Any]:
    """The parts of ``bundle.json`` every loader relies on, checked for type before anything is built."""
    if not isinstance(manifest, dict):
        raise ModelError(f"{MANIFEST} must hold a JSON object")
    schema = manifest.get("schema_version")
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise ModelError(f"{MANIFEST} has no valid schema_version (a positive whole number), got {schema!r}")
    if schema > SCHEMA_VERSION:
        raise ModelError(
            f"this model bundle uses schema version {schema}, but this AnomaLens reads up to version "
            f"{SCHEMA_VERSION}: update AnomaLens to a release that reads schema {schema}"
        )
    for key in ("detector", "config"):
        if key not in manifest:
            raise ModelError(f"{MANIFEST} lacks the required key {key!r}")
    if not isinstance(manifest["detector"], str) or not manifest["detector"]:
        raise ModelError(f"{MANIFEST}'s detector must be a name, got {manifest['detector']!r}")
    for key in _OBJECT_KEYS:
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise ModelError(f"{MANIFEST}'s {key} must be an object, got {type(manifest[key]).__name__}")
    digest = manifest.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise ModelError(f"{MANIFEST}'s weights_sha256 must be 64 hexadecimal digits, got {digest!r}")
    for key in ("seed", "bundle_version"):
        v = manifest.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
            raise ModelError(f"{MANIFEST}'s {key} must be a whole number ≥ 0, got {v!r}")
    return manifest


#: Tensor types a model may hold: floating point, and BatchNorm's step counters.
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_COUNTER = "num_batches_tracked"


def check_weights(weights: Path, budget: int | None = None) -> None:
    """The safetensors header, checked before any tensor is allocated: types, shapes, offsets, total size.

    safetensors checks that offsets fit the file; this also refuses integer or boolean tensors where a model
    holds floats (a forged bank of int8 or bool), empty tensors, and a total beyond the memory budget.
    """
    from ..io.base import format_bytes, resolve_max_bytes

    budget = resolve_max_bytes() if budget is None else budget
    size = weights.stat().st_size
    with weights.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ModelError(f"{WEIGHTS} is damaged or not a safetensors file (truncated)")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > min(size - 8, MAX_MANIFEST_BYTES):
            raise ModelError(f"{WEIGHTS} is damaged or not a safetensors file (a header of {n:,} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ModelError(f"{WEIGHTS} is damaged or not a safetensors file (its header)") from exc
    if not isinstance(header, dict):
        raise ModelError(f"{WEIGHTS} is damaged or not a safetensors file (its header)")
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ModelError(f"{WEIGHTS}: tensor {name!r} has no shape")
        dtype, shape = entry.get("dtype"), entry["shape"]
        if dtype not in _FLOAT_DTYPES and not (dtype == "I64" and name.endswith(_COUNTER)):
            raise ModelError(f"{WEIGHTS}: tensor {name!r} is {dtype}; a model's tensors are floating point")
        if not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ModelError(f"{WEIGHTS}: tensor {name!r} has an impossible shape {shape}")
        if shape and 0 in shape:
            raise ModelError(f"{WEIGHTS}: tensor {name!r} is empty (shape {shape})")
        offsets = entry.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelError(f"{WEIGHTS}: tensor {name!r} has no data offsets")
        total += offsets[1] - offsets[0]
    if total > budget:
        raise ModelError(f"this model's tensors hold {format_bytes(total)}, over the memory budget of "
                         f"{format_bytes(budget)} (ANOMALENS_MAX_SCAN_BYTES)")
    if 8 + n + total > size:
        raise ModelError(f"{WEIGHTS} is shorter than its header says: truncated or damaged")


def _check_finite(tensors: dict[str, Any]) -> None:
    import torch

    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelError(f"{WEIGHTS}: tensor {name!r} holds NaN or infinite values; the model is damaged")


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
    if detector.backbone_weights is not None:  # a user's weight file travels inside the model, never by name
        tensors.update({f"{BACKBONE_PREFIX}{k}": v.clone() for k, v in detector.backbone_weights.state.items()})
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
        "parent": None if parent is None else {k: parent.get(k) for k in ("created", "bundle_version", "path", "base")},
        "note": note,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "anomalens_version": __version__,
    }
    written: dict[str, str] = {}
    try:
        with atomic_dir(path, overwrite=overwrite, verify=lambda folder: _verify_saved(folder, written["text"])) as tmp:
            _save_weights(tensors, tmp / WEIGHTS)
            manifest["weights_sha256"] = file_sha256(tmp / WEIGHTS)  # what was written, read back
            written["text"] = json.dumps(manifest, indent=2, sort_keys=True)
            (tmp / MANIFEST).write_text(written["text"], encoding="utf-8")
    except FileExistsError as exc:
        raise ModelError(f"{path} already exists; choose a new folder (bundles are never overwritten)") from exc
    detector.bundle_manifest = manifest  # it is now this saved version
    return path


def _check_digest(weights: Path, manifest: dict[str, Any]) -> None:
    """The weights are the bytes the model was saved with (bundles saved before the checksum: not checked).

    safetensors' own checks catch a truncated or malformed file, not a changed byte in a tensor: a model
    copied with a flipped bit loaded and scored with wrong weights, its outputs naming a new fingerprint.
    """
    want = manifest.get("weights_sha256")
    if want is not None and file_sha256(weights) != want:
        raise ModelError(f"{WEIGHTS} of this model does not match the checksum its {MANIFEST} recorded when it "
                         "was saved: the file was changed or damaged since; use a good copy of the model")


def _save_weights(tensors: dict[str, Any], target: Path) -> None:
    """Safetensors' writer, its I/O failures as the OSError they are (its own error type hides the errno)."""
    import errno

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
    backbone = (manifest["config"] or {}).get("backbone")
    if isinstance(backbone, str) and "=" in backbone:
        raise ModelError("this model names a weight file for its backbone; a model carries its weights inside its "
                         "bundle and names no file: train it again with --backbone NAME=PATH on this version")
    try:
        detector = cls(config=manifest["config"], device=device, seed=int(manifest.get("seed", 0)))
    except ConfigError as exc:  # the same check as `train --set`: a forged option is refused before allocation
        raise ModelError(f"this model's configuration is invalid: {exc}") from exc
    try:  # the working grid every scan is resampled onto: a forged size asked for terabytes at the first scan
        from ..preprocess.fov import WorkingGrid

        WorkingGrid.from_dict((manifest.get("preprocessing") or {}).get("grid"))
    except ConfigError as exc:
        raise ModelError(f"this model's preprocessing is invalid: {exc}") from exc
    check_weights(weights)
    _check_digest(weights, manifest)
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{WEIGHTS} of this model is damaged or not a safetensors file: {exc}") from exc
    _check_finite(tensors)
    embedded = {k[len(BACKBONE_PREFIX):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(BACKBONE_PREFIX)]}
    if embedded:
        from ..patchfeatures import BackboneWeights

        detector.backbone_weights = BackboneWeights.of(str(getattr(detector.config, "backbone", "")), embedded)
    detector.preprocessing = dict(manifest.get("preprocessing") or {})
    detector.training = dict(manifest.get("training") or {})
    detector.calibration = Calibration.from_dict(manifest.get("calibration"))
    TrainingDomain.from_training(detector.training)  # a damaged record fails here, not at the first scan
    try:
        detector.load_extra_state(dict(manifest.get("extra") or {}))
        detector.load_state_dict(tensors)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"{path} does not match the {cls.name} detector's layout: {exc}") from exc
    detector.fitted = True
    detector.bundle_manifest = manifest
    log.info("loaded a %s model (%s) on %s", cls.name, "calibrated" if detector.calibration is not None
             else "not calibrated", getattr(detector, "device", device))
    return detector
