"""File → Open from PACS…: find a study on a configured PACS, pick an image series, open it like a file.

Every request runs in a worker (``JobRunner``): listing the profiles (which may ask the OS keyring), the
study search, a study's image series, clearing the cache; the dialog's own progress bar and Cancel button
follow them, and the window stays responsive however slow the PACS is. Opening a series goes through the
main window's runner, so its progress and Cancel are in the status bar like any scan being read, and the
dialog closes meanwhile. Failures (server down, HTTP 401, a study with only a report) become one message
each (``messages``), never an exception in the event loop.

The tables show what ``engine.pacs.worklist`` returns: dates, descriptions, modalities and counts. It never
returns a patient's name, so none can be shown. A pulled series stays in the user's cache (a second open
only checks it against the PACS); "Clear PACS cache…" removes every pulled series.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..jobs import JobRunner
from ..messages import notify_info, notify_warning
from ..pacs import SEARCH_LIMIT, clear_cache, human_size, in_cache, series_cells, series_layer_name, study_cells

if TYPE_CHECKING:
    import napari

    from ...engine.pacs.query import SeriesInfo, StudyInfo
    from ...engine.pacs.worklist import ProfileRow
    from ..desktop import FileActions

STUDY_COLUMNS = ("Date", "Study description", "Modalities", "Series", "Images")
SERIES_COLUMNS = ("No.", "Modality", "Series description", "Images")
MODALITIES = ("", "MR", "CT", "PT", "CR", "DX", "MG", "US", "NM", "XA")
#: ``(title, question) -> yes?``: asks before the cache is cleared (tests inject an answer).
Confirm = Callable[[str, str], bool]


def _readonly_table(columns: tuple[str, ...], stretch: int) -> QTableWidget:
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().setVisible(False)
    table.setWordWrap(False)
    header = table.horizontalHeader()
    for c in range(len(columns)):
        header.setSectionResizeMode(c, QHeaderView.ResizeMode.Stretch if c == stretch
                                    else QHeaderView.ResizeMode.ResizeToContents)
    return table


def _fill(table: QTableWidget, rows: list[list[str]]) -> None:
    table.clearSelection()
    table.setRowCount(len(rows))
    for r, cells in enumerate(rows):
        for c, text in enumerate(cells):
            item = QTableWidgetItem(text)
            item.setToolTip(text)
            if c != 1 and text.replace("-", "").isdigit():
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            table.setItem(r, c, item)


def _ask(parent: QWidget) -> Confirm:
    def confirm(title: str, question: str) -> bool:
        answer = QMessageBox.question(parent, title, question,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    return confirm


class PacsDialog(QDialog):
    """Profile chooser, search fields, studies (newest first), the selected study's image series, Open.

    Attributes a test (or a script) drives: ``profile_combo``, ``patient_edit``, ``since_edit``,
    ``until_edit``, ``modality_combo``, ``description_edit``, ``search()``, ``studies``/``study_table``,
    ``series``/``series_table``, ``open_selected()``, ``clear_cache()``; ``jobs`` runs the dialog's requests
    and ``opener`` the open (the main window's runner when there is one).
    """

    def __init__(self, viewer: napari.Viewer, files: FileActions | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent if parent is not None else viewer.window._qt_window)
        self.viewer = viewer
        self.files = files
        self.setWindowTitle("Open from PACS")
        self.setModal(False)
        self.confirm: Confirm = _ask(self)
        self.profiles: list[ProfileRow] = []
        self.studies: list[StudyInfo] = []
        self.series: list[SeriesInfo] = []
        self._series_of: str | None = None  # the study whose series the series table shows
        self._wanted: str | None = None  # the study whose series should be listed next
        self._shown_profile: str | None = None  # the profile whose studies the table shows
        self.last_opened: str | None = None  # the layer name of the last series opened
        self._summary = ""  # what the last search found, shown again once a study's series are listed

        self.profile_combo = QComboBox()
        self.profile_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.profile_note = QLabel("")
        self.profile_note.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.clear_button = QPushButton("Clear PACS cache…")
        self.clear_button.setToolTip("Delete every series pulled from a PACS into this computer's cache "
                                     "(opening one again pulls it again)")
        self.patient_edit = QLineEdit()
        self.patient_edit.setPlaceholderText("exact ID")
        self.since_edit, self.until_edit = QLineEdit(), QLineEdit()
        for edit in (self.since_edit, self.until_edit):
            edit.setPlaceholderText("YYYY-MM-DD")
            edit.setMaximumWidth(110)
        self.modality_combo = QComboBox()
        self.modality_combo.setEditable(True)
        self.modality_combo.addItems(list(MODALITIES))
        self.modality_combo.lineEdit().setPlaceholderText("any")
        self.modality_combo.setMinimumContentsLength(5)
        self.description_edit = QLineEdit()
        self.description_edit.setPlaceholderText("e.g. T2* (wildcards * and ?)")
        self.search_button = QPushButton("Search")
        self.search_button.setDefault(True)
        self.study_table = _readonly_table(STUDY_COLUMNS, stretch=1)
        self.series_table = _readonly_table(SERIES_COLUMNS, stretch=2)
        self.series_note = QLabel("Select a study to see its image series.")
        self.series_note.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(200)
        self.cancel_button = QPushButton("Cancel")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.open_button = QPushButton("Open series")
        self.close_button = QPushButton("Close")
        self.jobs = JobRunner(self.progress, self.cancel_button, self.status, self)
        self.opener = files.jobs if files is not None else self.jobs

        top = QHBoxLayout()
        top.addWidget(QLabel("PACS:"))
        top.addWidget(self.profile_combo)
        top.addWidget(self.profile_note, 1)
        top.addWidget(self.clear_button)
        filters = QGridLayout()
        for col, (label, widget) in enumerate((("Patient ID", self.patient_edit), ("Modality", self.modality_combo),
                                               ("Series description", self.description_edit))):
            filters.addWidget(QLabel(label), 0, 2 * col)
            filters.addWidget(widget, 0, 2 * col + 1)
        dates = QHBoxLayout()
        dates.setContentsMargins(0, 0, 0, 0)
        dates.addWidget(self.since_edit)
        dates.addWidget(QLabel("until"))
        dates.addWidget(self.until_edit)
        dates.addStretch(1)
        filters.addWidget(QLabel("Study date from"), 1, 0)
        filters.addLayout(dates, 1, 1, 1, 3)
        filters.addWidget(self.search_button, 1, 5, Qt.AlignmentFlag.AlignRight)
        filters.setColumnStretch(5, 1)
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 0, 0, 0)
        lower_layout.addWidget(self.series_note)
        lower_layout.addWidget(self.series_table)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.study_table)
        split.addWidget(lower)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setChildrenCollapsible(False)
        running = QHBoxLayout()
        running.addWidget(self.progress)
        running.addWidget(self.cancel_button)
        running.addWidget(self.status, 1)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addLayout(filters)
        layout.addWidget(split, 1)
        layout.addLayout(running)
        layout.addLayout(buttons)

        self.profile_combo.currentIndexChanged.connect(self._profile_changed)
        self.search_button.clicked.connect(lambda: self.search())
        for edit in (self.patient_edit, self.since_edit, self.until_edit, self.description_edit):
            edit.returnPressed.connect(lambda: self.search())
        self.study_table.itemSelectionChanged.connect(self._study_selected)
        self.series_table.itemSelectionChanged.connect(self._sync)
        self.series_table.cellDoubleClicked.connect(lambda *_: self.open_selected())
        self.open_button.clicked.connect(lambda: self.open_selected())
        self.close_button.clicked.connect(self.close)
        self.clear_button.clicked.connect(lambda: self.clear_cache())
        self.jobs.started.connect(self._sync)
        self.jobs.done.connect(self._after_job)
        self.opener.started.connect(self._sync)
        self.opener.done.connect(self._sync)
        self.resize(*self._initial_size())
        self._sync()
        self.load_profiles()

    def _initial_size(self) -> tuple[int, int]:
        """Most of a 1366×768 screen, no more than 980×640 on a large one."""
        try:
            avail = self.viewer.window._qt_window.screen().availableGeometry()
            return min(980, int(avail.width() * 0.85)), min(640, int(avail.height() * 0.85))
        except (AttributeError, RuntimeError):
            return 900, 600

    # -- state ---------------------------------------------------------------------------------------
    @property
    def profile(self) -> str | None:
        """The chosen profile's name (None: none configured)."""
        i = self.profile_combo.currentIndex()
        return self.profiles[i].name if 0 <= i < len(self.profiles) else None

    def selected_study(self) -> StudyInfo | None:
        rows = self.study_table.selectionModel().selectedRows()
        return self.studies[rows[0].row()] if rows and rows[0].row() < len(self.studies) else None

    def selected_series(self) -> SeriesInfo | None:
        rows = self.series_table.selectionModel().selectedRows()
        if not rows or self._series_of is None or rows[0].row() >= len(self.series):
            return None
        return self.series[rows[0].row()]

    def select_study(self, uid: str) -> bool:
        """Select the study with this UID in the table (what a click does); False when it is not listed."""
        for r, s in enumerate(self.studies):
            if s.uid == uid:
                self.study_table.selectRow(r)
                return True
        return False

    def select_series(self, uid: str) -> bool:
        for r, s in enumerate(self.series):
            if s.uid == uid:
                self.series_table.selectRow(r)
                return True
        return False

    def _sync(self, *_: Any) -> None:
        busy = self.jobs.running
        has_profile = self.profile is not None
        self.profile_combo.setEnabled(not busy and bool(self.profiles))
        self.search_button.setEnabled(has_profile and not busy)
        self.clear_button.setEnabled(not busy)
        opening = self.opener.running
        ok = self.selected_series() is not None and self.profile is not None and not opening
        self.open_button.setEnabled(ok)
        self.open_button.setToolTip("" if ok else "a scan is being opened" if opening
                                    else "select a study, then one of its image series")

    def _after_job(self, *_: Any) -> None:
        """After any request: list the series of the study selected meanwhile, if it is not the one shown."""
        self._sync()
        if self._wanted is not None and self._wanted != self._series_of and not self.jobs.running:
            self._list_series(self._wanted)

    # -- profiles ------------------------------------------------------------------------------------
    def load_profiles(self) -> bool:
        """Fill the chooser (in a worker: telling where a password comes from may ask the OS keyring)."""
        from ...engine.pacs import worklist

        def done(rows: list[ProfileRow]) -> None:
            current = self.profile
            self.profiles = list(rows)
            self.profile_combo.blockSignals(True)
            self.profile_combo.clear()
            for row in rows:
                self.profile_combo.addItem(f"{row.name} (default)" if row.default else row.name)
            names = [r.name for r in rows]
            self.profile_combo.setCurrentIndex(names.index(current) if current in names else 0 if rows else -1)
            self.profile_combo.blockSignals(False)
            self._profile_changed()
            if not rows:
                from ..pacs import NO_PACS

                self.status.setText(f"No PACS to search: {NO_PACS}.")

        return self.jobs.start("Listing the PACS", lambda progress, cancel: worklist.profiles(), done)

    def _profile_changed(self, *_: Any) -> None:
        i = self.profile_combo.currentIndex()
        row = self.profiles[i] if 0 <= i < len(self.profiles) else None
        if row is None:
            self.profile_note.setText("")
        else:
            note = row.url + (" (certificate not checked)" if row.insecure else "")
            if row.secret == "missing":
                note += f" — no password stored: run 'anomalens pacs login {row.name}'"
            self.profile_note.setText(note)
            self.profile_note.setToolTip(note)
        if self.profile != self._shown_profile:  # another PACS: the listed studies are not on it
            self._shown_profile = self.profile
            self._show_studies([])
            self.status.setText("")
        self._sync()

    # -- searching -----------------------------------------------------------------------------------
    def search(self) -> bool:
        """Search the chosen PACS with the fields' values (in a worker); False when nothing started."""
        from ...engine.pacs import worklist

        profile = self.profile
        if profile is None:
            return False
        terms = {"patient_id": self.patient_edit.text().strip() or None,
                 "since": self.since_edit.text().strip() or None, "until": self.until_edit.text().strip() or None,
                 "modality": self.modality_combo.currentText().strip() or None,
                 "description": self.description_edit.text().strip() or None}

        def work(progress: Any, cancel: Any) -> list[StudyInfo]:
            return worklist.search(profile, limit=SEARCH_LIMIT, progress=progress, cancel=cancel, **terms)

        def done(studies: list[StudyInfo]) -> None:
            if terms["description"]:  # the description matches series: a study with none of them is no match
                studies = [s for s in studies if s.series]
            self._show_studies(studies)
            n = len(studies)
            more = f"; the first {SEARCH_LIMIT} matches are shown: narrow the search" if n >= SEARCH_LIMIT else ""
            self._summary = (f"{n} {'study' if n == 1 else 'studies'} on {profile}{more}" if n else
                             f"No study on {profile} matches this search")
            self.status.setText(self._summary)

        self._show_studies([])
        return self.jobs.start(f"Searching {profile}", work, done)

    def _show_studies(self, studies: list[StudyInfo]) -> None:
        self.studies = list(studies)
        self._wanted = None
        _fill(self.study_table, [study_cells(s) for s in self.studies])
        self._show_series(None, [])

    def _study_selected(self) -> None:
        study = self.selected_study()
        self._wanted = study.uid if study is not None else None
        if study is None:
            self._show_series(None, [])
        elif study.uid != self._series_of:
            self._show_series(None, [])
            self.series_note.setText("Listing the study's image series…")
            if not self.jobs.running:
                self._list_series(study.uid)
        self._sync()

    def _list_series(self, study_uid: str) -> bool:
        from ...engine.pacs import worklist

        profile = self.profile
        study = next((s for s in self.studies if s.uid == study_uid), None)
        if profile is None or study is None:
            return False

        def finish(series: list[SeriesInfo] | None, failed: bool = False) -> None:
            if self._wanted != study_uid:  # another study was selected meanwhile (``_after_job`` lists it)
                return
            if not failed:
                self.status.setText(self._summary)
            self._show_series(study_uid, series or [])
            if failed:
                self.series_note.setText("The study's series could not be listed (see the message).")
            elif not series:
                kinds = ", ".join(sorted({s.modality or "?" for s in study.series})) or "nothing"
                text = (f"This study holds no image series to open (only {kinds}): it has nothing a model can "
                        "score.")
                self.series_note.setText(text)
                notify_warning(f"Study of {study_cells(study)[0]} on {profile}: {text}")
            else:
                self.series_note.setText(f"{len(series)} image series (reports, segmentations and maps are "
                                         "not listed). Select one and open it.")
                if len(series) == 1:
                    self.series_table.selectRow(0)

        return self.jobs.start("Listing the series", lambda progress, cancel: worklist.image_series(profile,
                                                                                                    study_uid),
                               finish, lambda exc: finish(None, failed=True))

    def _show_series(self, study_uid: str | None, series: list[SeriesInfo]) -> None:
        self._series_of = study_uid
        self.series = list(series)
        _fill(self.series_table, [series_cells(s) for s in self.series])
        if study_uid is None:
            self.series_note.setText("Select a study to see its image series.")
        self._sync()

    # -- opening -------------------------------------------------------------------------------------
    def open_selected(self) -> bool:
        """Pull the selected series (resumably, into the cache) and show it as a scan; False if nothing started."""
        from ...engine.pacs import worklist
        from ..reader import image_layer_data

        study, series, profile = self.selected_study(), self.selected_series(), self.profile
        if study is None or series is None or profile is None:
            return False

        def work(progress: Any, cancel: Any) -> Any:
            volume = worklist.open_series(study.uid, series.uid, profile=profile, progress=progress, cancel=cancel)
            return image_layer_data(volume, name=series_layer_name(volume, series))

        def done(result: Any) -> None:
            data, kwargs, _kind = result
            self.viewer.add_image(data, **kwargs)
            self.viewer.reset_view()
            self.last_opened = kwargs["name"]

        what = series.description or f"{series.modality} series"
        started = self.opener.start(f"Opening {what} from {profile}", work, done)
        if started and self.opener is not self.jobs:
            self.hide()  # progress and Cancel are in the main window's status bar
        return started

    # -- the cache -----------------------------------------------------------------------------------
    def clear_cache(self) -> bool:
        """Ask, then delete every series pulled from a PACS (in a worker); False when nothing started."""
        shown = [lyr.name for lyr in self.viewer.layers if in_cache(lyr.metadata.get("anomalens_volume"))]
        question = "Delete every series pulled from a PACS from this computer's cache? Opening one again pulls " \
                   "it again."
        if shown:
            question += (f"\n\nShown now from the cache: {', '.join(shown)}. Its DICOM SEG export and Send to PACS "
                         "need the series, so open it again before using them.")
        if not self.confirm("Clear PACS cache", question):
            return False

        def done(removed: tuple[int, int]) -> None:
            n, size = removed
            text = f"Cleared the PACS cache: {n} series ({human_size(size)}) removed" if n else \
                "The PACS cache was already empty"
            self.status.setText(text)
            notify_info(text)

        return self.jobs.start("Clearing the PACS cache", clear_cache, done)

    def closeEvent(self, event: Any) -> None:
        """Closing while a search runs cancels it (the worker stops at its next check)."""
        self.jobs.cancel()
        super().closeEvent(event)


def show_pacs_dialog(files: FileActions) -> PacsDialog:
    """The main window's PACS dialog, made once and shown again (its search and selection kept)."""
    dialog = getattr(files, "pacs_dialog", None)
    if dialog is None:
        dialog = PacsDialog(files.viewer, files)
        files.pacs_dialog = dialog
    elif not dialog.jobs.running:
        dialog.load_profiles()  # a profile added since the last use shows up
    dialog.show()
    dialog.raise_()
    dialog.activateWindow()
    return dialog
