"""The Calibration dock: mark normal slices, fine-tune the model on them, keep and roll back site versions.

Marks go to the local case library (``anomalens.engine.caselib``), so they survive restarts and are shared
by every viewer; the dock mirrors the current study's marks into ``state.extras["marked_slices"]`` (array z
indices of the shown scan), which the Detector dock's "Train from marked normals" reads. "Fine-tune on
marks" runs ``engine.modelstore.fine_tune_site`` in a worker (progress, Cancel) on a fresh copy of the
model, so the loaded model stays usable until the new version is saved and loaded: every other marked
slice adapts the model and the rest recalibrate it (``engine.recalibration``), and the dock shows what
changed in plain words (``Recalibration.describe()``). Whatever the previous model showed is then scored
again with the new one (``anomalens.app.rescore``), as after a rollback.

Marks are drawn where the user looks: while the shown slice is marked normal, the canvas says so in green
(an "N · marked normal" label top left and a thin green frame round the scan, ``show_marked_on_canvas``),
and the Detector dock's score curve shades every marked slice green.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...engine.caselib import CaseLibrary, Operation, array_slices, original_slices, study_key
from ...engine.errors import AnomaLensError
from ..jobs import JobRunner
from ..messages import notify_error, notify_info, notify_warning
from ..naming import modality_text
from ..reader import ROLE_KEY, VOLUME_KEY
from ..rescore import rescore_shown
from ..results import current_index, goto_index, model_identity
from ..state import AnomaLensState, get_state
from .docking import ScrollsWhenDocked

if TYPE_CHECKING:
    import napari

    from ...engine.detectors import Detector
    from ...engine.modelstore import ModelStore, SiteUpdate
    from ...engine.volume import Volume

LIBRARY_KEY = "case_library"
STUDY_KEY = "study_key"
#: Fine-tuning adapts on every other marked slice and calibrates on the rest: it needs two at least.
MIN_MARKED = 2
#: The canvas text overlay that says the shown slice is marked normal (napari ``canvas.overlays`` key).
MARK_OVERLAY = "anomalens_marked_normal"
#: Green of the marked-normal marks (the score curve's bands use the same one).
MARKED_COLOR = "#2ecc40"
#: Scan-layer metadata key: the layer's bounding box is our green frame (so it is ours to hide again).
FRAME_KEY = "anomalens_marked_frame"
FRAME_WARM_KEY = "anomalens_marked_frame_built"  # the scan layer's frame visual exists (see _warm_visual)


# --------------------------------------------------------------------------------------------- shared helpers


def case_library(state: AnomaLensState) -> CaseLibrary:
    """The viewer's case library (opened on first use at the default path, ``ANOMALENS_DATA_DIR`` aware)."""
    lib = state.extras.get(LIBRARY_KEY)
    if lib is None or lib.closed:
        lib = state.extras[LIBRARY_KEY] = CaseLibrary()
    return lib


def current_study(state: AnomaLensState) -> str | None:
    """The case-library key of the shown scan (cached per volume; None without a scan)."""
    vol = state.volume
    if vol is None:
        return None
    cached = state.extras.get(STUDY_KEY)
    if cached is not None and cached[0] is vol.array:
        return cached[1]
    key = study_key(vol)
    state.extras[STUDY_KEY] = (vol.array, key)
    return key


def sync_marks(state: AnomaLensState) -> list[int]:
    """Read the shown study's marks from the library into ``state`` (as array z indices) and return them."""
    key = current_study(state)
    if key is None or state.volume is None:
        state.set_marked_slices([])
        return []
    lib = case_library(state)
    lib.carry_over(state.volume)  # marks made under the key earlier releases gave files
    z = array_slices(state.volume, lib.marks(key))
    state.set_marked_slices(z)
    return z


def mark_normal(state: AnomaLensState, z: list[int], source: str,
                patches: list[tuple[int, float, float]] | None = None) -> list[int]:
    """Mark array slices ``z`` of the shown scan normal (in one transaction); returns the newly marked z."""
    vol = state.volume
    if vol is None:
        raise AnomaLensError("open a scan first")
    lib = case_library(state)
    key = lib.register(vol, remember_path=False)  # the path may name the patient; the key is a hash
    pts = [(original_slices(vol, [p[0]])[0], p[1], p[2]) for p in (patches or [])]
    new = lib.mark_normal(key, original_slices(vol, z), source=source, patches=pts)
    sync_marks(state)
    return array_slices(vol, new)


