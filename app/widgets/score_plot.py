"""Per-slice score curve: where in the volume the model sees something; a click jumps to that slice.

The curve is the result's slice scores (the map's maximum over tissue) in the result's unit, and the axis
says which; the dashed line is the threshold the mask is cut at (the calibrated plain one, or SCR's as its
slider moved it), drawn only for calibrated results (a raw score has no threshold). Flagged slices (the
mask holds voxels there) are filled red dots on the curve; slices marked normal in the Calibration dock
are green bands, scored or not, so the calibration loop can be read off the curve: a red dot inside a
green band is a false positive on a slice the user called normal. A one-line legend under the plot says
which mark is which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from qtpy.QtCore import QSize, Qt, Signal
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

CURVE_COLOR = "#f5a623"
FLAGGED_COLOR = "#ff3b30"
MARKED_COLOR = "#2ecc40"
THRESHOLD_COLOR = "#d0021b"
#: Alpha (0-255) of a marked-normal band: visible under the curve, not hiding it.
MARKED_ALPHA = 70


def runs(values: Iterable[int]) -> list[tuple[int, int]]:
    """``[0, 1, 2, 5]`` → ``[(0, 2), (5, 5)]``: contiguous runs, so a marked range is one band, not many."""
    out: list[tuple[int, int]] = []
    for v in sorted({int(x) for x in values}):
        if out and v == out[-1][1] + 1:
            out[-1] = (out[-1][0], v)
        else:
            out.append((v, v))
    return out


def curve_points(scores: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the curve, a NaN between two scored slices with unscored ones between them.

    Drawn with ``connect="finite"``, the line breaks there: it had run straight across an unscored slice
    as if that slice's score lay on it.
    """
    z = sorted(int(k) for k in scores)
    xs: list[float] = []
    ys: list[float] = []
    for i, k in enumerate(z):
        if i and k - z[i - 1] > 1:
            xs.append((k + z[i - 1]) / 2)
            ys.append(np.nan)
        xs.append(float(k))
        ys.append(float(scores[k]))
    return np.asarray(xs, float), np.asarray(ys, float)


#: Where the threshold's label hangs (pyqtgraph: the first anchor while the line is in the upper half of the
#: view, the second in the lower): under the line near the top, over it near the bottom. A calibrated curve
#: runs along 1.0 with its threshold just under it, where a label over the line was cut in half by the frame.
LABEL_ANCHORS = [(0, 0), (0, 1)]


