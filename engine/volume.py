"""The one in-memory scan every reader produces and every later stage consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidVolumeError


@dataclass(frozen=True)
class Window:
    """A display window (centre/width), in the scan's intensity units."""

    center: float
    width: float
    name: str = ""

    @property
    def limits(self) -> tuple[float, float]:
        """(low, high) intensity limits, as napari's ``contrast_limits`` wants them."""
        return (self.center - self.width / 2.0, self.center + self.width / 2.0)


@dataclass
class Volume:
    """A scan as a float32 array in (z, y, x) order with the geometry needed to write results back.

    ``spacing``, ``origin`` and ``direction`` follow SimpleITK's (x, y, z) convention so results can be
    written on the scan's own grid; ``spacing_zyx`` gives the napari ``scale``. ``metadata`` never holds
    patient identifiers: readers copy only an allow-list of technical fields.
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    modality: str = "OT"
    windows: list[Window] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    warnings: list[str] = field(default_factory=list)
    #: Voxels of the whole scan that intensity normalisation takes its statistics from, kept by a slice
    #: selection: ``sample:brain1#10`` must be normalised as slice 10 of the whole scan is, or the same
    #: slice would score differently depending on which others were loaded with it. None: the array itself.
    intensity_reference: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InvalidVolumeError(f"a volume must be 2-D or 3-D, got {arr.ndim}-D data of shape {arr.shape}")
        if 0 in arr.shape:
            raise InvalidVolumeError(f"the volume is empty (shape {arr.shape})")
        self.array = np.ascontiguousarray(arr, dtype=np.float32)
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(s) for s in self.origin)  # type: ignore[assignment]
        self.direction = tuple(float(s) for s in self.direction)
        if len(self.spacing) != 3 or len(self.origin) != 3 or len(self.direction) != 9:
            raise InvalidVolumeError("spacing and origin need 3 values and direction 9")
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise InvalidVolumeError(f"spacing must be positive and finite, got {self.spacing}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in array order, i.e. napari's ``scale``."""
        return (self.spacing[2], self.spacing[1], self.spacing[0])

    @property
    def n_slices(self) -> int:
        return self.array.shape[0]

    def with_array(self, array: np.ndarray) -> Volume:
        """A copy with new voxels on the same grid (for heatmaps, masks and preprocessed data)."""
        if tuple(array.shape) != self.shape:
            raise InvalidVolumeError(f"array shape {array.shape} does not match the volume grid {self.shape}")
        return replace(self, array=array, windows=list(self.windows), metadata=dict(self.metadata),
                       warnings=list(self.warnings))

    def select_slices(self, indices: list[int] | np.ndarray) -> Volume:
        """A sub-volume of the given z indices; geometry is kept (origin of the first slice moves)."""
        idx = np.asarray(indices, dtype=int)
        if idx.size == 0:
            raise InvalidVolumeError("no slices selected")
        if idx.min() < 0 or idx.max() >= self.n_slices:
            raise InvalidVolumeError(f"slice index out of range 0-{self.n_slices - 1}")
        from .preprocess.intensity import intensity_reference

        d = np.asarray(self.direction).reshape(3, 3)
        origin = np.asarray(self.origin) + d[:, 2] * self.spacing[2] * idx[0]
        reference = (self.intensity_reference if self.intensity_reference is not None
                     else intensity_reference(self.array).copy())
        out = replace(self, array=self.array[idx], origin=tuple(origin.tolist()), metadata=dict(self.metadata),
                      warnings=list(self.warnings), intensity_reference=reference)
        previous = self.metadata.get("selected_slices")
        out.metadata["selected_slices"] = (np.asarray(previous)[idx] if previous is not None else idx).tolist()
        return out

    def to_sitk(self, array: np.ndarray | None = None):  # -> SimpleITK.Image
        """A SimpleITK image on this volume's geometry (used to write NIfTI/NRRD results)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array if array is None else array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img
