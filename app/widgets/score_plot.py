"""Per-slice score curve: where in the volume the model sees something; a click jumps to that slice.

The curve is the result's slice scores (the map's maximum over tissue) in the result's unit, and the axis
says which; the dashed line is the calibrated plain threshold, drawn only for calibrated results (a raw
score has no threshold).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget


class ScorePlot(QWidget):
    """A pyqtgraph curve of slice scores with a marker at the current slice and an optional threshold line.

    ``unit_label`` is the left axis's text (the unit: ``normal quantile``), ``title`` the model it shows.

    Signals:
        slice_clicked(int): the scored slice nearest to a click.
    """

    slice_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        import pyqtgraph as pg

        super().__init__(parent)
        self.plot = pg.PlotWidget(background=None)
        self.plot.setMinimumHeight(120)
        self.plot.setLabel("bottom", "slice")
        self.plot.setLabel("left", "score")
        self.unit_label = "score"
        self.title = ""
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.curve = self.plot.plot([], [], pen=pg.mkPen("#f5a623", width=2), symbol="o", symbolSize=5,
                                    symbolBrush="#f5a623")
        self.cursor = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#4a90e2", width=1))
        self.threshold = pg.InfiniteLine(angle=0, movable=False, pen=pg.mkPen("#d0021b", style=Qt.PenStyle.DashLine),
                                         label="", labelOpts={"position": 0.02, "color": "#d0021b", "anchors":
                                                              [(0, 1), (0, 1)]})
        self.plot.addItem(self.cursor)
        self.plot.addItem(self.threshold)
        self.threshold.setVisible(False)
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self._z = np.zeros(0, int)

    def sizeHint(self) -> QSize:
        """A modest preferred size: in a scrolling dock, pyqtgraph's own (about 640×480) made the dock scroll."""
        return QSize(240, 140)

    def set_scores(self, scores: Mapping[int, float], threshold: float | None = None, unit: str = "score",
                   model: str = "") -> None:
        """Show ``{z: score}`` (any order) in ``unit`` and the calibrated threshold line when given."""
        z = np.array(sorted(scores), dtype=int)
        self._z = z
        self.curve.setData(z.astype(float), np.array([scores[int(k)] for k in z], dtype=float))
        self.unit_label = unit
        self.title = model
        self.plot.setLabel("left", unit)
        self.plot.setTitle(f"{model} · slice maximum" if model else None, size="9pt")
        self.threshold.setVisible(threshold is not None)
        if threshold is not None:
            self.threshold.setPos(float(threshold))
            self.threshold.label.setFormat(f"threshold {float(threshold):.3f}")

    def clear(self) -> None:
        """Nothing scored by the loaded model: an empty curve and a plain axis."""
        self.set_scores({})

    def set_range(self, n_slices: int) -> None:
        """Span the slice axis over a volume of ``n_slices`` slices."""
        self.plot.setXRange(-0.5, max(n_slices, 1) - 0.5, padding=0.02)

    def set_current(self, z: int) -> None:
        self.cursor.setPos(float(z))

    def nearest_slice(self, x: float) -> int | None:
        """The scored slice closest to plot position ``x`` (None before anything is scored)."""
        if self._z.size == 0:
            return None
        return int(self._z[np.argmin(np.abs(self._z - x))])

    def click_at(self, x: float) -> None:
        """Act as if the user clicked at plot position ``x`` (also used by tests)."""
        z = self.nearest_slice(x)
        if z is not None:
            self.slice_clicked.emit(z)

    def _on_click(self, event) -> None:  # pyqtgraph's MouseClickEvent
        vb = self.plot.getPlotItem().getViewBox()
        if not vb.sceneBoundingRect().contains(event.scenePos()):
            return
        self.click_at(vb.mapSceneToView(event.scenePos()).x())