class ScorePlot(QWidget):
    """A pyqtgraph curve of slice scores with a marker at the current slice and an optional threshold line.

    ``unit_label`` is the left axis's text (the unit: ``normal quantile``), ``title`` the model it shows.
    ``flagged_slices()`` and ``marked_slices()`` read back what is drawn (red dots, green bands).

    Signals:
        slice_clicked(int): the scored slice nearest to a click.
    """

    slice_clicked = Signal(int)
    #: Up to this many slices, every slice gets its own tick on the slice axis.
    SMALL_AXIS = 12

    def __init__(self, parent: QWidget | None = None) -> None:
        import pyqtgraph as pg

        super().__init__(parent)
        self.plot = pg.PlotWidget(background=None)
        self.plot.setMinimumHeight(120)
        self.plot.setLabel("bottom", "slice")
        self.plot.setLabel("left", "score")
        for side in ("bottom", "left"):  # a one-slice picture's axis read "slice (x0.001)", −400…400
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.unit_label = "score"
        self.title = ""
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.curve = self.plot.plot([], [], pen=pg.mkPen(CURVE_COLOR, width=2), symbol="o", symbolSize=5,
                                    symbolBrush=CURVE_COLOR)
        self.flagged = pg.ScatterPlotItem([], [], symbol="o", size=10, brush=pg.mkBrush(FLAGGED_COLOR),
                                          pen=pg.mkPen("w", width=1))
        self.flagged.setZValue(10)
        self.cursor = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#4a90e2", width=1))
        self.threshold = pg.InfiniteLine(angle=0, movable=False,
                                         pen=pg.mkPen(THRESHOLD_COLOR, style=Qt.PenStyle.DashLine),
                                         label="", labelOpts={"position": 0.02, "color": THRESHOLD_COLOR, "anchors":
                                                              LABEL_ANCHORS, "fill": (0, 0, 0, 140)})
        self.plot.addItem(self.flagged)
        self.plot.addItem(self.cursor)
        self.plot.addItem(self.threshold)
        self.threshold.setVisible(False)
        self._bands: list = []
        self._marked: list[int] = []
        self._flagged = np.zeros(0, int)
        self.plot.scene().sigMouseClicked.connect(self._on_click)
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        self.legend.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.legend)
        self._z = np.zeros(0, int)
        self._scores: dict[int, float] = {}
        self._update_legend()

    def sizeHint(self) -> QSize:
        """A modest preferred size: in a scrolling dock, pyqtgraph's own (about 640×480) made the dock scroll."""
        return QSize(240, 140)

    def hasHeightForWidth(self) -> bool:
        """No: the curve takes the room the dock has.

        With the wrapped legend the layout asked this widget's height for the dock's width, which adds up
        pyqtgraph's own 480-pixel hint: the Detector dock grew to 800 px and the curve's lower half scrolled
        out of a 444-px laptop dock.
        """
        return False

    def set_scores(self, scores: Mapping[int, float], threshold: float | None = None, unit: str = "score",
                   model: str = "", flagged: Iterable[int] = ()) -> None:
        """Show ``{z: score}`` (any order) in ``unit``, the threshold line when given, red dots on ``flagged``.

        Only flagged slices that are scored get a dot (a dot sits on the curve).
        """
        z = np.array(sorted(scores), dtype=int)
        self._z = z
        self._scores = {int(k): float(scores[int(k)]) for k in z}
        self.curve.setData(*curve_points(self._scores), connect="finite")
        self.unit_label = unit
        self.title = model
        self.plot.setLabel("left", unit)
        self.plot.setTitle(f"{model} · slice maximum" if model else None, size="9pt")
        self.set_threshold(threshold)
        self.set_flagged(flagged)

    def set_threshold(self, threshold: float | None) -> None:
        """Draw the dashed threshold line at ``threshold`` (hidden for None: a raw score has none)."""
        self.threshold.setVisible(threshold is not None)
        if threshold is not None:
            self.threshold.setPos(float(threshold))
            self.threshold.label.setFormat(f"threshold {float(threshold):.3f}")

    def set_flagged(self, flagged: Iterable[int]) -> None:
        """Fill the dots of the scored slices in ``flagged`` red (the mask holds voxels there)."""
        fz = np.array(sorted({int(k) for k in flagged} & set(self._scores)), dtype=int)
        self._flagged = fz
        self.flagged.setData(fz.astype(float), np.array([self._scores[int(k)] for k in fz], dtype=float))
        self._update_legend()

    def set_marked(self, marked: Iterable[int]) -> None:
        """Shade the slices marked normal (array z, scored or not) as green bands, one per contiguous run."""
        import pyqtgraph as pg

        for band in self._bands:
            self.plot.removeItem(band)
        self._bands = []
        self._marked = sorted({int(k) for k in marked})
        for a, b in runs(self._marked):
            band = pg.LinearRegionItem(values=(a - 0.45, b + 0.45), orientation="vertical", movable=False,
                                       brush=pg.mkBrush(*_rgb(MARKED_COLOR), MARKED_ALPHA),
                                       pen=pg.mkPen(None))
            band.setZValue(-10)
            band.setToolTip(f"marked normal: slice{'s' * (a != b)} {a}" + (f"-{b}" if a != b else ""))
            self.plot.addItem(band)
            self._bands.append(band)
        self._update_legend()

    def flagged_slices(self) -> list[int]:
        """The z of the red dots drawn (read back from the plot item)."""
        x, _ = self.flagged.getData()
        return [round(float(v)) for v in x]

    def marked_slices(self) -> list[int]:
        """The z covered by the green bands drawn (read back from the band items)."""
        out: list[int] = []
        for band in self._bands:
            lo, hi = band.getRegion()
            out += list(range(int(np.ceil(lo)), int(np.floor(hi)) + 1))
        return out

    def legend_text(self) -> str:
        """The legend as plain text (what a reader of the dock sees, without the colour markup)."""
        import html
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.legend.text())).replace("\xa0", " ")

    def _update_legend(self) -> None:
        items = [f'<span style="color:{CURVE_COLOR}">&#9679;</span> slice maximum']
        if self._flagged.size:
            items.append(f'<span style="color:{FLAGGED_COLOR}">&#11044;</span> flagged ({self._flagged.size})')
        if self._marked:
            items.append(f'<span style="color:{MARKED_COLOR}">&#9608;</span> marked normal ({len(self._marked)})')
        if self.threshold.isVisible():
            items.append(f'<span style="color:{THRESHOLD_COLOR}">- -</span> threshold')
        self.legend.setText(" &nbsp; ".join(item.replace(" ", "&nbsp;").replace("<span&nbsp;", "<span ")
                                            for item in items))

    def clear(self) -> None:
        """Nothing scored by the loaded model: an empty curve and a plain axis (marked normals stay)."""
        self.set_scores({})

    def set_range(self, n_slices: int) -> None:
        """Span the slice axis over a volume of ``n_slices`` slices, ticked at whole slices only."""
        n = max(n_slices, 1)
        self.plot.setXRange(-0.5, n - 0.5, padding=0.02)
        # few slices: pyqtgraph's own ticks fall between them (−0.4, −0.2, … for one); many: its ticks are whole
        self.plot.getAxis("bottom").setTicks([[(float(k), str(k)) for k in range(n)]] if n <= self.SMALL_AXIS else None)

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


def _rgb(color: str) -> tuple[int, int, int]:
    c = color.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16)
