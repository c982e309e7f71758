"""The viewer's shared state: one per napari viewer, so the docks stay in step without knowing each other.

Like napari's layer models: the state holds data and emits signals; widgets mirror it. Nothing here
computes: results come from ``anomalens.engine.scoring.score_scan`` (through workers in the widgets).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal

if TYPE_CHECKING:
    import napari

    from ..engine.calibration import ScrSettings
    from ..engine.detectors import Detector
    from ..engine.pipeline import PreparedScan
    from ..engine.volume import Volume
    from .results import ScanResults


@dataclass
class AnomaLensState:
    """What is loaded and computed for one viewer.

    Results are kept per (image layer, model fingerprint) in ``registry``; ``results`` is the one the docks
    follow: the loaded model's result for the shown scan (None when that model has not scored it). It is
    chosen again whenever the model or the scan changes, and ``score_changed`` (carrying it) fires when it
    is replaced or updated. ``scr`` is SCR's operating point as the sliders moved it (None: the model's
    calibrated point, ``scr_point()``). ``slice_requested`` asks the viewer to show a z index (from the
    score curve or the Poincaré disk); ``highlight_requested`` carries (z, y, x) of a patch centre.
    """

    volume: Volume | None = None
    prepared: PreparedScan | None = None
    detector: Detector | None = None
    model_path: Path | None = None
    scr: ScrSettings | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    results: ScanResults | None = None
    registry: dict[tuple[str, str], ScanResults] = field(default_factory=dict)
    told: dict[tuple[str, str], set[str]] = field(default_factory=dict)

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
        from ..engine.logredact import remember

        remember(volume.source)  # the docks' messages name its layer (its file's name): logged as a token
        self.volume, self.prepared = volume, prepared
        self.volume_changed.emit(volume)
        self.follow()

    def set_model(self, detector: Detector | None, path: Path | None = None) -> None:
        """Load a model: SCR goes back to its calibrated point and the docks follow its results."""
        from ..engine.logredact import remember

        remember(path)
        self.detector, self.model_path = detector, path
        self.scr = None
        self.model_changed.emit(detector)
        self.scr_changed.emit(self.scr_point())
        self.follow()

    # -- SCR's operating point ----------------------------------------------------------------------
    def calibrated_scr(self) -> ScrSettings | None:
        """The loaded model's calibrated SCR point (λ 0 at the plain threshold when SCR is not calibrated)."""
        cal = self.detector.calibration if self.detector is not None else None
        if cal is None:
            return None
        if cal.scr.usable:
            return cal.scr
        return cal.scr.replace(threshold=cal.threshold, lam=0.0, tau=1.0)

    def scr_point(self) -> ScrSettings | None:
        """The point the sliders show: as moved, else the calibrated one (None: the model is not calibrated)."""
        return self.scr if self.scr is not None else self.calibrated_scr()

    def set_scr(self, settings: ScrSettings | None) -> None:
        self.scr = settings
        self.scr_changed.emit(self.scr_point())

    def reset_scr(self) -> None:
        """Put the SCR operating point back to the model's calibrated values and tell the docks."""
        self.set_scr(None)

    # -- results ------------------------------------------------------------------------------------
    def results_of(self, layer_name: str, fingerprint: str) -> ScanResults | None:
        return self.registry.get((layer_name, fingerprint))

    def add_results(self, res: ScanResults) -> ScanResults:
        """Register an image's results of a model.

        A label that another model's results of this image already show gets the fingerprint added, so layer
        names never collide (two bundles of one detector at version 1 are both ``patchcore v1``).
        """
        taken = {r.label for (name, fp), r in self.registry.items()
                 if name == res.layer_name and fp != res.model.fingerprint}
        if res.label in taken:
            res.label = f"{res.label} [{res.model.fingerprint.split(':')[-1][:6]}]"
        self.registry[(res.layer_name, res.model.fingerprint)] = res
        return res

    def results_for(self, volume: Volume | None, detector: Detector | None) -> ScanResults | None:
        """The results ``detector`` made for ``volume`` (matched by the model's fingerprint), else None."""
        if volume is None or detector is None:
            return None
        mine = [r for r in self.registry.values() if r.volume is volume]
        for r in mine:
            if r.detector is detector:
                return r
        if not mine:
            return None
        from .results import model_identity

        fp = model_identity(detector).fingerprint
        for r in mine:
            if r.model.fingerprint == fp:
                r.detector = detector  # the same model loaded again: its results are current again
                return r
        return None

    def results_made_by(self, detector: Detector | None) -> list[ScanResults]:
        """Every image's results made by ``detector`` (the object, or a model with its fingerprint)."""
        if detector is None:
            return []
        mine = [r for r in self.registry.values() if r.detector is detector]
        if mine or not self.registry:
            return mine
        from .results import model_identity

        fp = model_identity(detector).fingerprint
        return [r for r in self.registry.values() if r.model.fingerprint == fp]

    def select_results(self, res: ScanResults | None) -> None:
        """Make ``res`` the results the docks follow and tell them (also when it was updated in place)."""
        self.results = res
        self.score_changed.emit(res)

    def follow(self) -> None:
        """Choose the loaded model's results for the shown scan (after a model or scan change)."""
        res = self.results_for(self.volume, self.detector)
        if res is not self.results:
            self.select_results(res)

    def forget_volume_of(self, layer: Any) -> bool:
        """Forget the scan ``layer`` showed, when it was removed; True if it was the state's volume.

        Without it a removed scan stayed the docks' volume: "Mark slice normal" then marked slice 0 of a
        study no longer on screen (the slice index of no layer) and saved that mark for fine-tuning.
        """
        from .reader import VOLUME_KEY

        vol = self.volume
        if vol is None or layer is None:
            return False
        if getattr(layer, "data", None) is not vol.array and getattr(layer, "metadata", {}).get(VOLUME_KEY) is not vol:
            return False
        self.volume, self.prepared = None, None
        self.volume_changed.emit(None)
        return True

    def forget_layer(self, layer_name: str) -> None:
        """Drop the results of an image layer that was removed."""
        for key in [k for k in self.registry if k[0] == layer_name]:
            res = self.registry.pop(key)
            if res is self.results:
                self.select_results(None)

    # -- marks --------------------------------------------------------------------------------------
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
        layers = getattr(viewer, "layers", None)
        if layers is not None:  # one listener per viewer, whichever docks are open: a removed scan is forgotten
            layers.events.removed.connect(lambda event: state.forget_volume_of(event.value))
        from . import plugin_room

        plugin_room.schedule(viewer)  # keys, W/L drag and Help in a plain napari viewer (not the desktop's twice)
    return state
