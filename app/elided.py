"""A one-line status label that cannot widen its window.

A QLabel asks for the width of its whole text: one long error in the window's status bar ("the folder …
holds no DICOM images (2 other files, e.g. …)") made the main window 1,467 px wide on a 1,366 px screen,
and it stayed that wide. This label asks for at most ``max_hint`` pixels, cuts what does not fit with "…",
and keeps the whole text in its tooltip and in ``text()``.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QLabel, QSizePolicy


class ElidedLabel(QLabel):
    """``QLabel`` for one line of status: elided to its width, the full text in ``text()`` and the tooltip."""

    def __init__(self, text: str = "", max_hint: int = 520, parent: Any = None) -> None:
        super().__init__(parent)
        self.max_hint = int(max_hint)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def text(self) -> str:  # the whole text, not the elided one shown
        return self._full

    def setText(self, text: str) -> None:
        self._full = str(text or "")
        self._show()
        self.updateGeometry()

    def sizeHint(self) -> QSize:
        height = super().sizeHint().height()
        return QSize(min(self.fontMetrics().horizontalAdvance(self._full) + 8, self.max_hint), height)

    def minimumSizeHint(self) -> QSize:
        return QSize(min(60, self.sizeHint().width()), super().minimumSizeHint().height())

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        self._show()

    def _show(self) -> None:
        shown = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, max(self.width() - 4, 0))
        QLabel.setText(self, shown)
        self.setToolTip(self._full if shown != self._full else "")
