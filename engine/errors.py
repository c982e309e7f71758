"""One error family, so the CLI can print a single line and the app a message box for all of them.

Every failure a user can cause (a bad file, a missing model, an impossible parameter) raises an
``AnomaLensError`` subclass with a message written for that user; anything else is a bug.
"""

from __future__ import annotations


class AnomaLensError(Exception):
    """Base of every error a user's input can cause."""


class ScanReadError(AnomaLensError):
    """A file or folder could not be read as a scan."""


class NotAScanError(ScanReadError):
    """The input is not in any format a reader knows."""


class CorruptFileError(ScanReadError):
    """The file claims a known format but is damaged or truncated."""


class EmptyInputError(ScanReadError):
    """A folder or file holds no image data."""


class MultipleSeriesError(ScanReadError):
    """A DICOM folder holds several series; the user must pick one by its UID."""

    def __init__(self, message: str, series: list[dict] | None = None) -> None:
        super().__init__(message)
        self.series = series or []


class InvalidVolumeError(AnomaLensError):
    """The pixel data is unusable: wrong dimensions, NaN/inf that may not be cleaned, and so on."""


class NonFiniteVoxelsError(InvalidVolumeError):
    """NaN or infinite voxels under the ``refuse`` policy: readable with ``nan_policy="clean"`` (the viewer asks)."""

    def __init__(self, message: str, bad: int = 0, total: int = 0) -> None:
        super().__init__(message)
        self.bad, self.total = bad, total


class TooLargeError(AnomaLensError):
    """The input exceeds the memory budget."""


class SampleError(AnomaLensError):
    """A sample case is unknown or could not be fetched and verified."""


class ModelError(AnomaLensError):
    """A model bundle is missing, unsafe, of an unknown schema, or does not fit the data."""


class UnsafeModelFileError(ModelError):
    """A pickle-based model file was offered; we never unpickle."""


class MissingWeightsError(ModelError):
    """Pretrained weights that a component needs are not available offline."""


class DeviceError(AnomaLensError):
    """The requested compute device is not available."""


class ConfigError(AnomaLensError):
    """A parameter or specification is out of range or malformed."""


class Cancelled(AnomaLensError):
    """Long work was cancelled by the user."""


class OutputError(AnomaLensError):
    """A result, model or setting could not be written (disk full, no permission); nothing was replaced."""
