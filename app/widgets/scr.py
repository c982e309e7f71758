"""The SCR dock: λ, τ and threshold sliders that re-cut the shown slice's mask on every move.

The sliders mirror ``state.scr`` (the model emits, the widget follows while blocking its own signals). A
move re-solves only the shown slice (α cached per slice and τ, see ``anomalens.app.livecut``), which takes
well under 50 ms on a 256² slice; "Apply to volume" cuts every scored slice in a worker. Masks are written
into the labels layer in place, so napari's undo history of hand edits survives (SCR updates themselves
are not undo steps: a slider move is undone by moving the slider back or by "Reset").
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

from ...engine.postprocess.scr import DEFAULT_TEMPERATURE
from ..jobs import JobRunner
from ..livecut import LiveCut, refine_scored
from ..results import current_index, find_layer, write_mask
from ..state import ScrParams, get_state

if TYPE_CHECKING:
    import napari

THRESHOLD_RANGE = (0.5, 2.0)
#: Pause after the last slider move before the slower bookkeeping (thumbnail, status, listeners) runs.
SETTLE_MS = 150


def _slider(decimals: int = 3) -> QLabeledDoubleSlider:
    s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
    s.setDecimals(decimals)
    return s


class ScrWidget(QWidget):
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
        layout.addWidget(self.info)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addLayout(running)
        layout.addWidget(self.status)
        layout.addStretch(1)

        for s in (self.lam_slider, self.tau_slider, self.threshold_slider):
            s.valueChanged.connect(self._on_slider)
        self.mode_3d.toggled.connect(self._on_slider)
        self.apply_button.clicked.connect(self.apply_to_volume)
        self.reset_button.clicked.connect(self.state.reset_scr)
        self.state.scr_changed.connect(self._mirror)
        self.state.model_changed.connect(self._on_model_changed)
        self.state.score_changed.connect(self._update_enabled)
        self.jobs.done.connect(self._update_enabled)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._on_model_changed(self.state.detector)

    # -- model → view ----------------------------------------------------------------------------
    def _on_model_changed(self, detector: Any) -> None:
        cal = (detector.calibration or {}) if detector is not None else {}
        lam_cal, tau_cal = float(cal.get("lambda") or 0.0), float(cal.get("tau") or 1.0)
        self._mirroring = True
        try:
            self.lam_slider.setRange(0.0, max(2.0, 4.0 * lam_cal))
            self.tau_slider.setRange(round(tau_cal / 20.0, 4) or 1e-4, 4.0 * tau_cal)
            self.threshold_slider.setRange(*THRESHOLD_RANGE)
        finally:
            self._mirroring = False
        self.cut.clear()
        self._mirror(self.state.scr)
        self._update_enabled()

    def _mirror(self, params: ScrParams) -> None:
        """Show ``params`` on the sliders without echoing the change back (then refresh the shown slice)."""
        if self._mirroring:
            return
        self._mirroring = True
        try:
            self.lam_slider.setValue(params.lam)
            self.tau_slider.setValue(params.tau)
            self.threshold_slider.setValue(params.threshold)
            (self.mode_3d if params.mode == "3d" else self.mode_2d).setChecked(True)
        finally:
            self._mirroring = False
        self.update_current_slice()

    def _update_enabled(self, *_: Any) -> None:
        res = self.state.results
        ok = res is not None and res.normalised and bool(res.scored.any())
        for w in (self.lam_slider, self.tau_slider, self.threshold_slider, self.mode_2d, self.mode_3d,
                  self.apply_button, self.reset_button):
            w.setEnabled(ok and not self.jobs.running)
        if res is not None and not res.normalised:
            self.info.setText("This model is not calibrated, so there is no mask to refine: calibrate it first.")
        elif ok:
            self.info.setText("Moving a slider re-cuts the shown slice; 'Apply to volume' cuts every scored slice.")

    # -- view → model ----------------------------------------------------------------------------
    def _on_slider(self, *_: Any) -> None:
        if self._mirroring:
            return
        self.state.scr = ScrParams(threshold=float(self.threshold_slider.value()), lam=float(self.lam_slider.value()),
                                   tau=float(self.tau_slider.value()), mode="3d" if self.mode_3d.isChecked() else "2d")
        self._mirroring = True
        try:
            self.state.scr_changed.emit(self.state.scr)
        finally:
            self._mirroring = False
        self.update_current_slice()

    def _on_step(self, event: Any = None) -> None:
        res = self.state.results
        if res is None:
            return
        z = self._current_z()
        if z is not None and res.cut_params.get(z) not in (None, self.state.scr.key()):
            self.update_current_slice()

    def _current_z(self) -> int | None:
        res = self.state.results
        if res is None:
            return None
        return current_index(self.viewer, find_layer(self.viewer, res.layer_name) or find_layer(self.viewer,
                                                                                                 res.mask_name))

    def update_current_slice(self) -> bool:
        """Re-cut the shown slice at the current values and write it into the mask layer (UI thread, fast)."""
        res = self.state.results
        if res is None or not res.normalised or self.jobs.running or res.model is not self.state.detector:
            return False
        layer = find_layer(self.viewer, res.mask_name)
        z = self._current_z()
        if layer is None or z is None or not res.scored[z]:
            return False
        p = self.state.scr
        if p.tau <= 0:
            return False
        t0 = time.perf_counter()
        temperature = float((self._calibration()).get("temperature", DEFAULT_TEMPERATURE))
        mask = self.cut.solve(res, z, p.threshold, p.lam, p.tau, p.mode, temperature)
        write_mask(layer, mask.astype(layer.data.dtype, copy=False), z, fast=True)
        res.cut_params[z] = p.key()
        self.last_solve_ms = 1000.0 * (time.perf_counter() - t0)
        self._settle.start()  # thumbnail, status line and listeners once the drag pauses
        return True

    def _settled(self) -> None:
        res = self.state.results
        layer = find_layer(self.viewer, res.mask_name) if res is not None else None
        if layer is None:
            return
        layer.refresh()
        z = self._current_z()
        flagged = int(np.count_nonzero(layer.data[z])) if z is not None else 0
        ms = f" ({self.last_solve_ms:.0f} ms)" if self.last_solve_ms is not None else ""
        self.status.setText(f"slice {z}: {flagged} pixels flagged{ms}")
        self.state.mask_changed.emit(res.mask)

    def _calibration(self) -> dict[str, Any]:
        det = self.state.detector
        return (det.calibration or {}) if det is not None else {}

    def apply_to_volume(self) -> bool:
        """Cut every scored slice at the current values in a worker, then write the masks."""
        res = self.state.results
        if res is None or not res.normalised:
            return False
        p = self.state.scr
        temperature = float(self._calibration().get("temperature", DEFAULT_TEMPERATURE))

        def work(progress: Any, cancel: Any) -> tuple[np.ndarray, np.ndarray]:
            return refine_scored(res, p.threshold, p.lam, p.tau, p.mode, temperature, progress, cancel)

        def done(value: tuple[np.ndarray, np.ndarray]) -> None:
            idx, masks = value
            layer = find_layer(self.viewer, res.mask_name)
            if layer is None or self.state.results is not res:
                return
            write_mask(layer, masks.astype(layer.data.dtype), idx)
            for z in idx:
                res.cut_params[int(z)] = p.key()
            self.status.setText(f"{len(idx)} slices cut: {int(masks.sum())} pixels flagged")
            self.state.mask_changed.emit(res.mask)

        started = self.jobs.start("Applying SCR to the volume", work, done)
        self._update_enabled()
        return started
