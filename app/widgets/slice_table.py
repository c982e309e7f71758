"""Per-slice table of the followed result: slice, score, flagged, volume; a click shows that slice.

A radiologist reads a scored volume as a worklist: which slices did the model flag, how strongly, how much
tissue. The rows are the engine's ``SliceScore`` numbers (``ScanResults.slices``); flagged and volume are
counted from the mask as shown (``rows_of``), so a SCR re-cut or a hand edit changes them exactly as it
changes the scores CSV the Export dock writes. The slice column is the file's slice number
(``SliceScore.index``); a click (or Enter) shows that slice in the viewer. Clicking a header sorts by that
column; ``sort_by_score`` puts the most anomalous slice first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QSize, Qt, QTimer, Signal
from qtpy.QtGui import QBrush, QColor, QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..results import format_score

if TYPE_CHECKING:
    from ...engine.scoring import SliceScore
    from ..results import ScanResults

#: Columns, in order (the caption above the table says what the score's unit is).
COLUMNS = ("slice", "score", "flagged", "vol. mL")
SLICE, SCORE, FLAGGED, VOLUME = range(4)
#: Item data role holding a cell's sort key (numbers sort as numbers, not as text).
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
#: Item data role holding the row's array z (what the viewer is moved to).
Z_ROLE = Qt.ItemDataRole.UserRole + 2
FLAGGED_COLOR = "#ff3b30"


def rows_of(res: ScanResults, mask: np.ndarray | None = None) -> list[SliceScore]:
    """The result's slice rows by z, flagged and volume counted from ``mask`` (the mask as shown) when given.

    The same rule as the Export dock's scores CSV: a calibrated result's rows follow its mask layer (hand
    edits and SCR re-cuts included); an uncalibrated one has no mask and keeps ``flagged`` None.
    """
    rows = [res.slices[z] for z in sorted(res.slices)]
    if mask is None or not res.calibrated:
        return rows
    voxel_ml = float(np.prod(res.volume.spacing)) / 1000.0
    return [s.with_mask(mask[s.z], voxel_ml) for s in rows]


def format_ml(value: float | None) -> str:
    """A slice's lesion volume: two decimals, three under 0.1 mL (a few voxels still read as non-zero)."""
    if value is None:
        return "—"
    return f"{value:.3f}" if 0 < value < 0.1 else f"{value:.2f}"


class _Item(QTableWidgetItem):
    """A read-only cell that sorts by its ``SORT_ROLE`` value."""

    def __init__(self, text: str, key: Any, z: int) -> None:
        super().__init__(text)
        self.setData(SORT_ROLE, key)
        self.setData(Z_ROLE, int(z))
        self.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        return self.data(SORT_ROLE) < other.data(SORT_ROLE)