def flagged_warning(state: AnomaLensState, z: list[int], notify: bool = False, viewer: Any = None) -> str:
    """Say when newly marked slices are flagged by the shown result or covered by a reference lesion ("" if not).

    The reference (an expert mask, e.g. a sample's) is looked up in ``viewer`` when given; ``notify``: say it
    as a toast too.

    A mark on the wrong slice (N pressed on the lesion, a range or a lasso across it) would teach a fine-tune
    that the lesion is normal: the user hears it at once, with the way back. The Calibration dock's status
    line (and the window's, for N) shows it; the disk rewrites its own line at once, so it notifies as well.
    A toast on every N also costs the key (bench_reading_room, one run each: the event loop's longest block,
    median over its repeats, 88 ms with it and 68 ms without) for what the status line already says.
    """
    res = state.results
    flagged = sorted(k for k in z if res is not None and res.slices.get(k) is not None and res.slices[k].flagged)
    lesion = sorted(reference_slices(viewer, state) & set(z)) if viewer is not None else []
    if not flagged and not lesion:
        return ""

    def which(ks: list[int]) -> str:
        return f"slice {ks[0]}" if len(ks) == 1 else f"slices {format_slices(ks)}"

    what = [f"the model flags {which(flagged)}"] if flagged else []
    what += [f"the reference lesion lies on {which(lesion)}"] if lesion else []
    n = len(set(flagged) | set(lesion))
    text = (f"⚠ {' and '.join(what)}: a fine-tune will learn {'it' if n == 1 else 'them'} as normal "
            "(Shift+N undoes the mark)")
    if notify:
        notify_warning(text)
    return text


def reference_slices(viewer: Any, state: AnomaLensState) -> set[int]:
    """The slices of the shown scan that a reference lesion mask (a sample's expert mask) covers."""
    from ..results import reference_layers

    vol = state.volume
    if vol is None:
        return set()
    out: set[int] = set()
    for ref in reference_layers(viewer):
        data = ref.data
        if getattr(data, "ndim", 0) == 3 and data.shape[0] == vol.n_slices:
            out.update(int(k) for k in np.flatnonzero(np.asarray(data).reshape(data.shape[0], -1).any(1)))
    return out


def scan_layer(viewer: napari.viewer.Viewer, state: AnomaLensState) -> Any:
    """The image layer showing ``state.volume`` (else the first scan layer, else the first image)."""
    from napari.layers import Image

    images = [lyr for lyr in viewer.layers if isinstance(lyr, Image) and not lyr.rgb]
    vol = state.volume
    if vol is not None:
        for lyr in images:
            if lyr.data is vol.array or lyr.metadata.get(VOLUME_KEY) is vol:
                return lyr
        res = state.results
        if res is not None and res.layer_name in viewer.layers:
            return viewer.layers[res.layer_name]
    scans = [lyr for lyr in images if lyr.metadata.get(ROLE_KEY) == "scan"]
    return (scans or [lyr for lyr in images if lyr.metadata.get(ROLE_KEY) not in ("heatmap",)] or [None])[0]


def ensure_volume(viewer: napari.viewer.Viewer, state: AnomaLensState) -> Volume | None:
    """``state.volume``, taken from the scan layer when no dock has set one yet."""
    from ..reader import volume_for_layer

    if state.volume is None:
        layer = scan_layer(viewer, state)
        if layer is not None:
            try:
                state.set_volume(volume_for_layer(layer))
            except AnomaLensError as exc:
                notify_error(exc)
    return state.volume


def marked_overlay(viewer: napari.viewer.Viewer) -> Any:
    """The canvas text overlay saying "marked normal" (added to napari's canvas overlays on first use)."""
    from napari.components.overlays import TextOverlay

    overlays = viewer.canvas.overlays
    if MARK_OVERLAY not in overlays:
        overlay = TextOverlay(text="", position="top_left", color=MARKED_COLOR, font_size=12, visible=False)
        overlays[MARK_OVERLAY] = overlay
        _warm_visual(viewer, overlay, text="N · marked normal (slice 0123456789)")
    return overlays[MARK_OVERLAY]


