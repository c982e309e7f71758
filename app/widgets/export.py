"""The Export dock (and File → Export): heatmap and mask as NIfTI, the mask as DICOM SEG, a PNG, slice scores.

What is exported is what the user sees: the heatmap of ``state.results`` (the loaded model's result for
the shown scan, as ``score_scan`` made it; its unit goes into the file's description and the CSV) and the
*mask layer's current data*, so hand edits made with napari's label tools are in the file. Arrays are
copied on the UI thread and written by ``anomalens.engine`` in a worker (the app's ``JobRunner``), so a
slow disk never freezes the viewer and a failure becomes a message. Targets inside the source DICOM
folder (or the source file itself) are refused: a stray file there would turn up as a new series in the
next import.

Every file goes through the engine's writers (``engine.fileio``: temporary, fsync, read back, rename), so
a full disk or a refused folder replaces nothing: the old file stays byte for byte and the user gets one
line ("Export heatmap failed: disk full while writing …: nothing was replaced"). Suggested names come
from the series description or a hash of the study (``app.naming``), never from the file or folder the
scan was read from: sites name those after patients.

"Send to PACS" stores the result as the reader sees it (mask as shown, heatmap, flagged slices) in the scan's
study on the PACS it came from, else on the default PACS: a DICOM SEG, a Parametric Map and an SR report
(``engine.pacs.worklist.push_result``), in a worker, after the user agreed; pushing the same result again
adds nothing there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ...engine.errors import AnomaLensError, ConfigError
from ...engine.logredact import remember
from ..jobs import JobRunner
from ..messages import notify_error, notify_info
from ..pacs import push_target
from ..results import find_layer
from ..state import get_state
from .docking import ScrollsWhenDocked

if TYPE_CHECKING:
    import napari

    from ...engine.volume import Volume
    from ..results import ScanResults

#: kind → (dialog title, file filter, default suffix)
TARGETS: dict[str, tuple[str, str, str]] = {
    "heatmap": ("Export heatmap", "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)", ".nii.gz"),
    "mask": ("Export mask", "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)", ".nii.gz"),
    "seg": ("Export mask as DICOM SEG", "DICOM (*.dcm)", ".dcm"),
    "png": ("Save the image on screen", "PNG image (*.png)", ".png"),
    "csv": ("Export slice scores", "CSV (*.csv)", ".csv"),
}
_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

#: ``(kind, title, file filter, suggested name) -> chosen path or None`` (a file dialog; tests inject one).
PathChooser = Callable[[str, str, str, str], "Path | None"]
#: ``(title, question) -> yes?``: asks before a result leaves for a PACS (tests inject an answer).
Confirm = Callable[[str, str], bool]


def is_dicom(volume: Volume | None) -> bool:
    """Whether a scan was read from DICOM (only then can its mask become a DICOM SEG on the source series)."""
    return volume is not None and str(volume.metadata.get("format", "")).upper() == "DICOM"


def protected_paths(volume: Volume | None) -> tuple[Path | None, Path | None]:
    """(folder, file) the user's source scan occupies: the DICOM folder, or the scan file itself."""
    if volume is None or volume.source is None:
        return None, None
    src = Path(volume.source).expanduser().resolve()
    if src.is_dir():
        return src, None
    if is_dicom(volume):
        return src.parent, src
    return None, src


def check_target(path: str | Path, volume: Volume | None) -> Path:
    """The resolved target, or ConfigError when it would land in (or over) the user's source scan."""
    target = Path(path).expanduser().resolve()
    folder, file = protected_paths(volume)
    if file is not None and target == file:
        raise ConfigError(f"{target.name} is the scan itself; choose another file name so the scan stays intact")
    if folder is not None and target.is_relative_to(folder):
        raise ConfigError(f"{folder} holds the source DICOM series; save exports in another folder so "
                          "the series stays as it was (a file there would be read as part of it)")
    return target


def with_suffix(path: Path, kind: str, suggested: str = "") -> Path:
    """The file to write: the kind's default suffix added when the name has none; a folder gets the suggestion.

    A folder given as the target became a sibling file (``out`` → ``out.nii.gz``), and a name with another
    format's suffix got a second one (``heat.png`` → ``heat.png.nii.gz``): the first now writes into the
    folder under the suggested name, the second is refused with what the export writes.
    """
    default = TARGETS[kind][2]
    if path.is_dir():
        return path / f"{suggested or kind}{default}"
    name = path.name.lower()
    known = _IMAGE_SUFFIXES if kind in ("heatmap", "mask") else (default,)
    if name.endswith(known):
        return path
    other = {*_IMAGE_SUFFIXES, *(t[2] for t in TARGETS.values())} - set(known)
    if name.endswith(tuple(other)):
        raise ConfigError(f"{path.name}: a {kind} export is written as {' or '.join(known)}; give a name ending so")
    return path.with_name(path.name + default)


