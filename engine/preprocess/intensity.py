"""Per-modality intensity normalisation to [0, 1], identical for training and scoring.

CT is in Hounsfield units, so a fixed HU window keeps the mapping stable across scanners; MR has no
absolute scale, so robust percentiles of the tissue are used instead. The parameters travel in the model
bundle so a model scores new scans exactly as it saw its training data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, InvalidVolumeError
from ..volume import Volume

METHODS = ("auto", "window", "percentile", "minmax")


@dataclass
class IntensityConfig:
    """How to map raw intensities to [0, 1].

    ``auto`` picks ``window`` for CT and ``percentile`` otherwise. The default CT window (−1000…1000 HU)
    keeps air, soft tissue and bone apart without tuning per body part.
    """

    method: str = "auto"
    window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown intensity method {self.method!r}; choose one of {', '.join(METHODS)}")
        self.window = (float(self.window[0]), float(self.window[1]))
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))
        if not self.window[0] < self.window[1]:
            raise ConfigError(f"window low must be below high, got {self.window}")
        lo, hi = self.percentiles
        if not 0.0 <= lo < hi <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["window"] = list(self.window)
        d["percentiles"] = list(self.percentiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> IntensityConfig:
        d = dict(d or {})
        known = {"method", "window", "percentiles"}
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_method(config: IntensityConfig, modality: str) -> str:
    """The concrete method for a modality (``auto`` → window for CT, percentiles otherwise)."""
    if config.method != "auto":
        return config.method
    return "window" if modality.upper() == "CT" else "percentile"


#: Voxels the percentile statistics are taken from, at most (an even stride through the scan).
MAX_SAMPLE = 2_000_000


def intensity_sample(array: np.ndarray) -> np.ndarray:
    """The voxels percentile normalisation takes its statistics from: the non-background ones, evenly thinned.

    Percentiles over non-background voxels, so large air regions do not compress the tissue range. Scans of
    over 16 M voxels are thinned first, so a 600-slice CT costs no more than a 16 M-voxel one.
    """
    arr = np.asarray(array, dtype=np.float32).ravel()
    if arr.size > 8 * MAX_SAMPLE:
        arr = arr[:: arr.size // (8 * MAX_SAMPLE) + 1]
    low = arr.min()
    body = arr[arr > low] if (arr > low).any() else arr
    if body.size > MAX_SAMPLE:
        body = body.ravel()[:: body.size // MAX_SAMPLE + 1]
    return np.ascontiguousarray(body, dtype=np.float32)


def normalise_array(array: np.ndarray, modality: str, config: IntensityConfig | None = None,
                    reference: np.ndarray | None = None) -> np.ndarray:
    """Map raw intensities to float32 in [0, 1] per the config and the scan's modality.

    ``reference`` (``Volume.intensity_reference``) holds the whole scan's statistics voxels when ``array`` is
    a selection of its slices; without it the array's own voxels are used.
    """
    config = config or IntensityConfig()
    arr = np.asarray(array, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidVolumeError("the scan contains NaN/inf voxels; read it with nan_policy='clean' first")
    method = resolve_method(config, modality)
    if method == "window":
        lo, hi = config.window
    elif method == "percentile":
        body = intensity_sample(arr) if reference is None else reference
        lo, hi = (float(v) for v in np.percentile(body, config.percentiles))
    elif reference is not None:
        lo, hi = float(min(reference.min(), arr.min())), float(max(reference.max(), arr.max()))
    else:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    out = (arr - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def normalise_volume(volume: Volume, config: IntensityConfig | None = None) -> np.ndarray:
    """Normalised slices (z, y, x) in [0, 1] for a volume (a slice selection as in its whole scan)."""
    return normalise_array(volume.array, volume.modality, config, volume.intensity_reference)