def _warm_visual(viewer: Any, overlay: Any, layer: Any = None, text: str | None = None) -> None:
    """Have napari build the overlay's canvas visual and draw it once, unseen, while the overlay stays hidden.

    napari builds an overlay's visual on its first show, and vispy links its shader programs and renders its
    glyphs on its first draw: the first N of a session held the UI thread 150–250 ms at 1,920×1,080 under
    software GL against ~95 ms for later marks (bench_reading_room). Here the visual is drawn once at opacity 0
    with the window's next paint, before any key; only vispy's node is touched, so the overlay's own
    ``visible`` never says more than is shown.
    """
    overlay.visible = True  # napari builds the visual on the first show
    overlay.visible = False
    qt_canvas = _qt_canvas(viewer)
    scene = getattr(qt_canvas, "_scene_canvas", None)
    nodes = _overlay_nodes(qt_canvas, overlay, layer)
    if scene is None or not nodes:
        return
    for node in nodes:
        if text is not None and hasattr(node, "text"):
            node.text = text
        node.opacity = 0.0
        node.visible = True

    def drawn(_event: Any = None) -> None:
        from qtpy.QtCore import QTimer

        scene.events.draw.disconnect(drawn)
        QTimer.singleShot(0, scene.native, lambda: _match_model(nodes, overlay))  # after this draw, not in it

    scene.events.draw.connect(drawn, position="first")  # napari's own draw handler may end the emission
    scene.update()


def _overlay_nodes(qt_canvas: Any, overlay: Any, layer: Any = None) -> list[Any]:
    """The vispy nodes drawing ``overlay`` (a viewer overlay, or ``layer``'s), [] where napari keeps none."""
    if qt_canvas is None:
        return []
    if layer is None:
        visuals = list(getattr(qt_canvas, "_viewer_overlay_to_visual", {}).get(overlay, []))
    else:
        visuals = [getattr(qt_canvas, "_layer_overlay_to_visual", {}).get(layer, {}).get(overlay)]
    return [v.node for v in visuals if getattr(v, "node", None) is not None]


def _match_model(nodes: list[Any], overlay: Any) -> None:
    """Give vispy's nodes the overlay's own visibility, opacity and text again (the end of a warm-up draw)."""
    for node in nodes:
        node.visible = bool(overlay.visible)
        node.opacity = float(overlay.opacity)
        if hasattr(node, "text") and hasattr(overlay, "text"):
            node.text = overlay.text


def _show(viewer: Any, overlay: Any, visible: bool, layer: Any = None) -> None:
    """Show or hide an overlay (a show ends its warm-up draw, if that is still due: the window never painted)."""
    overlay.visible = visible
    if visible:  # at full opacity now; a hidden overlay's nodes are left to the warm-up
        _match_model(_overlay_nodes(_qt_canvas(viewer), overlay, layer), overlay)