def _dialog_chooser(parent: QWidget) -> PathChooser:
    def choose(kind: str, title: str, filters: str, suggested: str) -> Path | None:
        path, _ = QFileDialog.getSaveFileName(parent, title, suggested, filters)
        return Path(path) if path else None

    return choose


def _dialog_confirm(parent: QWidget) -> Confirm:
    def confirm(title: str, question: str) -> bool:
        from qtpy.QtWidgets import QMessageBox

        yes, no = QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No
        return QMessageBox.question(parent, title, question, yes | no, no) == yes

    return confirm


class ExportWidget(ScrollsWhenDocked, QWidget):
    """Dock widget with one button per export; each asks for a target, then writes in the background."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.choose_path: PathChooser = _dialog_chooser(self)
        self.confirm: Confirm = _dialog_confirm(self)
        self.last_written: Path | None = None
        self.last_dir: Path | None = None

        self.heatmap_button = QPushButton("Heatmap as NIfTI…")
        self.mask_button = QPushButton("Mask as NIfTI…")
        self.seg_button = QPushButton("Mask as DICOM SEG…")
        self.png_button = QPushButton("Snapshot as PNG…")
        self.csv_button = QPushButton("Slice scores as CSV…")
        self.pacs_button = QPushButton("Send to PACS…")
        self.last_pushed: Any = None  # the engine's PushReport of the last push
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.jobs = JobRunner(self.progress, self.cancel_button, self.status, self)

        layout = QVBoxLayout(self)
        for b in (self.heatmap_button, self.mask_button, self.seg_button, self.png_button, self.csv_button,
                  self.pacs_button):
            layout.addWidget(b)
        running = QHBoxLayout()
        running.addWidget(self.progress, 1)
        running.addWidget(self.cancel_button)
        layout.addLayout(running)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.heatmap_button.clicked.connect(lambda: self.export_heatmap())
        self.mask_button.clicked.connect(lambda: self.export_mask())
        self.seg_button.clicked.connect(lambda: self.export_seg())
        self.png_button.clicked.connect(lambda: self.export_snapshot())
        self.csv_button.clicked.connect(lambda: self.export_scores())
        self.pacs_button.clicked.connect(lambda: self.send_to_pacs())
        for signal in (self.state.score_changed, self.state.volume_changed, self.state.mask_changed,
                       self.state.model_changed):
            signal.connect(self.update_buttons)
        self.jobs.started.connect(self.update_buttons)
        self.jobs.done.connect(self.update_buttons)
        self.update_buttons()

    # -- what can be exported ----------------------------------------------------------------------
    def results(self) -> ScanResults | None:
        """The scored results of the shown scan (None before anything was scored)."""
        return self.state.results

    def mask_layer(self) -> Any:
        """The mask labels layer of the results (its data carries the user's hand edits)."""
        res = self.results()
        return find_layer(self.viewer, res.mask_name) if res is not None else None

    def current_mask(self) -> np.ndarray | None:
        """A copy of the mask as shown (the layer's data, edits included), as 0/1 on the scan's grid."""
        res, layer = self.results(), self.mask_layer()
        data = layer.data if layer is not None else (res.mask if res is not None and res.calibrated else None)
        if data is None or res is None or tuple(np.shape(data)) != res.volume.shape:
            return None
        return (np.asarray(data) != 0).astype(np.uint8)

    def current_heatmap(self) -> np.ndarray | None:
        """A copy of the heatmap on the scan's grid (zeros on slices not scored yet)."""
        res = self.results()
        if res is None:
            return None
        layer = find_layer(self.viewer, res.heatmap_name)
        data = layer.data if layer is not None and tuple(layer.data.shape) == res.volume.shape else res.maps
        return np.array(data, dtype=np.float32, copy=True)

    def update_buttons(self, *_: Any) -> None:
        """Enable what the current results allow, with a tooltip saying why the rest is off."""
        res, busy = self.results(), self.jobs.running
        has_mask = res is not None and res.calibrated
        seg_ok = has_mask and is_dicom(res.volume)
        no_scores = "score a slice or the volume first (Detector dock)"
        for button, ok, why in (
                (self.heatmap_button, res is not None, no_scores),
                (self.mask_button, has_mask, no_scores if res is None else "this model is not calibrated: no mask"),
                (self.seg_button, seg_ok, no_scores if res is None else
                 "this model is not calibrated: no mask" if not has_mask else
                 "DICOM SEG needs a scan opened from DICOM; export the mask as NIfTI instead"),
                (self.csv_button, res is not None and bool(res.slice_scores), no_scores),
                (self.png_button, True, "")):
            button.setEnabled(ok and not busy)
            button.setToolTip("" if ok else why)
        target = push_target(res.volume if res is not None else None)
        why = (no_scores if res is None else "this model is not calibrated: a PACS gets a mask, and there is none"
               if not has_mask else target.why)
        ok = has_mask and target.profile is not None
        self.pacs_button.setEnabled(ok and not busy)
        self.pacs_button.setToolTip(
            f"Store the mask (DICOM SEG), the anomaly map and a report in the scan's study on the PACS "
            f"{target.profile!r} ({'where it came from' if target.came_from else 'the default PACS'})" if ok else why)

    # -- exports -----------------------------------------------------------------------------------
    def export_heatmap(self, path: str | Path | None = None) -> bool:
        """Write the heatmap as NIfTI (NRRD/MHA by suffix) on the scan's geometry, its unit in the header."""
        from ...engine.io import write_like

        res, heat = self.results(), self.current_heatmap()
        if res is None or heat is None:
            return self._nothing("heatmap")
        vol, description = res.volume, f"AnomaLens heatmap: {res.unit.short}"  # as ``anomalens score`` writes it
        return self._write("heatmap", path, f"{res.file_stem}_anomaly",
                           lambda target, progress, cancel: write_like(vol, heat, target, description=description))

    def export_mask(self, path: str | Path | None = None) -> bool:
        """Write the mask as shown (hand edits included) as NIfTI on the scan's geometry."""
        from ...engine.export import export_mask

        res, mask = self.results(), self.current_mask()
        if res is None or mask is None:
            return self._nothing("mask")
        vol = res.volume
        # what the file holds, as ``anomalens score`` says it in its masks' headers (the viewer's had none)
        description = (f"AnomaLens mask as shown ({res.label})"
                       + (", edited by hand" if res.hand_edited_slices() else ""))[:80]
        return self._write("mask", path, f"{res.file_stem}_mask",
                           lambda target, progress, cancel: export_mask(vol, mask, target, description=description))

    def export_seg(self, path: str | Path | None = None) -> bool:
        """Write the mask as shown as a DICOM SEG referencing the source series (DICOM scans only)."""
        from ...engine.export import export_seg

        res, mask = self.results(), self.current_mask()
        if res is None or mask is None:
            return self._nothing("mask")
        if not is_dicom(res.volume):
            notify_info("DICOM SEG needs a scan opened from DICOM; export the mask as NIfTI instead")
            return False
        vol = res.volume
        return self._write("seg", path, f"{res.file_stem}_seg",
                           lambda target, progress, cancel: export_seg(vol, mask, target, progress=progress,
                                                                       cancel=cancel))

    def export_snapshot(self, path: str | Path | None = None, canvas_only: bool = True) -> bool:
        """Save the image on screen as PNG (grabbed now on the UI thread, written in the background).

        The canvas only by default, with its colour bar, letters and keys, none of which names a file: the
        whole window showed the scan's file name (a patient's name, where a site names folders so) in the
        docks, the layer list and the status bar.
        """
        from ...engine.export import save_png

        res = self.results()
        name = f"{res.file_stem}_view" if res is not None else "anomalens_view"
        target = self._target("png", path, name)
        if target is None:
            return False
        try:
            rgb = np.asarray(self.viewer.screenshot(canvas_only=canvas_only, flash=False))
        except Exception as exc:  # a failed grab (no OpenGL context) is a message, not a crash
            self.status.setText(f"Snapshot failed: {notify_error(exc, 'snapshot')}")
            return False
        return self._start("png", target, lambda t, progress, cancel: save_png(rgb, t))

    def export_scores(self, path: str | Path | None = None) -> bool:
        """Write ``slice,score,unit,model[,mask_voxels]`` for every scored slice (z as in the scan's array).

        ``mask_voxels`` counts the mask as shown (hand edits and SCR re-cuts included).
        """
        from ...engine.outputs import table_header, write_scores_table

        res, mask = self.results(), self.current_mask()
        if res is None or not res.slices:
            return self._nothing("slice scores")
        rows = [res.slices[z] for z in sorted(res.slices)]
        kind = None
        if mask is not None and res.calibrated:
            voxel_ml = float(np.prod(res.volume.spacing)) / 1000.0
            rows = [s.with_mask(mask[s.z], voxel_ml) for s in rows]
            kind = res.mask_description()
        header = table_header(res.model, res.unit, res.calibration, kind, res.warnings)
        return self._write("csv", path, f"{res.file_stem}_slice_scores",
                           lambda target, progress, cancel: write_scores_table(target, rows, header))

    def send_to_pacs(self, confirm: bool = True) -> bool:
        """Store the result as shown (mask with its edits, heatmap, flagged slices) on the scan's PACS, in a worker.

        The PACS is the one the scan came from, else the default one (``app.pacs.push_target``); the user is
        asked first (``confirm``: False skips asking, for scripts). Returns whether the push started.
        """
        from ...engine.pacs import worklist
        from ...engine.scoring import with_plain_mask
        from ..pacs import describe_push, result_to_push

        res, mask, heat = self.results(), self.current_mask(), self.current_heatmap()
        if res is None or heat is None:
            return self._nothing("result")
        target = push_target(res.volume)
        if mask is None or not res.calibrated or target.profile is None:
            text = target.why if target.profile is None else "this model is not calibrated: there is no mask to send"
            self.status.setText(text)
            notify_info(text)
            return False
        profile = target.profile
        question = (f"Store this result in the scan's study on the PACS {profile!r}?\n\nIt gets the mask as shown "
                    f"(DICOM SEG), the anomaly map of {res.label} (Parametric Map) and a report with the lesion "
                    "volume and flagged slices (SR). Other users of the PACS will see them.")
        if confirm and not self.confirm("Send to PACS", question):
            return False
        result = result_to_push(res, mask, heat)

        def work(progress: Any, cancel: Any) -> Any:
            progress(0.0, "building the DICOM objects")
            return worklist.push_result(profile, with_plain_mask(result), progress=progress, cancel=cancel)

        def done(report: Any) -> None:
            self.last_pushed = report
            text = describe_push(report)
            self.status.setText(text)
            notify_info(text)

        return self.jobs.start(f"Sending to PACS {profile}", work, done)

    # -- plumbing ------------------------------------------------------------------------------------
    def _nothing(self, what: str) -> bool:
        text = f"no {what} to export yet: score a slice or the volume first (Detector dock)"
        self.status.setText(text)
        notify_info(text)
        return False

    def _target(self, kind: str, path: str | Path | None, suggested: str) -> Path | None:
        """Ask for a target (unless given) and check it is not inside the user's source scan.

        ``suggested`` never comes from a file or folder name (``ScanResults.file_stem``); the chosen path is
        registered with the log redactor as given (relative too), so any log line about it shows a token.
        """
        title, filters, suffix = TARGETS[kind]
        res = self.results()
        if path is None:
            start = self.last_dir or Path.home()
            folder, _ = protected_paths(res.volume if res is not None else None)
            if folder is not None and start.resolve().is_relative_to(folder):
                start = Path.home()
            path = self.choose_path(kind, title, filters, str(start / f"{suggested}{suffix}"))
            if path is None:
                return None
        remember(path)
        try:
            target = with_suffix(Path(path), kind, suggested)
            remember(target)
            return check_target(target, res.volume if res is not None else None)
        except AnomaLensError as exc:
            self.status.setText(notify_error(exc, "export"))
            return None

    def _write(self, kind: str, path: str | Path | None, suggested: str,
               write: Callable[[Path, Any, Any], Path]) -> bool:
        target = self._target(kind, path, suggested)
        return target is not None and self._start(kind, target, write)

    def _start(self, kind: str, target: Path, write: Callable[[Path, Any, Any], Path]) -> bool:
        def work(progress: Any, cancel: Any) -> Path:
            progress(0.0, f"writing {target.name}")
            return write(target, progress, cancel)

        def done(written: Path) -> None:
            self.last_written, self.last_dir = written, written.parent
            self.status.setText(f"wrote {written}")
            notify_info(f"exported {written.name} to {written.parent}")

        return self.jobs.start(TARGETS[kind][0], work, done)
