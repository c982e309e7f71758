"""The Detector dock: pick an image, a model and a device; score a slice or the volume.

Scoring runs in a thread worker through ``anomalens.engine.scoring.score_scan`` (progress bar, Cancel
within a second), the same call as ``anomalens score``. Its result becomes a heatmap image layer and a
lesion-mask labels layer named with the model's label (a second model adds its own layers), and a
per-slice score curve in the result's unit whose clicks move the viewer, with a per-slice table beside it
(a tab: the dock stays usable on a 768-pixel screen). Scoring more than one slice shows the most
anomalous one afterwards; "Score slice" stays on its slice. The curve marks flagged slices and the slices
marked normal; a legend under it says which colour is the model's mask and which a reference lesion. The
result's warnings (a scan unlike the model's training data) are notified once and shown in the status
line. Without a model the dock offers to train one from the slices marked normal instead of failing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ...engine.demo import DEFAULT_DETECTOR  # what "Train from marked normals" fits unless another is chosen
from ...engine.errors import AnomaLensError, ModelError
from ...engine.protocol import format_selection
from ..gaps import show_gap_on_canvas
from ..jobs import JobRunner
from ..messages import notify_error, notify_info
from ..naming import study_name
from ..paths import describe_bundle, list_bundles, models_dir
from ..reader import ROLE_KEY, volume_for_layer
from ..results import (
    ScanResults,
    ScoreOutcome,
    current_index,
    cut_threshold,
    elide,
    find_layer,
    format_score,
    goto_index,
    highlight_patch,
    mask_legend,
    model_identity,
    publish,
    score_work,
    show_mask_key,
    shown_index,
    style_references,
)
from ..state import get_state
from ..turns import next_turn
from .docking import ScrollsWhenDocked
from .score_plot import ScorePlot
from .slice_table import SliceTable, rows_of

if TYPE_CHECKING:
    import napari

    from ...engine.detectors import Detector
    from ...engine.scoring import SliceScore
    from ...engine.volume import Volume


#: Screens at least this tall (pixels) also show the masks' legend under the curve (the canvas always does).
LEGEND_MIN_SCREEN = 900


class DetectorWidget(ScrollsWhenDocked, QWidget):
    """Dock widget that scores the chosen image with the chosen model bundle."""

    #: Detector config used by "Train from marked normals" (None: the detector's defaults; tests shrink it).
    train_config: dict[str, Any] | None = None

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        from ...engine.detectors import detector_choices
        from ...engine.device import available_devices

        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self._loaded: tuple[Path, str] | None = None

        self.layer_combo = QComboBox()
        self._chosen: Any = None  # the image layer the box names (followed through renames)
        self.detector_combo = QComboBox()
        # One entry per detector and per named variant ("curved (MiT)"); the data is (name, config).
        for label, name, variant_config in detector_choices():
            self.detector_combo.addItem(label, (name, variant_config))
        if self.detector_combo.findText(DEFAULT_DETECTOR) >= 0:
            self.detector_combo.setCurrentText(DEFAULT_DETECTOR)
        self.bundle_combo = QComboBox()
        self.bundle_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.browse_button = QPushButton("Browse…")
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.model_label = QLabel("No model loaded")
        self.model_label.setWordWrap(True)
        self.score_slice_button = QPushButton("Score slice")
        self.score_volume_button = QPushButton("Score volume")
        self.train_button = QPushButton("Train from marked normals")
        self.train_hint = QLabel("No model: choose a bundle above, or mark normal slices in the Calibration "
                                 "dock and train one here.")
        self.train_hint.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self._result_text: str | None = None  # the status line as _on_results last wrote it
        self.status.setWordWrap(True)
        self.plot = ScorePlot()
        self.table = SliceTable()
        self.views = QTabWidget()
        self.views.setDocumentMode(True)
        self.views.addTab(self.plot, "Slice curve")
        self.views.addTab(self.table, "Slice table")
        self.views.setTabToolTip(1, "every scored slice: score, flagged, lesion volume; click a row to show it")
        self.mask_legend = QLabel("")
        self.mask_legend.setTextFormat(Qt.TextFormat.RichText)
        self.mask_legend.setWordWrap(True)
        self.mask_legend.setVisible(False)
        self.jobs = JobRunner(self.progress, self.cancel_button, self.status, self)

        form = QFormLayout()
        form.addRow("Image", self.layer_combo)
        form.addRow("Detector", self.detector_combo)
        row = QHBoxLayout()
        row.addWidget(self.bundle_combo, 1)
        row.addWidget(self.browse_button)
        form.addRow("Model", row)
        form.addRow("Device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.score_slice_button)
        buttons.addWidget(self.score_volume_button)
        running = QHBoxLayout()
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.model_label)
        layout.addLayout(buttons)
        layout.addWidget(self.train_hint)
        layout.addWidget(self.train_button)
        layout.addLayout(running)
        layout.addWidget(self.status)
        layout.addWidget(self.views, 1)
        layout.addWidget(self.mask_legend)

        self.browse_button.clicked.connect(self._browse)
        self.bundle_combo.activated.connect(self._on_bundle_chosen)
        self.device_combo.currentTextChanged.connect(self._on_device_changed)
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        self.score_slice_button.clicked.connect(self.score_slice)
        self.score_volume_button.clicked.connect(self.score_volume)
        self.train_button.clicked.connect(self.train_from_marked)
        self.plot.slice_clicked.connect(self.goto_slice)
        self.table.slice_clicked.connect(self.goto_slice)
        self.state.mask_changed.connect(self._on_mask_changed)
        self._marks_later = next_turn(self, self._show_marks)  # the canvas answers N first (app/turns.py)
        self.state.marks_changed.connect(self._on_marks_changed)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        self.jobs.started.connect(self._update_buttons)
        self.jobs.done.connect(self._update_buttons)
        self.state.model_changed.connect(self._on_model_changed)
        self.state.score_changed.connect(self._on_results)
        self.state.message.connect(self._on_message)
        self.state.slice_requested.connect(self.goto_slice)
        self.state.highlight_requested.connect(self._highlight)
        self.state.marks_changed.connect(self._update_buttons)
        self.state.volume_changed.connect(self._update_buttons)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.inserted.connect(self._watch_name)
        for lyr in self.viewer.layers:
            lyr.events.name.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.layers.events.reordered.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.state.scr_changed.connect(self._on_scr_moved)

        self.refresh_bundles()
        self._refresh_layers()
        self._on_model_changed(self.state.detector)
        self._on_results(self.state.results)
        self.plot.set_marked(self.marked_slices())

    # -- images ----------------------------------------------------------------------------------
    def image_layer(self) -> Any:
        """The image layer chosen in the dock (None when there is none)."""
        return find_layer(self.viewer, self.layer_combo.currentText()) if self.layer_combo.count() else None

    def _follow_active(self, event: Any = None) -> None:
        """Choose the scan picked in napari's layer list (with two scans open the docks stayed on the first).

        Result layers are not in the Image box and change nothing; nor does anything while a job runs, so a scan
        added meanwhile does not take the dock from the one being scored.
        """
        layer = self.viewer.layers.selection.active
        if layer is None or layer is self.image_layer() or self.jobs.running:
            return
        if self.layer_combo.findText(layer.name) >= 0:
            self.layer_combo.setCurrentText(layer.name)

    def _watch_name(self, event: Any = None) -> None:
        """Follow a new layer's renames: the Image box lists layers by name, and a renamed scan stays chosen."""
        layer = getattr(event, "value", None)
        if layer is not None:
            layer.events.name.connect(self._refresh_layers)

    def _refresh_layers(self, event: Any = None) -> None:
        from napari.layers import Image

        names = [lyr.name for lyr in self.viewer.layers if isinstance(lyr, Image)
                 and lyr.metadata.get(ROLE_KEY) not in ("heatmap",) and not lyr.rgb]
        chosen = self._chosen if self._chosen is not None and self._chosen in self.viewer.layers else None
        current = chosen.name if chosen is not None else self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        if self.image_layer() is not chosen or chosen is None:
            self._on_layer_changed(self.layer_combo.currentText())
        self._update_buttons()
        show_gap_on_canvas(self.viewer, self.image_layer())

    def _on_layer_changed(self, name: str) -> None:
        layer = find_layer(self.viewer, name) if name else None
        if layer is None:
            return
        self._chosen = layer
        volume = self._volume_of(layer)
        if volume is None:
            return
        self.state.set_volume(volume)
        self.plot.set_range(volume.n_slices)

    def _on_layer_removed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and layer.metadata.get(ROLE_KEY) not in ("heatmap", "mask", "highlight"):
            self.state.forget_layer(layer.name)

    # -- models ----------------------------------------------------------------------------------
    def refresh_bundles(self, select: Path | None = None) -> None:
        """List the bundles of the model folder (plus any browsed one), keeping or setting the selection.

        Item data are path strings (Qt compares them by value, unlike arbitrary Python objects).
        """
        current = str(select) if select is not None else self.bundle_combo.currentData()
        extra = [self.bundle_combo.itemData(i) for i in range(self.bundle_combo.count())]
        entries = {str(e.path): e for e in list_bundles()}
        for p in extra:
            if p is not None and p not in entries:
                entries[p] = describe_bundle(p)
        self.bundle_combo.blockSignals(True)
        self.bundle_combo.clear()
        self.bundle_combo.addItem("— choose a model —", None)
        for path, entry in entries.items():
            self.bundle_combo.addItem(entry.label, path)
            self.bundle_combo.setItemData(self.bundle_combo.count() - 1, entry.error or path,
                                          Qt.ItemDataRole.ToolTipRole)
        if current is not None:
            self.bundle_combo.setCurrentIndex(max(self.bundle_combo.findData(current), 0))
        self.bundle_combo.blockSignals(False)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model bundle folder", str(models_dir()))
        if folder:
            self.set_bundle(Path(folder))

    def _on_bundle_chosen(self, index: int) -> None:
        path = self.bundle_combo.itemData(index)
        if path is not None:
            self.set_bundle(Path(path))
        elif self.state.model_path is not None:
            # the placeholder chosen (arrow keys run onto it) unloads nothing: the box shows what is loaded
            self.bundle_combo.blockSignals(True)
            self.bundle_combo.setCurrentIndex(max(self.bundle_combo.findData(str(self.state.model_path)), 0))
            self.bundle_combo.blockSignals(False)

    def set_bundle(self, path: str | Path) -> bool:
        """Check a bundle's manifest and load it in the background; a bad bundle is reported, not raised."""
        path = Path(path)
        entry = describe_bundle(path)
        if entry.error:
            notify_error(ModelError(entry.error))
            self.status.setText(entry.error)
            return False
        self.refresh_bundles(select=path)
        if entry.detector and self.detector_combo.findText(entry.detector) >= 0:
            self.detector_combo.setCurrentText(entry.detector)
        return self._load(path)

    def _load(self, path: Path) -> bool:
        from ...engine.detectors import load_bundle

        device = self.device_combo.currentText() or "cpu"

        def work(progress: Any, cancel: Any) -> Detector:
            progress(0.1, "reading the bundle")
            det = load_bundle(path, device=device)
            model_identity(det)  # its fingerprint hashes every weight: here, not on the UI thread
            return det

        def done(detector: Detector) -> None:
            self._loaded = (path, device)
            self.state.set_model(detector, path)

        return self.jobs.start("Loading model", work, done)

    def _on_device_changed(self, device: str) -> None:
        if self._loaded is not None and self._loaded[1] != device:
            self._load(self._loaded[0])

    def _on_model_changed(self, detector: Detector | None) -> None:
        self._show_model_choice(detector)
        self._show_model_label()
        self._update_buttons()

    def _show_model_label(self) -> None:
        res, detector = self.state.results, self.state.detector
        label = res.label if res is not None and res.detector is detector else None
        self.model_label.setText(describe_model(detector, self.state.model_path, label))

    def _show_model_choice(self, detector: Detector | None) -> None:
        """Make the Detector and Model boxes show the state's model, wherever it was set (demo, Calibration dock).

        Signals are blocked: mirroring the state must not load the bundle again.
        """
        if detector is None:
            return
        variant = getattr(detector.config, "variant", None) if detector.variants else None
        label = f"{detector.name} ({variant})" if variant else detector.name
        if self.detector_combo.findText(label) < 0:
            label = detector.name
        if self.detector_combo.findText(label) < 0:
            self.detector_combo.addItem(label, (detector.name, {}))
        self.detector_combo.blockSignals(True)
        self.detector_combo.setCurrentText(label)
        self.detector_combo.blockSignals(False)
        path = self.state.model_path
        if path is None:
            return
        if self.bundle_combo.findData(str(path)) < 0:
            entry = describe_bundle(path)
            self.bundle_combo.addItem(entry.label if not entry.error else path.name, str(path))
        self.bundle_combo.blockSignals(True)
        self.bundle_combo.setCurrentIndex(self.bundle_combo.findData(str(path)))
        self.bundle_combo.blockSignals(False)
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = (path, self.device_combo.currentText() or "cpu")

    def _on_marks_changed(self, _marked: Any = None) -> None:
        self._marks_later.start()

    def _show_marks(self) -> None:
        self.plot.set_marked(self.state.extras.get("marked_slices") or [])

    def _update_buttons(self, *_: Any) -> None:
        has_model = self.state.detector is not None
        busy = self.jobs.running
        has_image = self.image_layer() is not None
        for b in (self.score_slice_button, self.score_volume_button):
            b.setVisible(has_model)
            b.setEnabled(has_model and has_image and not busy)
        marked = self.marked_slices()
        self.train_button.setVisible(not has_model)
        self.train_hint.setVisible(not has_model)
        self.train_button.setEnabled(bool(marked) and has_image and not busy)
        self.train_button.setText(f"Train from {len(marked)} marked normal slice{'s' * (len(marked) != 1)}"
                                  if marked else "Train from marked normals")

    def marked_slices(self) -> list[int]:
        """The z indices marked normal (by the Calibration dock, in ``state.extras['marked_slices']``)."""
        marked = self.state.extras.get("marked_slices") or []
        return sorted({int(z) for z in marked})

    # -- scoring ---------------------------------------------------------------------------------
    def score_slice(self) -> bool:
        """Score the slice under the viewer's cursor (only a slice of the chosen scan that is on screen)."""
        layer = self.image_layer()
        if layer is not None and self.state.detector is not None:
            z = shown_index(self.viewer, layer)
            if z is None:
                self.status.setText(f"{layer.name} is not on screen here (hidden, or the view is outside its "
                                    "slices): the view now shows it; press Score slice again to score this slice")
                layer.visible = True
                goto_index(self.viewer, layer, current_index(self.viewer, layer))
                return False
            return self._score(np.array([z]))
        return self._score(np.array([current_index(self.viewer, layer)]))

    def score_volume(self) -> bool:
        """Score every slice of the chosen image."""
        layer = self.image_layer()
        n = layer.data.shape[-3] if layer is not None and layer.ndim >= 3 else 1
        return self._score(np.arange(n))

    def _score(self, indices: np.ndarray) -> bool:
        layer, detector = self.image_layer(), self.state.detector
        if layer is None:
            notify_info("open a scan first")
            return False
        if detector is None:
            self._update_buttons()
            self.status.setText("No model loaded: choose one, or train one from marked normal slices")
            return False
        volume = self._volume_of(layer)
        if volume is None:
            return False
        if self.state.volume is not volume:
            self.state.set_volume(volume)
        settings = self.state.scr  # None: the calibrated point; else where the SCR sliders were moved
        name = "Scoring slice" if len(indices) == 1 else f"Scoring {len(indices)} slices"
        return self.jobs.start(
            name, lambda progress, cancel: score_work(detector, volume, indices, settings, progress, cancel),
            lambda outcome: self._show(outcome, layer, detector))

    def _show(self, outcome: ScoreOutcome, layer: Any, detector: Detector) -> ScanResults | None:
        if layer not in self.viewer.layers:  # closed while it was scored: its result would describe nothing shown
            self.status.setText(f"{layer.name} was closed while it was scored: its result was not shown")
            return None
        self.state.prepared = outcome.result.prepared
        return publish(self.viewer, self.state, layer.name, outcome.result, detector)

    def _on_message(self, text: str) -> None:
        self.status.setText(text)

    def _on_results(self, res: ScanResults | None) -> None:
        """Mirror the followed result: its curve (in its unit, with its threshold) and its warnings."""
        self._show_model_label()
        self._show_mask_legend()
        if res is None:
            self.plot.clear()
            self.table.clear()
            if self.status.text() == self._result_text:  # it described a result no longer shown (study closed)
                self.status.setText("")
            return
        rows = self.slice_rows(res)
        self.plot.set_scores(res.slice_scores, threshold=cut_threshold(self.state, res), unit=res.unit.short,
                             model=res.label, flagged=[s.z for s in rows if s.flagged])
        z = current_index(self.viewer, self.image_layer())
        self.plot.set_current(z)
        self.table.set_rows(rows, res.unit, current=z)
        n = len(res.slices)
        top = res.reading_start()
        own = sorted(z for z in res.slices if z in res.normal_slices)
        lines = [f"{res.title}: {n} slice{'s' * (n != 1)} scored"
                 + ("" if top is None else f"; highest {format_score(top.score, res.unit)} {res.unit.short} "
                                           f"(slice {top.z})")
                 + (f", not counting the {len(own)} the model was fitted or calibrated on "
                    f"({format_selection(own)})" if own and top is not None and top.z not in own else "")]
        shown = [short_warning(w) for w in res.warnings]
        lines += [f"⚠ {w}" for w in shown]
        self.status.setToolTip("\n\n".join(res.warnings))
        if shown != list(res.warnings):
            lines[-1] += "  (hover for the whole text)"
        if res.stale:
            lines.append("these layers were made by a model that is no longer loaded (stale: model changed)")
        self._result_text = "\n".join(lines)
        self.status.setText(self._result_text)

    def _on_scr_moved(self, point: Any = None) -> None:
        """The curve's threshold line follows the threshold the mask is cut at (SCR's sliders move it)."""
        res = self.state.results
        if res is not None:
            self.plot.set_threshold(cut_threshold(self.state, res))

    def slice_rows(self, res: ScanResults) -> list[SliceScore]:
        """The result's per-slice rows, flagged and volume counted from its mask layer as shown."""
        layer = find_layer(self.viewer, res.mask_name)
        return rows_of(res, layer.data if layer is not None else res.mask)

    def _on_mask_changed(self, *_: Any) -> None:
        """A SCR re-cut or "Apply to volume": the flagged dots and the table's counts follow the mask."""
        res = self.state.results
        if res is None:
            return
        rows = self.slice_rows(res)
        self.plot.set_flagged([s.z for s in rows if s.flagged])
        self.table.set_rows(rows, res.unit, current=current_index(self.viewer, self.image_layer()))

    def _on_layers_changed(self, event: Any = None) -> None:
        """A reference lesion mask was opened (a sample's "… lesion"): give it its colour and name it below."""
        style_references(self.viewer)
        self._show_mask_legend()

    def _show_mask_legend(self) -> None:
        """Name the masks under the curve (tall screens) and on the canvas (always, in the masks' colours).

        On a screen under ``LEGEND_MIN_SCREEN`` pixels tall the dock's copy is left out: its two lines pushed
        the Detector dock past its room on a 1,366×768 laptop, and the curve's axis scrolled out of sight.
        """
        text = mask_legend(self.viewer, self.state.results)
        self.mask_legend.setText(text)
        screen = self.screen()
        tall = screen is None or screen.availableGeometry().height() >= LEGEND_MIN_SCREEN
        self.mask_legend.setVisible(bool(text) and tall)
        show_mask_key(self.viewer, self.state.results)

    @staticmethod
    def _volume_of(layer: Any) -> Volume | None:
        """The scan behind an image layer, or None after telling the user why there is none."""
        try:
            return volume_for_layer(layer)
        except AnomaLensError as exc:
            notify_error(exc)
            return None

    def cancel(self) -> None:
        """Stop the running job (scoring, loading or training)."""
        self.jobs.cancel()

    # -- training --------------------------------------------------------------------------------
    def train_from_marked(self) -> bool:
        """Fit and calibrate the chosen detector on the marked normal slices, save it, and load it."""
        layer, marked = self.image_layer(), self.marked_slices()
        if layer is None or not marked:
            notify_info("mark a few normal slices first (Calibration dock), then train")
            return False
        volume = self._volume_of(layer)
        if volume is None:
            return False
        name, variant_config = self.detector_choice()
        device = self.device_combo.currentText() or "cpu"
        config = {**variant_config, **(self.train_config or {})} or None

        def work(progress: Any, cancel: Any) -> tuple[Detector, Path]:
            # Named after the series description or a hash of the study (hashing may read every voxel: here,
            # in the worker), never after the layer: napari names it after the file, often a patient's name.
            profile = re.sub(r"[^A-Za-z0-9._-]", "-", f"{name}-{study_name(volume)}").strip(".-")[:80] or name
            return train_on_slices(name, volume, marked, profile, config, device, progress, cancel)

        def done(value: tuple[Detector, Path]) -> None:
            detector, path = value
            self._loaded = (path, device)
            self.refresh_bundles(select=path)
            self.state.set_model(detector, path)
            notify_info(f"trained and saved {path.parent.name}/{path.name}")

        return self.jobs.start("Training", work, done)

    def detector_choice(self) -> tuple[str, dict[str, Any]]:
        """The chosen detector's registry name and the variant config of the chosen entry."""
        data = self.detector_combo.currentData()
        if isinstance(data, tuple):
            return data[0], dict(data[1])
        return self.detector_combo.currentText(), {}

    # -- navigation ------------------------------------------------------------------------------
    def goto_slice(self, z: int) -> None:
        """Show slice ``z`` of the chosen image."""
        goto_index(self.viewer, self.image_layer(), int(z))

    def _on_step(self, event: Any = None) -> None:
        layer = self.image_layer()
        z = current_index(self.viewer, layer)
        self.plot.set_current(z)
        self.table.set_current(z)
        show_gap_on_canvas(self.viewer, layer)

    def _highlight(self, zyx: Any) -> None:
        layer = self.image_layer()
        if layer is None:
            return
        z, y, x = (float(v) for v in zyx)
        self.goto_slice(round(z))
        highlight_patch(self.viewer, layer, z, y, x)