def _qt_canvas(viewer: Any) -> Any:
    """The napari canvas object of ``viewer`` (through the proxy napari hands plugin docks), None without one."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    return getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None), "canvas", None)


def show_marked_on_canvas(viewer: napari.viewer.Viewer, state: AnomaLensState) -> bool:
    """Mark the canvas green while the shown slice is marked normal; returns whether it is.

    A label top left ("N · marked normal, slice 3") and the scan layer's bounding box as a thin green frame:
    the user sees which slices calibrate the model without reading the dock's list.
    """
    layer = scan_layer(viewer, state) if state.volume is not None else None
    marked = state.extras.get("marked_slices") or []
    z = current_index(viewer, layer) if layer is not None else None
    here = z is not None and z in marked
    overlay = marked_overlay(viewer)
    text = f"N · marked normal (slice {z})" if here else ""
    if overlay.text != text:  # unchanged, it leaves a warm-up's text on vispy's node
        overlay.text = text
    _show(viewer, overlay, here)
    for lyr in viewer.layers:
        if lyr.metadata.get(FRAME_KEY) and lyr is not layer:
            lyr.bounding_box.visible = False  # another scan's frame, from before
            lyr.metadata[FRAME_KEY] = False
    if layer is not None and not layer.metadata.get(FRAME_WARM_KEY):
        layer.metadata[FRAME_WARM_KEY] = True
        if not layer.bounding_box.visible:
            _frame_style(layer.bounding_box)
            _warm_visual(viewer, layer.bounding_box, layer=layer)
    if layer is not None and (here or layer.metadata.get(FRAME_KEY)):
        box = layer.bounding_box
        if here:
            _frame_style(box)
        _show(viewer, box, here, layer=layer)
        layer.metadata[FRAME_KEY] = here
    return here


def _frame_style(box: Any) -> None:
    box.line_color = MARKED_COLOR
    box.line_thickness = 2
    box.points = False


def study_label(volume: Volume, key: str | None) -> str:
    """How the dock names the shown study: its series description, else a short hash of it (never a file name).

    A description says what the scan is (``Series AX CT``); the hash is only for scans without one.
    """
    from ..naming import HASH_CHARS, series_text

    description = series_text(volume)
    if description:
        return f"Series {description}"
    return f"Study {key[:HASH_CHARS]}…" if key else "Study ?"


def format_slices(z: list[int]) -> str:
    """``[1, 2, 3, 7]`` → ``"1-3, 7"``."""
    parts: list[str] = []
    for k in sorted(set(z)):
        if parts and k == parts[-1][1] + 1:
            parts[-1] = (parts[-1][0], k)
        else:
            parts.append((k, k))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in parts)


def profile_of(store: ModelStore, path: Path | None) -> tuple[str | None, str]:
    """(profile, base) for a model path: the profile it belongs to (None if none) and where to fine-tune into.

    A version inside the store fine-tunes into its own profile; any other bundle starts a profile named after
    it in the store (nothing is ever written next to a bundle outside the store).
    """
    if path is None:
        return None, "site-profile"
    p = Path(path)
    is_version = re.match(r"^v\d{4,}$", p.name) is not None
    try:
        inside = p.resolve().parent.parent == store.root.resolve()
    except OSError:
        inside = False
    if is_version and inside:
        return p.parent.name, p.parent.name
    name = p.parent.name if is_version else p.name
    return None, re.sub(r"[^A-Za-z0-9._-]", "-", name).strip(".-")[:80] or "site-profile"


@dataclass
class FineTuned:
    """What "Fine-tune on marks" produced: the site update (recalibration, saved version) and that version loaded."""

    update: SiteUpdate
    detector: Detector


def fine_tune_work(detector: Detector, model_path: Path | None, volume: Volume, z: list[int], store: ModelStore,
                   progress: Any, cancel: Any) -> FineTuned:
    """Worker: a fresh copy of the model, fine-tuned and recalibrated on slices ``z``, saved and loaded back.

    The saved version is loaded again so the viewer scores with exactly what later sessions and the CLI
    load (its version label included).
    """
    import copy

    from ...engine.detectors import load_bundle
    from ...engine.modelstore import fine_tune_site
    from ...engine.pipeline import marked_slices, model_grid, prepare, working_slices
    from ...engine.provenance import record_seen

    z = marked_slices(volume, z)
    progress(0.0, "copying the model")
    work = load_bundle(model_path, device=str(detector.device)) if model_path is not None \
        else copy.deepcopy(detector)
    prepared = prepare(volume, (work.preprocessing or {}).get("intensity"))
    normals, _ = working_slices(prepared, sorted(z), model_grid(work))
    record_seen(work.training, volume, z)  # the model knows these slices are no test of it (engine.provenance)
    _, base = profile_of(store, model_path)
    note = (f"from {len(z)} slice{'s' * (len(z) != 1)} marked normal ({modality_text(volume.modality)} study): "
            "every other one fine-tuned the model, the rest recalibrated it")
    update = fine_tune_site(work, normals, store, base, note=note, parent=model_path,
                            progress=lambda f, m: progress(0.95 * f, m), cancel=cancel)
    progress(0.97, "loading the new version")
    fresh = load_bundle(update.info.path, device=str(detector.device))
    model_identity(fresh)  # its fingerprint hashes every weight: here, not on the UI thread
    return FineTuned(update, fresh)


# --------------------------------------------------------------------------------------------- the dock


class CalibrationWidget(ScrollsWhenDocked, QWidget):
    """Dock widget: normal-slice marks (slice, range, disk lasso), site fine-tuning, versions and rollback."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.last_update: SiteUpdate | None = None

        self.study_label = QLabel("No scan")
        self.study_label.setWordWrap(True)
        self.marks_label = QLabel("")
        self.marks_label.setWordWrap(True)
        self.mark_slice_button = QPushButton("Mark slice normal")
        self.unmark_slice_button = QPushButton("Unmark slice")
        self.range_from, self.range_to = QSpinBox(), QSpinBox()
        self.range_from.setPrefix("from ")
        self.range_to.setPrefix("to ")
        self.mark_range_button = QPushButton("Mark range")
        self.mark_selection_button = QPushButton("Mark disk selection")
        self.mark_selection_button.setToolTip("The slices of the points lassoed on the Poincaré disk; the "
                                              "patches themselves are kept too")
        self.undo_button = QPushButton("Undo mark")
        self.redo_button = QPushButton("Redo mark")
        self._history = (False, False)  # (can undo, can redo) for the shown study, see _show_marks
        self.redo_button.setToolTip("Apply again the mark or unmark undone last (Ctrl+Shift+N)")
        self.mark_slice_button.setToolTip("Mark the slice on screen normal (N)")
        self.mark_range_button.setToolTip("Mark every slice from … to … normal")
        self.undo_button.setToolTip("Undo the latest mark or unmark (Shift+N)")
        self.finetune_button = QPushButton("Fine-tune on marks")
        self.fp_label = QLabel("")
        self._report_for: Any = None  # the model the fine-tune report (fp_label) describes
        self.fp_label.setWordWrap(True)
        self.versions = QListWidget()
        self.versions.setMinimumHeight(80)
        self.versions.setWordWrap(True)  # a version's date and note wrap: the list scrolled sideways
        self.versions.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.rollback_button = QPushButton("Roll back to selected")
        self.profile_label = QLabel("")
        self.profile_label.setWordWrap(True)
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.jobs = JobRunner(self.progress, self.cancel_button, self.status, self)

        marks = QGroupBox("Normal slices")
        mv = QVBoxLayout(marks)
        mv.addWidget(self.study_label)
        mv.addWidget(self.marks_label)
        # two columns, the range's button under its two boxes: in one row they are wider than the column a
        # 1,366 px screen leaves the docks, and the dock scrolled sideways with "Mark range" cut off
        grid = QGridLayout()
        grid.addWidget(self.mark_slice_button, 0, 0)
        grid.addWidget(self.unmark_slice_button, 0, 1)
        grid.addWidget(self.undo_button, 1, 0)
        grid.addWidget(self.redo_button, 1, 1)
        grid.addWidget(self.mark_selection_button, 2, 0, 1, 2)
        grid.addWidget(self.range_from, 3, 0)
        grid.addWidget(self.range_to, 3, 1)
        grid.addWidget(self.mark_range_button, 4, 0, 1, 2)
        mv.addLayout(grid)
        tune = QGroupBox("Site profile")
        tv = QVBoxLayout(tune)
        tv.addWidget(self.finetune_button)
        tv.addWidget(self.fp_label)
        tv.addWidget(self.profile_label)
        tv.addWidget(self.versions)
        tv.addWidget(self.rollback_button)
        running = QHBoxLayout()
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addWidget(marks)
        layout.addWidget(tune)
        layout.addLayout(running)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.mark_slice_button.clicked.connect(self.mark_current_slice)
        self.unmark_slice_button.clicked.connect(self.unmark_current_slice)
        self.mark_range_button.clicked.connect(lambda: self.mark_range(self.range_from.value(),
                                                                       self.range_to.value()))
        self.mark_selection_button.clicked.connect(self.mark_selection)
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.finetune_button.clicked.connect(self.fine_tune)
        self.rollback_button.clicked.connect(lambda: self.rollback())
        self.versions.currentRowChanged.connect(self._update_buttons)
        self.jobs.started.connect(self._update_buttons)
        self.jobs.done.connect(self._update_buttons)
        self.state.volume_changed.connect(self._on_volume_changed)
        self.state.model_changed.connect(self.refresh_versions)
        self.state.marks_changed.connect(self._show_marks)
        self.state.selection_changed.connect(self._update_buttons)
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.dims.events.current_step.connect(self._update_buttons)
        self.viewer.dims.events.current_step.connect(self._show_on_canvas)
        self.state.marks_changed.connect(self._show_on_canvas)
        self.state.volume_changed.connect(self._show_on_canvas)
        marked_overlay(self.viewer)  # built now (with its canvas visual), not on the first mark

        ensure_volume(self.viewer, self.state)
        self._on_volume_changed(self.state.volume)
        self.refresh_versions()

    # -- state mirroring -------------------------------------------------------------------------
    def _on_layers_changed(self, event: Any = None) -> None:
        if self.state.volume is None and ensure_volume(self.viewer, self.state) is not None:
            return  # set_volume → volume_changed → _on_volume_changed
        self._update_buttons()

    def _on_volume_changed(self, volume: Any = None) -> None:
        vol = self.state.volume
        if vol is None:
            self.study_label.setText("No scan: open one to mark its normal slices")
            self.state.set_marked_slices([])
        else:
            n = vol.n_slices
            for box in (self.range_from, self.range_to):
                box.setRange(0, n - 1)
            self.range_to.setValue(n - 1)
            try:
                key = current_study(self.state)
                sync_marks(self.state)
            except AnomaLensError as exc:
                self.status.setText(notify_error(exc))
                key = None
            self.study_label.setText(f"{study_label(vol, key)} ({n} slices, {modality_text(vol.modality)})")
        self._update_buttons()

    def marked_slices(self) -> list[int]:
        """The shown study's marked z indices (as mirrored in the state)."""
        return list(self.state.extras.get("marked_slices") or [])

    def _show_marks(self, z: Any = None) -> None:
        # whether Undo and Redo have anything to do, asked when the marks change (not on every slice step)
        try:
            key = current_study(self.state) if self.state.volume is not None else None
            lib = case_library(self.state) if key is not None else None
            self._history = (False, False) if lib is None else (lib.can_undo(key), lib.can_redo(key))
        except (AnomaLensError, OSError):  # the scan's file is gone: nothing to undo or redo on it
            self._history = (False, False)
        marked = self.marked_slices()
        n = len(marked)
        self.marks_label.setText(f"Marked normal: {format_slices(marked)} ({n} slice{'s' * (n != 1)})" if marked
                                 else "No slice marked normal yet")
        self._update_buttons()

    def _show_on_canvas(self, *_: Any) -> None:
        show_marked_on_canvas(self.viewer, self.state)

    def _current_z(self) -> int:
        return current_index(self.viewer, scan_layer(self.viewer, self.state))

    def _update_buttons(self, *_: Any) -> None:
        has_scan = self.state.volume is not None
        busy = self.jobs.running
        marked = self.marked_slices()
        here = has_scan and self._current_z() in marked
        self.mark_slice_button.setEnabled(has_scan and not here)
        self.unmark_slice_button.setEnabled(has_scan and here)
        self.mark_range_button.setEnabled(has_scan)
        self.mark_selection_button.setEnabled(has_scan and bool(self.state.extras.get("disk_selection")))
        can_undo, can_redo = self._history
        self.undo_button.setEnabled(has_scan and can_undo)
        self.redo_button.setEnabled(has_scan and can_redo)
        self.finetune_button.setEnabled(has_scan and len(marked) >= MIN_MARKED and self.state.detector is not None
                                        and not busy)
        self.finetune_button.setToolTip(
            "load a model in the Detector dock first" if self.state.detector is None else
            f"mark at least {MIN_MARKED} normal slices: every other one adapts the model, the rest calibrate it"
            if len(marked) < MIN_MARKED else "")
        self.rollback_button.setEnabled(not busy and self.versions.currentItem() is not None
                                        and self.versions.currentItem().data(Qt.ItemDataRole.UserRole) is not None)

    # -- marking ---------------------------------------------------------------------------------
    def _mark(self, z: list[int], source: str, patches: list | None = None) -> list[int]:
        if ensure_volume(self.viewer, self.state) is None:
            notify_info("open a scan first")
            return []
        try:
            new = mark_normal(self.state, z, source, patches)
        except AnomaLensError as exc:
            self.status.setText(notify_error(exc))
            return []
        warning = flagged_warning(self.state, new, viewer=self.viewer)
        self.status.setText((f"marked {len(new)} new slice{'s' * (len(new) != 1)} normal" if new
                             else "already marked") + (f"; {warning}" if warning else ""))
        return new

    def mark_current_slice(self) -> list[int]:
        """Mark the slice under the viewer's cursor normal (saying so when the model flags it)."""
        return self._mark([self._current_z()], "slice")

    def mark_range(self, start: int, stop: int) -> list[int]:
        """Mark slices ``start``..``stop`` (inclusive, either order) normal."""
        a, b = sorted((int(start), int(stop)))
        return self._mark(list(range(a, b + 1)), "range")

    def mark_selection(self) -> list[int]:
        """Mark the slices of the points lassoed on the Poincaré disk normal (their patches are kept too)."""
        sel = self.state.extras.get("disk_selection") or []
        if not sel:
            notify_info("lasso some points on the Poincaré disk first")
            return []
        return self._mark(sorted({int(p[0]) for p in sel}), "lasso", list(sel))

    def unmark_current_slice(self) -> list[int]:
        """Remove the current slice's mark."""
        key, vol = current_study(self.state), self.state.volume
        if key is None or vol is None:
            return []
        removed = case_library(self.state).unmark(key, original_slices(vol, [self._current_z()]))
        sync_marks(self.state)
        return array_slices(vol, removed)

    def undo(self) -> bool:
        """Undo the shown study's latest mark or unmark."""
        return self._replay(CaseLibrary.undo, "nothing to undo", "undid")

    def redo(self) -> bool:
        """Apply again the shown study's mark or unmark undone last (none after a newer change)."""
        return self._replay(CaseLibrary.redo, "nothing to redo", "redid")

    def _replay(self, step: Callable[[CaseLibrary, str], Operation | None], nothing: str, did: str) -> bool:
        key = current_study(self.state)
        op = step(case_library(self.state), key) if key is not None else None
        sync_marks(self.state)
        self.status.setText(nothing if op is None else f"{did} {op.kind} of {len(op.slices)} slice(s)")
        return op is not None

    def goto_slice(self, z: int) -> None:
        goto_index(self.viewer, scan_layer(self.viewer, self.state), int(z))

    # -- fine-tuning -----------------------------------------------------------------------------
    def fine_tune(self) -> bool:
        """Fine-tune and recalibrate the loaded model on the marked slices, in the background."""
        from ...engine.modelstore import ModelStore

        det, vol, marked = self.state.detector, self.state.volume, self.marked_slices()
        if det is None or vol is None or len(marked) < MIN_MARKED:
            notify_info(f"load a model (Detector dock) and mark at least {MIN_MARKED} normal slices first")
            return False
        store, path = ModelStore(), self.state.model_path

        def done(out: FineTuned) -> None:
            self.last_update = out.update
            previous = self.state.detector
            self.state.set_model(out.detector, out.update.info.path)
            rec = out.update.recalibration
            self._report_for = out.detector  # the report describes this model; another one loaded clears it
            self.fp_label.setText("\n".join([*(f"⚠ {w}" for w in rec.warnings),
                                             *(f"• {line}" for line in rec.describe())]))
            notify_info(f"saved and loaded {out.update.info.name} ({model_identity(out.detector).label})")
            for w in rec.warnings:
                notify_warning(w)
            rescore_shown(self.viewer, self.state, self.jobs, previous)

        return self.jobs.start("Fine-tuning", lambda progress, cancel: fine_tune_work(
            det, path, vol, marked, store, progress, cancel), done)

    # -- versions --------------------------------------------------------------------------------
    def refresh_versions(self, *_: Any) -> None:
        """List the versions of the loaded model's site profile (the loaded one marked ●)."""
        from ...engine.modelstore import ModelStore

        self.versions.clear()
        if self.state.detector is not self._report_for:
            self.fp_label.setText("")  # a fine-tune's report, after a rollback, described a model no longer loaded
        store = ModelStore()
        profile, base = profile_of(store, self.state.model_path)
        profile = profile or self._started_from_loaded(store, base)
        if profile is None:
            self.profile_label.setText("No site profile yet: fine-tuning saves the first version as "
                                       f"'{base}'" if self.state.detector is not None else "No model loaded")
            self._update_buttons()
            return
        try:
            versions = store.versions(profile)
            active = store.active(profile)
        except AnomaLensError as exc:
            self.profile_label.setText(str(exc))
            return
        self.profile_label.setText(f"Site profile '{profile}': {len(versions)} version(s)")
        for info in reversed(versions):
            # ● marks the model in use, the one thing a reader must not misread; the profile's default (what
            # opens next time) is named in words only where it differs (after a roll back to the base,
            # "● v0001" beside "base (loaded)" read as two models in use)
            is_active = active is not None and info.path == active.path
            loaded = self.state.model_path is not None and Path(self.state.model_path) == info.path
            # the folder's number and the model's own ("lorentz v3": what layer names, the curve and outputs
            # say), side by side: the two counts differ (a store's first folder holds a calibrated v2)
            text = (f"{'● ' if loaded else '   '}{info.version} ({info.detector} v{info.bundle_version})  "
                    f"{info.created.replace('T', ' ')[:16]}"
                    f"{'  (loaded)' if loaded else ''}{'  (site default)' if is_active and not loaded else ''}"
                    f"  {info.note}")
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, str(info.path))
            item.setToolTip(info.note or info.version or "")
            self.versions.addItem(item)
        base_path = store.base(profile)
        if base_path is not None:  # the model the profile started from: "roll back" to it too
            loaded = self.state.model_path is not None and Path(self.state.model_path).resolve() == base_path
            mark, said = ("● ", "  (loaded)") if loaded else ("   ", "")
            item = QListWidgetItem(f"{mark}base  {base_path.name}{said}  "
                                   f"the model {versions[0].version} was fine-tuned from")
            item.setData(Qt.ItemDataRole.UserRole, str(base_path))
            item.setToolTip(f"{base_path.name}: the model before any site fine-tuning")
            self.versions.addItem(item)
        self._update_buttons()

    def _started_from_loaded(self, store: ModelStore, name: str) -> str | None:
        """The profile ``name`` when the loaded model is the base it started from (after a roll back to it)."""
        path = self.state.model_path
        return name if path is not None and store.base(name) == Path(path).resolve() else None

    def version_rows(self) -> list[str]:
        """Folder names of the listed versions, as shown (newest first)."""
        return [Path(self.versions.item(i).data(Qt.ItemDataRole.UserRole)).name for i in range(self.versions.count())]

    def rollback(self, version: str | None = None) -> bool:
        """Make ``version`` (default: the selected row) the profile's active version and load it."""
        from ...engine.detectors import load_bundle
        from ...engine.modelstore import BundleInfo, ModelStore

        store = ModelStore()
        profile, name = profile_of(store, self.state.model_path)
        profile = profile or self._started_from_loaded(store, name)
        chosen = None
        if version is None:
            item = self.versions.currentItem()
            chosen = Path(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None
            version = chosen.name if chosen is not None else None
        if profile is None or version is None:
            notify_info("choose a version of a site profile first")
            return False
        try:
            # the base row (by its path, not its name) loads the model the profile started from; the versions
            # and the active one stay as they are
            info = BundleInfo.read(chosen) if chosen is not None and chosen == store.base(profile) \
                else store.rollback(profile, version)
        except AnomaLensError as exc:
            self.status.setText(notify_error(exc))
            return False
        device = str(self.state.detector.device) if self.state.detector is not None else "cpu"

        def done(det: Detector) -> None:
            previous = self.state.detector
            self.state.set_model(det, info.path)
            notify_info(f"rolled back to {info.name}")
            rescore_shown(self.viewer, self.state, self.jobs, previous)

        return self.jobs.start(f"Loading {info.name}", lambda progress, cancel: load_bundle(info.path, device=device),
                               done)