class SliceTable(QWidget):
    """A sortable table of a result's scored slices; the current slice's row is selected.

    Signals:
        slice_clicked(int): the array z of a row the user clicked or activated.
    """

    slice_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        # no alternating row colours: under napari's dark theme the alternate rows came out near-white with
        # white text, every other row unreadable
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)  # short headers: four columns fit 300 px
        header.setToolTip("click a header to sort by it")
        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(SLICE, Qt.SortOrder.AscendingOrder)
        self._sorted_by = SLICE
        header.sortIndicatorChanged.connect(self._on_sort)
        self.table.cellClicked.connect(self._on_cell)
        self.table.cellActivated.connect(self._on_cell)
        # arrow keys walk the worklist and the slice follows (only Return did); set_current blocks signals
        self.table.currentCellChanged.connect(lambda row, col, prev_row, prev_col: self._on_cell(row, col)
                                              if row >= 0 and row != prev_row else None)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.caption)
        layout.addWidget(self.table, 1)
        self.unit = ""

    def sizeHint(self) -> QSize:
        """Modest, like the score curve: the dock scrolls rather than the window growing."""
        return QSize(240, 140)

    def set_rows(self, rows: list[SliceScore], unit: Any = "", current: int | None = None) -> None:
        """Show ``rows`` (score in ``unit``: a ``MapUnit`` or its value), keeping the user's sort order."""
        unit_value = str(getattr(unit, "value", unit))
        short = str(getattr(unit, "short", unit_value))
        self.unit = short
        self.table.horizontalHeaderItem(SCORE).setToolTip(f"the slice's highest score, in {short} units")
        top = " (1 = top of the normal range)" if unit_value == "normal-quantile" else ""
        self.caption.setText(f"score: the slice's maximum, {short}{top}; vol.: the mask on the slice. "
                             "Click a row to show it." if short else "")
        # filled with signals blocked: a refill moves the current cell, and the arrow-key walk (the table's
        # currentCellChanged) would then show another slice on its own
        self.table.blockSignals(True)
        try:
            self._fill(rows, unit_value)
        finally:
            self.table.blockSignals(False)
        if current is not None:
            self.set_current(current)

    def _fill(self, rows: list[SliceScore], unit_value: str) -> None:
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)  # filling a sorting table moves rows under the loop
        self.table.setRowCount(len(rows))
        bold = QFont(self.font())
        bold.setBold(True)
        for r, s in enumerate(rows):
            flagged = "—" if s.flagged is None else ("yes" if s.flagged else "no")
            cells = (_Item(str(s.index), s.index, s.z), _Item(format_score(s.score, unit_value), s.score, s.z),
                     _Item(flagged, -1 if s.flagged is None else int(s.flagged), s.z),
                     _Item(format_ml(s.volume_ml), -1.0 if s.volume_ml is None else s.volume_ml, s.z))
            for c, item in enumerate(cells):
                if c != FLAGGED:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if s.flagged:
                    item.setForeground(QBrush(QColor(FLAGGED_COLOR)))
                    item.setFont(bold)
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(sorting)

    def clear(self) -> None:
        """No result: no rows."""
        self.table.setRowCount(0)

    def _on_sort(self, column: int, order: Any) -> None:
        """A first click on score, flagged or volume sorts highest first: the worklist's order (Qt's is lowest)."""
        first = column != self._sorted_by
        self._sorted_by = column
        if first and column != SLICE and order == Qt.SortOrder.AscendingOrder:
            # after the view's own handler of this signal, which sorts by the order it was given
            QTimer.singleShot(0, lambda: self.table.sortByColumn(column, Qt.SortOrder.DescendingOrder))

    def sort_by_score(self, descending: bool = True) -> None:
        """Most anomalous first (or last): the order a reader works through flagged slices."""
        self.table.sortByColumn(SCORE, Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder)

    def set_current(self, z: int) -> None:
        """Select the row of array slice ``z`` (none when it is not scored) without emitting ``slice_clicked``."""
        row = self.row_of(z)
        self.table.blockSignals(True)
        try:
            if row is None:
                self.table.clearSelection()
            else:
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
        finally:
            self.table.blockSignals(False)

    def row_of(self, z: int) -> int | None:
        """The table row (as sorted now) of array slice ``z``."""
        for r in range(self.table.rowCount()):
            item = self.table.item(r, SLICE)
            if item is not None and item.data(Z_ROLE) == int(z):
                return r
        return None

    def rows(self) -> list[tuple[str, ...]]:
        """The cells' text, row by row as shown (tests and the user read the same thing)."""
        return [tuple(self.table.item(r, c).text() for c in range(len(COLUMNS))) for r in range(self.table.rowCount())]

    def z_at(self, row: int) -> int:
        """The array z of a shown row."""
        return int(self.table.item(row, SLICE).data(Z_ROLE))

    def click_row(self, row: int) -> None:
        """Act as if the user clicked ``row`` (also used by tests)."""
        self._on_cell(row, SLICE)

    def _on_cell(self, row: int, column: int) -> None:
        item = self.table.item(row, SLICE)
        if item is not None:
            self.slice_clicked.emit(int(item.data(Z_ROLE)))
