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
from ..io.base import NAN_REMEDY
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


#: Voxels of a scan its statistics (percentiles, the tissue threshold) are taken from, at most: an even
#: stride through larger scans, so a 600-slice CT costs no more than a 16 M-voxel one.
MAX_REFERENCE = 16_000_000
#: Non-background voxels the percentiles are computed on, at most.
MAX_SAMPLE = 2_000_000


def intensity_reference(array: np.ndarray) -> np.ndarray:
    """The voxels a scan's intensity statistics come from (a view: the whole scan up to 16 M voxels)."""
    flat = np.asarray(array, dtype=np.float32).ravel()
    return flat[:: flat.size // MAX_REFERENCE + 1]


def intensity_range(reference: np.ndarray, modality: str, config: IntensityConfig | None = None) -> tuple[float, float]:
    """The raw intensities that map to 0 and 1 for a scan whose statistics voxels are ``reference``.

    Percentiles are taken over non-background voxels, so large air regions do not compress the tissue range.
    """
    config = config or IntensityConfig()
    ref = np.asarray(reference, dtype=np.float32)
    method = resolve_method(config, modality)
    if method == "window":
        return config.window
    low = float(ref.min())
    if method == "percentile":
        body = ref[ref > low] if (ref > low).any() else ref
        if body.size > MAX_SAMPLE:
            body = body[:: body.size // MAX_SAMPLE + 1]
        lo, hi = (float(v) for v in np.percentile(body, config.percentiles))
        return lo, hi
    return low, float(ref.max())


def scale_to_unit(array: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(array − lo) / (hi − lo)`` clipped to [0, 1] as float32 (all zeros when the range is empty)."""
    arr = np.asarray(array, dtype=np.float32)
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    out = (arr - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def normalise_array(array: np.ndarray, modality: str, config: IntensityConfig | None = None,
                    reference: np.ndarray | None = None) -> np.ndarray:
    """Map raw intensities to float32 in [0, 1] per the config and the scan's modality.

    ``reference`` (``Volume.intensity_reference``) holds the whole scan's statistics voxels when ``array`` is
    a selection of its slices; without it the array's own voxels are used.
    """
    arr = np.asarray(array, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InvalidVolumeError(f"the scan contains NaN/inf voxels; to replace them, {NAN_REMEDY}")
    lo, hi = intensity_range(intensity_reference(arr) if reference is None else reference, modality, config)
    return scale_to_unit(arr, lo, hi)


def normalise_volume(volume: Volume, config: IntensityConfig | None = None) -> np.ndarray:
    """Normalised slices (z, y, x) in [0, 1] for a volume (a slice selection as in its whole scan)."""
    return normalise_array(volume.array, volume.modality, config, volume.intensity_reference)
