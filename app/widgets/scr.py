"""The SCR dock: λ, τ and threshold sliders that re-cut the shown slice's mask on every move.

The mask scoring gives is the engine's (``score_scan`` cuts it at the calibrated point); this dock is
SCR's tunable display. The sliders mirror ``state.scr_point()`` (the model's calibrated point until moved;
the model emits, the widget follows while blocking its own signals) and their ranges follow that point
(the threshold, in the result's normal-quantile units, spans the calibrated one). A move re-solves only
the shown slice with the engine's ``scoring.cut_scr`` on the result's map (α cached per slice and τ, see
``anomalens.app.livecut``), which takes well under 50 ms on a 256² slice; "Apply to volume" cuts every
scored slice in a worker. Masks are written into the labels layer in place, so napari's undo history of
hand edits survives (SCR updates themselves are not undo steps: a slider move is undone by moving the
slider back or by "Reset", which also cuts again every other slice the sliders re-cut). A slice edited by
hand since scoring or SCR last wrote it (``ScanResults.hand_edited``) is never re-cut: the user's drawing
wins over every automatic cut, and the status line says so. The status line speaks of the slice on
screen: it is counted again from the mask layer whenever the shown slice, the result or the mask changes
(one slice's voxels: microseconds).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleSlider

from ...engine.protocol import format_selection
from ..jobs import JobRunner
from ..livecut import LiveCut, refine_scored
from ..results import current_index, cut_threshold, find_layer, follow_threshold, write_mask
from ..state import get_state
from .docking import ScrollsWhenDocked

if TYPE_CHECKING:
    import napari

    from ...engine.calibration import ScrSettings

#: The threshold slider spans the calibrated SCR threshold minus / plus these (normal-quantile units: 1 is the
#: top of the normal range, and a tenth below it already flags a good share of normal tissue); once a scan is
#: scored it reaches up to the scan's highest slice score too, so every flagged slice can be tuned away.
THRESHOLD_BELOW, THRESHOLD_ABOVE = 0.1, 0.1
#: Pause after the last slider move before the slower bookkeeping (thumbnail, status, listeners) runs.
SETTLE_MS = 150


def _slider(decimals: int = 3) -> QLabeledDoubleSlider:
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setDecimals(decimals)
    return s


class ScrWidget(ScrollsWhenDocked, QWidget):
    """Dock widget for SCR's operating point and the live mask preview."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.cut = LiveCut()
        self.last_solve_ms: float | None = None
        self._mirroring = False

        self.lam_slider = _slider()
        self.tau_slider = _slider(4)
        self.threshold_slider = _slider()
        self.mode_2d = QRadioButton("2D")
        self.mode_3d = QRadioButton("3D")
        self._mode_group = QButtonGroup(self)
        self._mode_group.addButton(self.mode_2d)
        self._mode_group.addButton(self.mode_3d)
        self.mode_2d.setChecked(True)
        self.apply_button = QPushButton("Apply to volume")
        self.reset_button = QPushButton("Reset to calibrated")
        self.info = QLabel("Score a slice with a calibrated model to refine its mask here.")
        self.info.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.jobs = JobRunner(self.progress, self.cancel_button, self.status, self)
        self._settle = QTimer(self)
        self._settle.setSingleShot(True)
        self._settle.setInterval(SETTLE_MS)
        self._settle.timeout.connect(self._settled)

        form = QFormLayout()
        form.addRow("λ (smoothness)", self.lam_slider)
        form.addRow("τ (feature scale)", self.tau_slider)
        form.addRow("Threshold", self.threshold_slider)
        modes = QHBoxLayout()
        modes.addWidget(self.mode_2d)
        modes.addWidget(self.mode_3d)
        modes.addStretch(1)
        form.addRow("Graph", modes)
        buttons = QHBoxLayout()
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.reset_button)
        running = QHBoxLayout()
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        # the controls first, the explanation under them: on a 768-px screen the tab's room ends about
        # the buttons, which the three-line text above had pushed half out of sight
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.info)
        layout.addLayout(running)
        layout.addWidget(self.status)
        layout.addStretch(1)

        for s in (self.lam_slider, self.tau_slider, self.threshold_slider):
            s.valueChanged.connect(self._on_slider)
        self.mode_3d.toggled.connect(self._on_slider)
        self.apply_button.clicked.connect(self.apply_to_volume)
        self.reset_button.clicked.connect(self.reset)
        self.state.scr_changed.connect(self._mirror)
        self.state.model_changed.connect(self._on_model_changed)
        self.state.score_changed.connect(self._update_enabled)
        self.state.score_changed.connect(self._follow_scores)
        self.state.score_changed.connect(self.show_slice_status)
        self.state.mask_changed.connect(self.show_slice_status)
        self.jobs.done.connect(self._update_enabled)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._on_model_changed(self.state.detector)

    # -- model → view ----------------------------------------------------------------------------
    def _follow_scores(self, *_: Any) -> None:
        """Stretch the threshold slider up to the shown result's highest slice score (its unit, calibrated)."""
        cal, res = self.state.calibrated_scr(), self.state.results
        if cal is None or res is None or not res.calibrated or not res.slice_scores:
            return
        lo, hi = slider_ranges(cal, top=max(res.slice_scores.values()))[0]
        if (lo, hi) == (self.threshold_slider.minimum(), self.threshold_slider.maximum()):
            return
        self._mirroring = True
        try:
            self.threshold_slider.setRange(lo, hi)
        finally:
            self._mirroring = False

    def _on_model_changed(self, detector: Any) -> None:
        cal = self.state.calibrated_scr()
        self._mirroring = True
        try:
            if cal is not None:
                for slider, (lo, hi) in zip((self.threshold_slider, self.lam_slider, self.tau_slider),
                                            slider_ranges(cal), strict=True):
                    slider.setRange(lo, hi)
        finally:
            self._mirroring = False
        self.cut.clear()
        self._mirror(self.state.scr_point())
        self._update_enabled()

    def _mirror(self, point: ScrSettings | None) -> None:
        """Show ``point`` on the sliders without echoing the change back (then refresh the shown slice)."""
        if self._mirroring or point is None:
            return
        self._mirroring = True
        try:
            self.lam_slider.setValue(float(point.lam or 0.0))
            self.tau_slider.setValue(float(point.tau or 1.0))
            self.threshold_slider.setValue(point.threshold)
            (self.mode_3d if point.mode == "3d" else self.mode_2d).setChecked(True)
        finally:
            self._mirroring = False
        self.update_current_slice()
        self._follow_threshold()

    def reset(self) -> bool:
        """The "Reset to calibrated" button: back to the model's calibrated SCR point (``calibration.scr``).

        The sliders re-cut each slice shown while they moved, so slices other than the shown one may hold
        another point: those are cut again at the calibrated point (in a worker), and only those. Returns
        whether such a job started.
        """
        self.state.reset_scr()
        res, cal = self.state.results, self.state.calibrated_scr()
        if not self._live(res) or cal is None:
            return False
        moved = [z for z, key in res.cut_params.items() if key != cal.key() and res.scored[z]]
        return bool(moved) and self.apply_to_volume(only=moved, what="Restoring the calibrated mask")

    def _update_enabled(self, *_: Any) -> None:
        res = self.state.results
        ok = self._live(res) and bool(res.scored.any())
        for w in (self.lam_slider, self.tau_slider, self.threshold_slider, self.mode_2d, self.mode_3d,
                  self.apply_button, self.reset_button):
            w.setEnabled(ok and not self.jobs.running)
        if res is not None and getattr(res.detector, "cuts_own_masks", False):
            self.info.setText("This model cuts its lesion mask itself, as its paper does (InvDetect scr_mode "
                              f"{getattr(res.detector.config, 'scr_mode', '?')}); these sliders tune the "
                              "product's SCR, which it does not use. Train with scr_mode=product to tune them.")
        elif res is not None and not res.calibrated:
            self.info.setText("This model is not calibrated, so there is no mask to refine: calibrate it first.")
        elif ok:
            cal = self.state.calibrated_scr()
            at = "" if cal is None else (f" Calibrated point: threshold {cal.threshold:.3g} (normal quantile), "
                                         f"λ {float(cal.lam or 0.0):.3g}, τ {float(cal.tau or 0.0):.3g}.")
            self.info.setText(f"{res.label}: moving a slider re-cuts the shown slice; 'Apply to volume' cuts every "
                              f"scored slice.{at}")
        elif res is None:
            self.info.setText("Score a slice with a calibrated model to refine its mask here.")

    # -- view → model ----------------------------------------------------------------------------
    def _on_slider(self, *_: Any) -> None:
        if self._mirroring:
            return
        base = self.state.scr_point()
        if base is None:
            return
        settings = base.replace(threshold=float(self.threshold_slider.value()), lam=float(self.lam_slider.value()),
                                tau=max(float(self.tau_slider.value()), 1e-6),
                                mode="3d" if self.mode_3d.isChecked() else "2d")
        self._mirroring = True
        try:
            self.state.set_scr(settings)
        finally:
            self._mirroring = False
        self.update_current_slice()
        self._follow_threshold()

    def _follow_threshold(self) -> None:
        res = self.state.results
        if res is not None:
            follow_threshold(self.viewer, res, cut_threshold(self.state, res))

    def _on_step(self, event: Any = None) -> None:
        res = self.state.results
        if res is None:
            return
        z = self._current_z()
        p = self.state.scr_point()
        if z is not None and p is not None and res.cut_params.get(z) not in (None, p.key()):
            self.update_current_slice()
        self.show_slice_status()

    def slice_status(self) -> str:
        """What the mask holds on the shown slice: ``slice 16: 702 pixels flagged (2.78 mL)``, or why nothing."""
        res = self.state.results
        if res is None:
            return ""
        z = self._current_z()
        layer = find_layer(self.viewer, res.mask_name)
        if z is None:
            return ""
        if not res.scored[z]:
            return f"slice {z}: not scored"
        if not res.calibrated:
            return f"slice {z}: no mask (the model is not calibrated)"
        if layer is None:
            return f"slice {z}: the mask layer was removed"
        flagged = int(np.count_nonzero(layer.data[z]))
        ml = flagged * float(np.prod(res.volume.spacing)) / 1000.0
        ms = f"; last re-cut {self.last_solve_ms:.0f} ms" if self.last_solve_ms is not None else ""
        edited = " (edited by hand)" if res.hand_edited(z) else ""
        return f"slice {z}: {flagged} pixels flagged ({ml:.2f} mL){edited}{ms}"

    def show_slice_status(self, *_: Any) -> None:
        """Put ``slice_status()`` in the status line (left alone while a job reports its progress there)."""
        if self.jobs.running:
            return
        self.status.setText(self.slice_status())

    def _current_z(self) -> int | None:
        res = self.state.results
        if res is None:
            return None
        return current_index(self.viewer, find_layer(self.viewer, res.layer_name) or find_layer(self.viewer,
                                                                                                 res.mask_name))

    def update_current_slice(self) -> bool:
        """Re-cut the shown slice at the current values and write it into the mask layer (UI thread, fast)."""
        res = self.state.results
        if not self._live(res) or self.jobs.running:
            return False
        layer = find_layer(self.viewer, res.mask_name)
        z = self._current_z()
        p = self.state.scr_point()
        if layer is None or z is None or not res.scored[z] or p is None or not p.tau:
            return False
        if res.cut_params.get(z, self._own_key(res, z)) == p.key():
            return False  # the slice already shows this cut (the result's own one after scoring)
        if res.hand_edited(z):
            self.status.setText(f"slice {z} was edited by hand: SCR leaves it as drawn (undo the edits with the "
                                "label tools to let the sliders cut it again)")
            return False
        t0 = time.perf_counter()
        mask = self.cut.solve(res, z, p.threshold, float(p.lam or 0.0), float(p.tau), p.mode, p.temperature)
        write_mask(layer, mask.astype(layer.data.dtype, copy=False), z, fast=True)
        res.cut_params[z] = p.key()
        res.note_written([z])
        self.last_solve_ms = 1000.0 * (time.perf_counter() - t0)
        self._settle.start()  # thumbnail, status line and listeners once the drag pauses
        return True

    def _settled(self) -> None:
        res = self.state.results
        layer = find_layer(self.viewer, res.mask_name) if res is not None else None
        if layer is None:
            return
        layer.refresh()
        self.state.mask_changed.emit(res.mask)  # → show_slice_status, the curve's dots, the table

    def _live(self, res: Any) -> bool:
        """Whether the followed result can be re-cut: calibrated, made by the loaded model, not stale."""
        return (res is not None and res.calibrated and not res.stale and res.detector is not None
                and res.detector is self.state.detector and not getattr(res.detector, "cuts_own_masks", False))

    def _own_key(self, res: Any, z: int) -> tuple | None:
        """The key of the cut a slice shows when it has none recorded: the calibrated SCR point (score_scan's)."""
        cal = self.state.calibrated_scr()
        return None if cal is None or z not in res.slices else cal.key()

    def apply_to_volume(self, only: list[int] | None = None, what: str = "Applying SCR to the volume") -> bool:
        """Cut every scored slice (or ``only`` those) at the current values in a worker, then write the masks.

        Slices edited by hand keep their edits: the status line names them.
        """
        res, p = self.state.results, self.state.scr_point()
        if not self._live(res) or p is None:
            return False

        def work(progress: Any, cancel: Any) -> tuple[np.ndarray, np.ndarray]:
            return refine_scored(res, p.threshold, float(p.lam or 0.0), float(p.tau or 1.0), p.mode, p.temperature,
                                 progress, cancel, only=only)

        def done(value: tuple[np.ndarray, np.ndarray]) -> None:
            idx, masks = value
            layer = find_layer(self.viewer, res.mask_name)
            if layer is None or self.state.results is not res:
                return
            edited = [int(z) for z in idx if res.hand_edited(int(z))]
            keep = ~np.isin(idx, edited)
            idx, masks = idx[keep], masks[keep]
            write_mask(layer, masks.astype(layer.data.dtype), idx)
            for z in idx:
                res.cut_params[int(z)] = p.key()
            res.note_written(idx)
            self.state.mask_changed.emit(res.mask)
            here = self.slice_status()
            kept = (f"; slice{'s' * (len(edited) != 1)} {format_selection(edited)} kept as edited by hand"
                    if edited else "")
            self.status.setText(f"{len(idx)} slices cut: {int(masks.sum())} pixels flagged{kept}"
                                + (f"\n{here}" if here else ""))

        started = self.jobs.start(what, work, done)
        self._update_enabled()
        return started


def slider_ranges(point: ScrSettings, top: float | None = None,
                  ) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """(threshold, λ, τ) slider ranges around a calibrated SCR point.

    The threshold spans the calibrated one by ``THRESHOLD_BELOW``/``THRESHOLD_ABOVE`` (normal-quantile units;
    brain1's useful range is about 0.94–1.09), up to ``top`` (the scan's highest score) when that is higher;
    λ reaches four times the calibrated value (a fine-tuned model's λ can be 40); τ a twentieth to four times
    the calibrated scale.
    """
    t = float(point.threshold)
    lam = float(point.lam or 0.0)
    tau = float(point.tau or 1.0)
    upper = max(t + THRESHOLD_ABOVE, float(top) * 1.01 if top is not None and np.isfinite(top) else 0.0)
    return ((max(0.0, t - THRESHOLD_BELOW), round(upper, 3)), (0.0, max(2.0, 4.0 * lam)),
            (round(tau / 20.0, 4) or 1e-4, 4.0 * tau))
