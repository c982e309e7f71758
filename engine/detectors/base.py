"""The contract every detector plugin fulfils (checked by one shared test suite over the registry).

Detectors see preprocessed slices: float32 ``(n, H, W)`` with intensities normalised to about [0, 1]
by ``anomalens.engine.preprocess``. They return heatmaps on that same grid, so resizing to their own input
size and back is their business (with the shared helpers), and the viewer and SCR never resample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from ..device import resolve_device
from ..errors import ConfigError, InvalidVolumeError, ModelError
from ..progress import CancelToken, ProgressCallback

if TYPE_CHECKING:
    from ..calibration import Calibration
    from ..patchfeatures import BackboneWeights
from .result import AnomalyResult


@dataclasses.dataclass
class DetectorConfig:
    """Base for detector configs: plain data, stored in ``bundle.json``."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a detector's fit is repeatable on one machine."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may still use the global state
    torch.manual_seed(seed)


def validate_slices(slices: np.ndarray, what: str = "slices") -> np.ndarray:
    """Check a slice stack before it reaches a model: shape, dtype, and no NaN/inf."""
    arr = np.asarray(slices)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InvalidVolumeError(f"{what} must be a stack of 2-D slices (n, H, W), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] < 8 or arr.shape[2] < 8:
        raise InvalidVolumeError(f"{what} are empty or smaller than 8×8 pixels (shape {arr.shape})")
    if not np.issubdtype(arr.dtype, np.number):
        raise InvalidVolumeError(f"{what} must be numeric, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InvalidVolumeError(
            f"{what} contain {int(bad.sum())} NaN/inf values; clean the scan first "
            "(anomalens preprocessing replaces them and says so)"
        )
    return arr


def fingerprint(slices: np.ndarray) -> str:
    """A short hash of training data, stored in the bundle so a model can say what it was fitted on."""
    h = hashlib.sha256()
    arr = np.ascontiguousarray(np.round(np.asarray(slices, dtype=np.float32), 4))
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()[:32]


class Detector(ABC):
    """An unsupervised anomaly detector: fit on normal slices, score any slices.

    Subclasses set ``name``, ``version`` and ``config_class`` and implement ``_fit``, ``_score``,
    ``state_dict``/``load_state_dict`` (tensors, saved as safetensors) and optionally ``extra_state`` /
    ``load_extra_state`` (JSON-able values) and ``_fine_tune``.
    """

    name: ClassVar[str] = "base"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    config_class: ClassVar[type[DetectorConfig]] = DetectorConfig
    #: Named configurations offered next to the detector in the CLI and the viewer (config key "variant").
    variants: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        self.config = self.make_config(config)
        #: Backbone weights the model carries in its bundle (a user's weight file, read once here).
        self.backbone_weights: BackboneWeights | None = None
        spec = getattr(self.config, "backbone", None)
        if isinstance(spec, str) and "=" in spec:
            from ..patchfeatures import BackboneWeights

            self.backbone_weights = BackboneWeights.read(spec)
            self.config.backbone = self.backbone_weights.name  # type: ignore[attr-defined]
        self.device = resolve_device(device)
        self.seed = int(seed)
        self.fitted = False
        self.training: dict[str, Any] = {}
        self.calibration: Calibration | None = None
        self.preprocessing: dict[str, Any] = {}
        #: The ``bundle.json`` this model was loaded from or last saved as; None once it changes in memory
        #: (fitted, fine-tuned, recalibrated), so a result never names a saved version it no longer is.
        self.bundle_manifest: dict[str, Any] | None = None
        #: What making this model turned up for the user (warnings of its normal scans); never saved.
        self.notes: list[str] = []

    # -- configuration -------------------------------------------------------------------------
    @classmethod
    def make_config(cls, config: dict[str, Any] | DetectorConfig | None) -> DetectorConfig:
        """Build the config dataclass from checked values (``detectors.schema``): types, finiteness, ranges.

        The same check serves ``train --set``, the viewer and every bundle loaded, so a forged or mistyped
        option is one line naming it, before anything is allocated from it.
        """
        from .schema import check_config

        if isinstance(config, cls.config_class):
            return config
        if config is not None and not isinstance(config, dict):
            raise ConfigError(f"the {cls.name} detector's configuration must be an object, got {type(config).__name__}")
        try:
            values = check_config(cls.config_class, dict(config or {}))
        except ConfigError as exc:
            raise ConfigError(f"detector {cls.name!r}: {exc}") from exc
        try:
            return cls.config_class(**values)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(f"bad configuration for detector {cls.name!r}: {exc}") from exc

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        """A tiny configuration that fits in seconds, for the shared contract tests."""
        return {}

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    @property
    def cuts_own_masks(self) -> bool:
        """Whether ``score`` returns the detector's own lesion masks (``AnomalyResult.own_masks``).

        ``engine.scoring.score_scan`` asks before scoring: such masks are per slice, so it does not link the
        slices in a 3-D cut, and the engine's SCR is not cut for them.
        """
        return False

    # -- public API ----------------------------------------------------------------------------
    def fit(self, normals: np.ndarray, progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> Detector:
        """Fit on normal slices only. Raises ``Cancelled`` if ``cancel`` is set (the model stays unfitted)."""
        normals = validate_slices(normals, "normal slices")
        seed_everything(self.seed)
        self.fitted = False
        self.bundle_manifest = None
        self._fit(normals, progress, cancel)
        self.fitted = True
        self.training = {"fingerprint": fingerprint(normals), "n_slices": len(normals),
                         "slice_shape": list(normals.shape[1:])}
        return self

    def score(self, slices: np.ndarray, progress: ProgressCallback | None = None,
              cancel: CancelToken | None = None) -> AnomalyResult:
        """Heatmaps (on the input grid) and image scores for each slice."""
        if not self.fitted:
            raise ModelError(f"the {self.name} detector is not trained yet: fit it or load a bundle")
        slices = validate_slices(slices)
        with torch.inference_mode():
            result = self._score(slices, progress, cancel)
        if result.heatmaps.shape != slices.shape:
            raise AssertionError(f"{self.name}: heatmaps {result.heatmaps.shape} != input {slices.shape}")
        return result

    def fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> Detector:
        """Adapt a fitted model to a few normal slices a site marked (few-shot calibration)."""
        if not self.fitted:
            raise ModelError("fine-tuning needs a trained model; train one first")
        normals = validate_slices(normals, "normal slices")
        seed_everything(self.seed + 1)
        self.bundle_manifest = None
        self._fine_tune(normals, progress, cancel)
        self.training["fine_tuned_on"] = {"fingerprint": fingerprint(normals), "n_slices": len(normals)}
        return self

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """Write a bundle folder (``weights.safetensors`` + ``bundle.json``) atomically."""
        from .bundle import save_bundle

        return save_bundle(self, path, **kwargs)

    def content_fingerprint(self) -> str:
        """A hash of what decides this model's output: detector, config, weights, preprocessing, calibration.

        The same before and after a save and load (safetensors bytes are canonical), and different after a
        fine-tune or a recalibration, so results and batch manifests can name exactly which model made them.
        """
        import json

        from safetensors.torch import save as to_bytes

        h = hashlib.sha256()
        # When a calibration was made is not what it does: the same calibration twice is one model.
        cal = None if self.calibration is None else dataclasses.replace(self.calibration, created="").to_dict()
        head = {"detector": self.name, "version": self.version, "config": self.config_dict(),
                "preprocessing": self.preprocessing, "calibration": cal,
                "backbone": None if self.backbone_weights is None else self.backbone_weights.digest}
        h.update(json.dumps(head, sort_keys=True, default=str).encode())
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        h.update(to_bytes(tensors))
        return "sha256:" + h.hexdigest()[:16]

    @staticmethod
    def load(path: str | Path, device: str = "cpu") -> Detector:
        """Load any registered detector from a bundle folder, never unpickling anything."""
        from .bundle import load_bundle

        return load_bundle(path, device=device)

    # -- for subclasses ------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        ...

    @abstractmethod
    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        ...

    def _fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> None:
        """Default few-shot adaptation: nothing to adapt (score normalisation is recalibrated outside)."""
        return None

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        ...

    def extra_state(self) -> dict[str, Any]:
        """JSON-able state that is not a tensor (kept in ``bundle.json``)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned."""
        return None
