"""The viewer's shared state: one per napari viewer, so the docks stay in step without knowing each other.

Like napari's layer models: the state holds data and emits signals; widgets mirror it. Nothing here
computes: results come from ``anomalens.engine`` (through workers in the widgets).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    import napari

    from ..engine.detectors import Detector
    from ..engine.pipeline import PreparedScan, VolumeScore
    from ..engine.volume import Volume
    from .results import ScanResults


@dataclass
class ScrParams:
    """The SCR operating point the sliders show (threshold in normalised score units)."""

    threshold: float = 0.99
    lam: float = 0.0
    tau: float = 1.0
    mode: str = "2d"

    @classmethod
    def from_calibration(cls, cal: dict[str, Any]) -> ScrParams:
        """The calibrated operating point of a model (SCR's own threshold, λ and τ)."""
        return cls(threshold=float(cal.get("scr_threshold", cal.get("threshold", 0.99))),
                   lam=float(cal.get("lambda") or 0.0), tau=float(cal.get("tau") or 1.0),
                   mode=str(cal.get("mode", "2d")))

    def key(self) -> tuple[float, float, float, str]:
        """A hashable form, to tell whether a slice's mask was cut at these values."""
        return (round(self.threshold, 9), round(self.lam, 9), round(self.tau, 9), self.mode)


@dataclass
class AnomaLensState:
    """What is loaded and computed for one viewer.

    Signals carry the new value. ``results`` accumulates what has been scored for the shown image (heatmap,
    mask, per-slice scores on the full grid; see ``anomalens.app.results``); ``score_changed`` fires after it
    was updated. ``slice_requested`` asks the viewer to show a z index (from the score
    curve or the Poincaré disk); ``highlight_requested`` carries (z, y, x) of a patch centre.
    """

    volume: Volume | None = None
    prepared: PreparedScan | None = None
    detector: Detector | None = None
    model_path: Path | None = None
    score: VolumeScore | None = None
    scr: ScrParams = field(default_factory=ScrParams)
    extras: dict[str, Any] = field(default_factory=dict)
    results: ScanResults | None = None

    volume_changed = Signal(object)
    model_changed = Signal(object)
    score_changed = Signal(object)
    mask_changed = Signal(object)
    scr_changed = Signal(object)
    slice_requested = Signal(int)
    highlight_requested = Signal(object)
    message = Signal(str)
    marks_changed = Signal(object)
    selection_changed = Signal(object)

    def set_volume(self, volume: Volume, prepared: PreparedScan | None = None) -> None:
        self.volume, self.prepared, self.score = volume, prepared, None
        self.volume_changed.emit(volume)

    def set_model(self, detector: Detector | None, path: Path | None = None) -> None:
        self.detector, self.model_path = detector, path
        cal = (detector.calibration or {}) if detector is not None else {}
        if cal:
            self.scr = ScrParams.from_calibration(cal)
        self.model_changed.emit(detector)

    def reset_scr(self) -> None:
        """Put the SCR operating point back to the model's calibrated values and tell the docks."""
        cal = (self.detector.calibration or {}) if self.detector is not None else {}
        self.scr = ScrParams.from_calibration(cal) if cal else ScrParams()
        self.scr_changed.emit(self.scr)

    def set_score(self, score: VolumeScore | None) -> None:
        self.score = score
        self.score_changed.emit(score)

    def set_marked_slices(self, slices: list[int]) -> None:
        """Record the z indices marked normal (``extras["marked_slices"]``) and tell the docks."""
        self.extras["marked_slices"] = sorted({int(z) for z in slices})
        self.marks_changed.emit(self.extras["marked_slices"])

    def set_disk_selection(self, patches: list[tuple[int, float, float]]) -> None:
        """Record the points lassoed on the Poincaré disk as (z, y, x) (``extras["disk_selection"]``)."""
        self.extras["disk_selection"] = [(int(z), float(y), float(x)) for z, y, x in patches]
        self.selection_changed.emit(self.extras["disk_selection"])


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_state(viewer: napari.Viewer) -> AnomaLensState:
    """The state object of a viewer, created on first use.

    napari hands plugin widgets a ``PublicOnlyProxy`` of the viewer, a new wrapper per widget; the state
    is keyed by the viewer behind it, so docks opened from the Plugins menu and docks the desktop app adds
    share one state.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    state = _STATES.get(viewer)
    if state is None:
        state = _STATES[viewer] = AnomaLensState()
    return state