#: The longest warning the Detector dock's status line shows whole; longer ones give their first clause there
#: (and all of it in the tooltip): at 1,366×768 two whole warnings pushed the slice curve out of the dock.
WARNING_CHARS = 90


def short_warning(text: str, most: int = WARNING_CHARS) -> str:
    """``text`` whole when short, else its first clause (up to ': ' or '; '), cut to ``most`` characters."""
    if len(text) <= most:
        return text
    ends = [i for i in (text.find(": "), text.find("; ")) if i >= 15]
    return elide((text[:min(ends)] if ends else text) + "…", most)  # the ellipsis says more is on hover


def train_on_slices(detector: str, volume: Volume, slices: list[int], profile: str,
                    config: dict[str, Any] | None, device: str, progress: Any, cancel: Any) -> tuple[Detector, Path]:
    """Fit a detector on some slices of a scan, calibrate it on them, and save it as a new profile version.

    Runs in a worker thread. Calibrating on the training slices themselves gives permissive thresholds (a
    model scores its own training data low); the bundle's note says so, and the Calibration dock can
    recalibrate on other normals.
    """
    from ...engine.detectors import load_bundle
    from ...engine.domain import describe_scans
    from ...engine.modelstore import ModelStore
    from ...engine.pipeline import marked_slices, prepare, scans_grid, train, working_slices
    from ...engine.provenance import record_seen
    from ...engine.recalibration import calibrate_detector

    slices = marked_slices(volume, slices)
    prepared = prepare(volume)
    grid = scans_grid([prepared])
    normals, _ = working_slices(prepared, slices, grid)
    det = train(detector, normals, config=config, device=device, progress=lambda f, m: progress(0.7 * f, m),
                cancel=cancel, grid=grid, domain=describe_scans([volume], [prepared.foreground]))
    calibrate_detector(det, normals, progress=lambda f, m: progress(0.7 + 0.25 * f, m), cancel=cancel)
    record_seen(det.training, volume, slices)  # the model knows these slices are no test of it
    progress(0.97, "saving the model")
    info = ModelStore().save_version(det, profile, note=f"trained in the viewer on {len(slices)} slices marked "
                                     "normal; calibrated on the same slices, so thresholds are permissive until "
                                     "recalibrated on other normals")
    saved = load_bundle(info.path, device=device)  # what every later scoring uses, its version label included
    model_identity(saved)
    return saved, info.path


def describe_model(detector: Detector | None, path: Path | None, label: str | None = None) -> str:
    """The Detector dock's line on the loaded model: its label (``label``: as in its layer names) and its unit."""
    if detector is None:
        return "No model loaded"
    label = label or model_identity(detector).label
    where = path.name if path is not None else "in memory"
    if detector.calibration is None:
        return f"Model {label} ({where}) · not calibrated: heatmaps in raw detector scores, no mask"
    return f"Model {label} ({where}) · calibrated: heatmaps in normal-quantile units, masks at its threshold"
