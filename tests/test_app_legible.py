"""A legible result (issue #19): distinct mask colours, the most anomalous slice first, marked curve and table.

Real Qt and OpenGL under Xvfb (``xvfb-run -a -s '-screen 0 1366x768x24'``; never QT_QPA_PLATFORM=offscreen):
the colours are read back from the rendered canvas, not only from the layers' settings. The scan is six
phantom slices, normal except two with a bright lesion, scored with a tiny calibrated PatchCore, so the
most anomalous slice is one of the lesion slices and far from where the viewer starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume
from tests.fakes import calibrated_patchcore
from tests.phantoms import phantom_slices

pytestmark = pytest.mark.gui

LESION_SLICES = (4, 5)
N = 6


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrated_patchcore(6, modality="MR").save(tmp_path_factory.mktemp("data") / "models" / "legible")


@pytest.fixture
def env(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bundle, with a fresh data folder per test: marks (the case library) do not leak between tests."""
    monkeypatch.setenv("ANOMALENS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ANOMALENS_CONFIG_DIR", str(tmp_path / "config"))
    return bundle


def scan() -> tuple[Volume, np.ndarray]:
    """Six slices, a lesion on ``LESION_SLICES`` only; the reference mask holds the lesions."""
    normal, _ = phantom_slices(N, 64, seed=7)
    sick, masks = phantom_slices(N, 64, seed=5, lesion=True)
    data, ref = normal.copy(), np.zeros((N, 64, 64), np.uint8)
    for z in LESION_SLICES:
        data[z], ref[z] = sick[z], masks[z]
    return Volume(data, spacing=(0.9, 0.9, 3.0), modality="MR"), ref


def _wait(qtbot: Any, widget: Any) -> None:
    qtbot.waitUntil(lambda: not widget.jobs.running, timeout=30_000)


def _viewer(make_napari_viewer: Any, with_reference: bool = True) -> tuple[Any, Any, Any]:
    from anomalens.app.reader import ROLE_KEY, image_layer_data

    viewer = make_napari_viewer(show=True)
    vol, ref = scan()
    data, kwargs, _ = image_layer_data(vol, name="phantom")
    image = viewer.add_image(data, **kwargs)
    reference = viewer.add_labels(ref, name="phantom lesion", scale=image.scale, opacity=0.5,
                                  metadata={ROLE_KEY: "lesion"}) if with_reference else None
    return viewer, image, reference


def _scored(make_napari_viewer: Any, qtbot: Any, bundle: Path, with_reference: bool = True,
            docks: tuple[str, ...] = ()) -> tuple[Any, Any, Any, dict[str, Any]]:
    """A viewer with the phantom, its reference mask, the Detector dock (and ``docks``), the volume scored."""
    from anomalens.app.results import current_index, goto_index
    from anomalens.app.widgets.calibration import CalibrationWidget
    from anomalens.app.widgets.detector import DetectorWidget
    from anomalens.app.widgets.scr import ScrWidget

    viewer, image, reference = _viewer(make_napari_viewer, with_reference)
    made = {"Detector": DetectorWidget(viewer)}
    for name in docks:
        made[name] = {"SCR": ScrWidget, "Calibration": CalibrationWidget}[name](viewer)
    for name, w in made.items():
        viewer.window.add_dock_widget(w, name=name)
    det_w = made["Detector"]
    assert det_w.set_bundle(bundle)
    _wait(qtbot, det_w)
    goto_index(viewer, image, 0)
    assert current_index(viewer, image) == 0
    assert det_w.score_volume()
    _wait(qtbot, det_w)
    return viewer, image, reference, made


def _render(viewer: Any, only: Any) -> np.ndarray:
    """The canvas as drawn with only the layer ``only`` visible, canvas texts hidden (RGB)."""
    shown = {lyr.name: lyr.visible for lyr in viewer.layers}
    texts = {k: o.visible for k, o in viewer.canvas.overlays.items()}
    for lyr in viewer.layers:
        lyr.visible = lyr is only
    for o in viewer.canvas.overlays.values():
        o.visible = False
    try:
        return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)
    finally:
        for lyr in viewer.layers:
            lyr.visible = shown[lyr.name]
        for k, o in viewer.canvas.overlays.items():
            o.visible = texts[k]


def _drawn(rgb: np.ndarray) -> np.ndarray:
    return rgb[rgb.sum(-1) > 60]


def test_prediction_and_reference_masks_are_drawn_in_distinct_colours(make_napari_viewer: Any, qtbot: Any,
                                                                      env: Path) -> None:
    from anomalens.app.results import current_index
    from anomalens.app.state import get_state

    viewer, image, reference, docks = _scored(make_napari_viewer, qtbot, env)
    res = get_state(viewer).results
    mask = viewer.layers[res.mask_name]
    z = current_index(viewer, image)
    assert mask.data[z].any() and reference.data[z].any()  # both masks hold voxels on the shown slice

    assert mask.contour == 2 and reference.contour == 0  # the prediction is an outline, the reference filled
    pred_rgba, ref_rgba = mask.get_color(1), reference.get_color(1)
    assert np.abs(np.asarray(pred_rgba)[:3] - np.asarray(ref_rgba)[:3]).max() > 0.5
    assert np.allclose(mask.get_color(7), pred_rgba)  # a hand edit with another label keeps the mask's colour

    # what is rendered: the model's mask in cyan (blue > red), the reference in yellow (red > blue)
    pred_px, ref_px = _drawn(_render(viewer, mask)), _drawn(_render(viewer, reference))
    assert len(pred_px) and len(ref_px)
    pred_mean, ref_mean = pred_px.mean(0), ref_px.mean(0)
    assert pred_mean[2] > pred_mean[0] + 80 and ref_mean[0] > ref_mean[2] + 40, (pred_mean, ref_mean)
    # an outline covers fewer pixels than the same mask filled
    mask.contour = 0
    filled = len(_drawn(_render(viewer, mask)))
    mask.contour = 2
    assert len(pred_px) < 0.8 * filled

    legend = docks["Detector"].mask_legend
    assert "phantom lesion (reference)" in legend.text() and "mask (model)" in legend.text()
    # the canvas names the masks too, each line in its mask's colour
    from anomalens.app.results import KEY_OVERLAYS

    pred_key, ref_key = (viewer.canvas.overlays[KEY_OVERLAYS[k]] for k in ("prediction", "reference"))
    assert pred_key.visible and "model's mask" in pred_key.text
    assert ref_key.visible and "reference lesion" in ref_key.text and "phantom" not in ref_key.text  # no file name
    assert np.allclose(np.asarray(pred_key.color)[:3], np.asarray(pred_rgba)[:3], atol=0.01)
    assert np.allclose(np.asarray(ref_key.color)[:3], np.asarray(ref_rgba)[:3], atol=0.01)


def test_scoring_the_volume_shows_the_most_anomalous_slice_and_score_slice_stays(make_napari_viewer: Any,
                                                                                  qtbot: Any, env: Path) -> None:
    from anomalens.app.results import current_index, goto_index
    from anomalens.app.state import get_state

    viewer, image, _, docks = _scored(make_napari_viewer, qtbot, env, with_reference=False, docks=("SCR",))
    res = get_state(viewer).results
    top = max(res.slices.values(), key=lambda s: s.score).z
    assert top in LESION_SLICES  # not where scoring started (slice 0)
    assert current_index(viewer, image) == top
    # the threshold slider spans the calibrated point closely and reaches the scan's highest score
    slider, t = docks["SCR"].threshold_slider, get_state(viewer).calibrated_scr().threshold
    highest = max(res.slice_scores.values())
    assert slider.minimum() == pytest.approx(t - 0.1, abs=1e-3) and slider.maximum() >= highest
    assert slider.maximum() <= max(t + 0.1, highest * 1.01) + 1e-3

    goto_index(viewer, image, 1)
    assert docks["Detector"].score_slice()
    _wait(qtbot, docks["Detector"])
    assert current_index(viewer, image) == 1


def test_the_curve_marks_exactly_the_flagged_and_the_marked_normal_slices(make_napari_viewer: Any, qtbot: Any,
                                                                          env: Path) -> None:
    from anomalens.app.results import current_index, goto_index
    from anomalens.app.state import get_state

    viewer, image, _, docks = _scored(make_napari_viewer, qtbot, env, docks=("Calibration", "SCR"))
    res = get_state(viewer).results
    plot = docks["Detector"].plot
    flagged = sorted(s.z for s in res.slices.values() if s.flagged)
    assert set(LESION_SLICES) <= set(flagged) and len(flagged) < N
    assert sorted(plot.flagged_slices()) == flagged
    assert plot.marked_slices() == []

    assert docks["Calibration"].mark_range(0, 2) == [0, 1, 2]
    assert plot.marked_slices() == []  # the curve follows a turn later: the canvas answers first
    qtbot.waitUntil(lambda: plot.marked_slices() == [0, 1, 2], timeout=2_000)
    assert "marked normal (3)" in plot.legend_text() and f"flagged ({len(flagged)})" in plot.legend_text()
    assert plot.threshold.isVisible() and plot.unit_label == "normal quantile"

    # a SCR re-cut that empties a flagged slice removes its dot
    z = flagged[0]
    goto_index(viewer, image, z)
    scr = docks["SCR"]
    scr.threshold_slider.setValue(scr.threshold_slider.maximum())
    qtbot.waitUntil(lambda: not viewer.layers[res.mask_name].data[z].any() and z not in plot.flagged_slices(),
                    timeout=5_000)
    assert current_index(viewer, image) == z


def test_the_table_lists_every_scored_slice_and_a_click_shows_it(make_napari_viewer: Any, qtbot: Any,
                                                                 env: Path) -> None:
    from qtpy.QtCore import QPoint, Qt

    from anomalens.app.results import current_index
    from anomalens.app.state import get_state
    from anomalens.app.widgets.slice_table import format_ml

    viewer, image, _, docks = _scored(make_napari_viewer, qtbot, env, with_reference=False)
    res = get_state(viewer).results
    det_w = docks["Detector"]
    table = det_w.table
    det_w.views.setCurrentWidget(table)
    want = [(str(s.index), f"{s.score:.3f}", "yes" if s.flagged else "no", format_ml(s.volume_ml))
            for s in sorted(res.slices.values(), key=lambda s: s.z)]
    assert table.rows() == want and len(want) == N
    assert [table.table.horizontalHeaderItem(c).text() for c in range(4)] == ["slice", "score", "flagged", "vol. mL"]
    assert "normal quantile" in table.caption.text()
    assert table.table.currentRow() == table.row_of(current_index(viewer, image))  # the shown slice is selected

    table.sort_by_score()
    scores = [float(r[1]) for r in table.rows()]
    assert scores == sorted(scores, reverse=True)
    # a real click on the last row (the least anomalous slice) shows it
    row = table.table.rowCount() - 1
    z = table.z_at(row)
    assert z != current_index(viewer, image)
    rect = table.table.visualItemRect(table.table.item(row, 0))
    qtbot.mouseClick(table.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert current_index(viewer, image) == z
    # the arrow keys walk the worklist and the slice follows (only Return and clicks did)
    table.table.setFocus()
    qtbot.keyClick(table.table, Qt.Key.Key_Up)
    assert table.table.currentRow() == row - 1 and current_index(viewer, image) == table.z_at(row - 1) != z
    assert not table.table.alternatingRowColors()  # napari's dark theme made the alternate rows unreadable

    # a first click on a header sorts the worklist's way: slice numbers up, scores and volumes highest first
    header = table.table.horizontalHeader()

    def click(column: int) -> list[float]:
        x = header.sectionViewportPosition(column) + header.sectionSize(column) // 2
        qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, header.height() // 2))
        qtbot.wait(20)
        return [float(r[column]) for r in table.rows()]

    slices = click(0)  # from the score column to the slice column: numbers up
    assert slices == sorted(slices)
    scores = click(1)  # then back to the score column: highest first (Qt's first click sorted the lowest first)
    assert scores == sorted(scores, reverse=True)
    assert click(1) == sorted(scores)  # a second click turns it


def test_the_scr_status_line_follows_the_shown_slice(make_napari_viewer: Any, qtbot: Any, env: Path) -> None:
    from anomalens.app.results import goto_index
    from anomalens.app.state import get_state

    viewer, image, _, docks = _scored(make_napari_viewer, qtbot, env, with_reference=False, docks=("SCR",))
    res = get_state(viewer).results
    mask = viewer.layers[res.mask_name].data
    counts = {z: int(np.count_nonzero(mask[z])) for z in range(N)}
    a = max(counts, key=counts.get)
    b = min(counts, key=counts.get)
    assert counts[a] != counts[b]
    status = docks["SCR"].status
    for z in (a, b, a):
        goto_index(viewer, image, z)
        assert status.text().startswith(f"slice {z}: {counts[z]} pixels flagged"), status.text()


def test_the_curve_and_the_colour_ramp_follow_the_scr_threshold(make_napari_viewer: Any, qtbot: Any,
                                                                  env: Path) -> None:
    """Moving SCR's threshold re-cut the mask, but the curve kept "threshold 0.990" and the colour ramp its
    start, so the outline ran through tissue drawn in no colour."""
    from anomalens.app.results import RAMP_BELOW
    from anomalens.app.state import get_state

    viewer, _, _, docks = _scored(make_napari_viewer, qtbot, env, with_reference=False, docks=("SCR",))
    res = get_state(viewer).results
    heat, line = viewer.layers[res.heatmap_name], docks["Detector"].plot.threshold
    assert line.value() == pytest.approx(res.threshold)
    assert heat.contrast_limits[0] == pytest.approx(res.threshold - RAMP_BELOW, abs=1e-6)
    scored = tuple(heat.contrast_limits)  # the ramp scoring set
    slider = docks["SCR"].threshold_slider
    lower = slider.minimum() + 0.25 * (res.threshold - slider.minimum())
    slider.setValue(lower)
    moved = get_state(viewer).scr.threshold
    assert moved < res.threshold - 0.01
    assert line.value() == pytest.approx(moved) and f"{moved:.3f}" in line.label.format
    assert heat.contrast_limits[0] == pytest.approx(moved - RAMP_BELOW, abs=1e-6)
    top = heat.contrast_limits[1]
    slider.setValue(slider.maximum())  # a threshold near the top of the ramp …
    docks["SCR"].reset()  # … then back to the calibrated point: the line and the whole ramp go back
    assert line.value() == pytest.approx(res.threshold)
    assert heat.contrast_limits[0] == pytest.approx(res.threshold - RAMP_BELOW, abs=1e-6)
    assert heat.contrast_limits[1] == pytest.approx(top, abs=1e-6)
    assert tuple(heat.contrast_limits) == pytest.approx(scored, abs=1e-6)  # Reset left 1.04 where scoring set 1.00
    _wait(qtbot, docks["SCR"])

    # a window the reader sets on the heatmap (napari's contrast slider) stays through SCR moves and scoring
    heat.contrast_limits = (0.5, 1.2)
    slider.setValue(lower)
    assert line.value() == pytest.approx(get_state(viewer).scr.threshold)  # the curve still follows
    assert tuple(heat.contrast_limits) == pytest.approx((0.5, 1.2))
    assert docks["Detector"].score_slice()
    _wait(qtbot, docks["Detector"])
    assert tuple(heat.contrast_limits) == pytest.approx((0.5, 1.2))


def test_marking_a_flagged_slice_normal_warns_with_the_way_back(make_napari_viewer: Any, qtbot: Any,
                                                                env: Path) -> None:
    from anomalens.app.results import goto_index
    from anomalens.app.state import get_state

    viewer, image, _, docks = _scored(make_napari_viewer, qtbot, env, with_reference=False, docks=("Calibration",))
    res, cal = get_state(viewer).results, docks["Calibration"]
    flagged = [z for z, s in res.slices.items() if s.flagged]
    calm = [z for z, s in res.slices.items() if not s.flagged]
    assert flagged and calm
    goto_index(viewer, image, calm[0])
    assert cal.mark_current_slice() == [calm[0]] and "⚠" not in cal.status.text()
    goto_index(viewer, image, flagged[0])
    assert cal.mark_current_slice() == [flagged[0]]
    assert f"⚠ the model flags slice {flagged[0]}" in cal.status.text() and "Shift+N" in cal.status.text()
    # a range across flagged slices (and a lasso, through the same path) warns too
    assert cal.undo()
    new = cal.mark_range(min(flagged), max(flagged))
    assert set(flagged) <= set(new) and "⚠ the model flags slice" in cal.status.text()


def test_the_canvas_marks_a_slice_marked_normal(make_napari_viewer: Any, qtbot: Any, env: Path) -> None:
    from anomalens.app.results import goto_index
    from anomalens.app.widgets.calibration import MARK_OVERLAY, CalibrationWidget, _overlay_nodes, _qt_canvas

    viewer, image, _ = _viewer(make_napari_viewer, with_reference=False)
    cal = CalibrationWidget(viewer)
    viewer.window.add_dock_widget(cal, name="Calibration")
    assert f"{N} slices, MR" in cal.study_label.text()  # the modality as a reader says it
    overlay = viewer.canvas.overlays[MARK_OVERLAY]

    def green() -> int:
        rgb = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
        return int(((rgb[..., 1] > 150) & (rgb[..., 0] < 110) & (rgb[..., 2] < 120)).sum())

    goto_index(viewer, image, 2)
    assert not overlay.visible and not image.bounding_box.visible
    # the label and the frame were drawn once, unseen, before any mark (their first draw is costly: GL
    # programs, glyphs); vispy's nodes are then hidden again and the overlays never said they were shown
    [label] = _overlay_nodes(_qt_canvas(viewer), overlay)
    [frame] = _overlay_nodes(_qt_canvas(viewer), image.bounding_box, image)
    qtbot.waitUntil(lambda: not label.visible and not frame.visible and label.opacity == 1.0, timeout=5_000)
    assert set("marked normal (slice 0123456789)") - {" "} <= set(label._font._glyphs)
    assert not overlay.visible and not image.bounding_box.visible and overlay.text == ""
    unmarked = green()
    assert cal.mark_current_slice() == [2]
    assert overlay.visible and "marked normal" in overlay.text
    assert image.bounding_box.visible and image.bounding_box.points is False
    assert green() > unmarked + 50  # the frame and the label are drawn
    goto_index(viewer, image, 3)
    assert not overlay.visible and not image.bounding_box.visible
    goto_index(viewer, image, 2)
    assert overlay.visible
    cal.unmark_current_slice()
    assert not overlay.visible and not image.bounding_box.visible


def test_the_demo_opens_on_the_most_anomalous_slice_with_its_reference(make_napari_viewer: Any, qtbot: Any,
                                                                       env: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalens.app.desktop import setup_viewer, show_demo
    from anomalens.app.reader import ROLE_KEY
    from anomalens.app.recent import RecentFiles
    from anomalens.app.results import current_index
    from anomalens.app.state import get_state
    from anomalens.engine.demo import DemoOutput
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.scoring import score_scan

    vol, ref = scan()
    vol.metadata["sample"] = "phantom"
    result = score_scan(load_bundle(env), vol, np.arange(1, N))
    out = DemoOutput(result=result, metrics={}, model=env)
    monkeypatch.setattr("anomalens.engine.demo.run_demo", lambda **_: out)
    monkeypatch.setattr("anomalens.app.samples.load_sample", lambda name: [
        (vol.array, {"name": name}, "image"),
        (ref, {"name": f"{name} lesion", "scale": vol.spacing_zyx, "metadata": {ROLE_KEY: "lesion"}}, "labels")])

    viewer = make_napari_viewer(show=True)
    setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))
    show_demo(viewer)
    res = get_state(viewer).results
    top = result.most_anomalous()
    assert top in LESION_SLICES
    assert current_index(viewer, viewer.layers["brain1"]) == top
    lesion = viewer.layers["phantom lesion"]
    assert np.array_equal(lesion.data, ref) and lesion.contour == 0
    names = [lyr.name for lyr in viewer.layers]
    assert names.index("phantom lesion") < names.index(res.mask_name)  # the model's outline on top
    assert viewer.layers[res.mask_name].contour == 2
    table = viewer.window.anomalens_docks["Detector"].table
    assert [int(r[0]) for r in table.rows()] == list(range(1, N))


@pytest.mark.parametrize("level", [0.99, 0.2])
def test_the_threshold_label_stays_inside_the_plot(qtbot: Any, level: float) -> None:
    """A calibrated curve runs along 1.0 with its threshold at 0.99, by the frame: its label must not be cut."""
    from qtpy.QtWidgets import QApplication

    from anomalens.app.widgets.score_plot import ScorePlot

    plot = ScorePlot()
    qtbot.addWidget(plot)
    plot.resize(320, 150)  # the Detector dock's curve on a 1,366×768 screen
    plot.show()
    high = {10: 0.96, 11: 0.97, 12: 0.995, 13: 0.996, 14: 0.985, 15: 0.997, 16: 0.998, 17: 0.9999, 18: 0.83}
    scores = high if level > 0.5 else {z: 0.1 * z for z in range(11)}  # the demo's curve; a line near the foot
    plot.set_scores(scores, threshold=level, unit="normal quantile", model="m")
    for _ in range(5):
        QApplication.processEvents()
    label, box = plot.threshold.label, plot.plot.getViewBox()
    shown = label.mapRectToScene(label.boundingRect())
    frame = box.mapRectToScene(box.boundingRect())
    assert label.isVisible() and label.toPlainText() == f"threshold {level:.3f}"
    assert frame.top() - 1 <= shown.top() and shown.bottom() <= frame.bottom() + 1, (shown, frame)


@pytest.mark.parametrize("n", [1, 3, 25])
def test_the_slice_axis_counts_whole_slices(qtbot: Any, n: int) -> None:
    """A one-slice picture's curve had an axis "slice (x0.001)" running −400…400."""
    from qtpy.QtWidgets import QApplication

    from anomalens.app.widgets.score_plot import ScorePlot

    plot = ScorePlot()
    qtbot.addWidget(plot)
    plot.resize(320, 150)
    plot.show()
    plot.set_range(n)
    plot.set_scores({0: 1.2}, threshold=0.99, unit="normal quantile", model="m")
    for _ in range(5):
        QApplication.processEvents()
    axis = plot.plot.getAxis("bottom")
    assert axis.labelText == "slice" and axis.labelUnitPrefix == "" and axis.autoSIPrefixScale == 1.0
    lo, hi = plot.plot.getViewBox().viewRange()[0]
    drawn = axis._tickLevels  # the fixed ticks pyqtgraph draws, else its own (AxisItem.generateDrawSpecs)
    levels = [[v for v, _ in level] for level in drawn] if drawn is not None else \
        [level[1] for level in axis.tickValues(lo, hi, axis.width())]
    ticks = [v for level in levels for v in level if lo <= v <= hi]
    assert ticks and all(float(v).is_integer() for v in ticks), ticks


@pytest.mark.parametrize("canvas_width", [720, 500])
def test_the_canvas_texts_never_run_into_each_other_or_the_letters(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                                   canvas_width: int) -> None:
    """The snapshot a report gets: caption, unit, colour bar, mask key and A/P/R/L letters each in the clear.

    The caption sat bottom left, where its unit line ran under the "P" on a 717-px canvas (1,366×768) and into
    the mask key on a narrower one (napari with its layer list and docks open).
    """
    from qtpy.QtWidgets import QApplication

    from anomalens.app.desktop import overlapping_overlays, overlay_boxes
    from anomalens.app.orientation import install_orientation_overlay

    viewer, _, _, _ = _scored(make_napari_viewer, qtbot, env)
    install_orientation_overlay(viewer)
    canvas = viewer.window._qt_viewer.canvas.native
    window = viewer.window._qt_window
    window.resize(window.width() + canvas_width - canvas.width(), 700)
    for _ in range(5):
        QApplication.processEvents()
    assert abs(canvas.width() - canvas_width) <= 40, canvas.width()
    boxes = overlay_boxes(viewer)
    assert {"text", "anomalens_key_prediction", "anomalens_key_reference"} <= set(boxes), boxes
    assert any(name.endswith(":ColorBarOverlay") for name in boxes), boxes
    assert any("orient" in name for name in boxes), boxes
    assert overlapping_overlays(viewer) == [], overlapping_overlays(viewer)


def test_marking_a_slice_the_reference_lesion_covers_warns(make_napari_viewer: Any, qtbot: Any, env: Path) -> None:
    """A slice holding the expert's lesion marked normal said nothing unless the model flagged it too."""
    import dataclasses

    from anomalens.app.results import goto_index
    from anomalens.app.state import get_state

    viewer, image, _, docks = _scored(make_napari_viewer, qtbot, env, docks=("Calibration",))
    cal, res = docks["Calibration"], get_state(viewer).results
    z = LESION_SLICES[0]
    res.slices[z] = dataclasses.replace(res.slices[z], flagged=False)  # say the model missed it
    goto_index(viewer, image, z)
    assert cal.mark_current_slice() == [z]
    assert f"⚠ the reference lesion lies on slice {z}: a fine-tune will learn it as normal" in cal.status.text()


def test_an_inserted_slice_says_so_on_the_canvas(make_napari_viewer: Any, qtbot: Any, env: Path) -> None:
    """A slice a DICOM series lacks is read as an empty slice; on screen it was plain black, nothing said why."""
    from anomalens.app.gaps import GAP_OVERLAY
    from anomalens.app.reader import image_layer_data
    from anomalens.app.results import goto_index
    from anomalens.app.widgets.detector import DetectorWidget

    viewer, image, _ = _viewer(make_napari_viewer, with_reference=False)
    vol = image.metadata["anomalens_volume"]
    gappy = Volume(vol.array.copy(), spacing=vol.spacing, modality=vol.modality,
                   metadata={**vol.metadata, "gap_slices": [2]})
    data, kwargs, _ = image_layer_data(gappy, name="gappy")
    viewer.layers.remove(image)
    layer = viewer.add_image(data, **kwargs)
    dock = DetectorWidget(viewer)
    viewer.window.add_dock_widget(dock, name="Detector")
    goto_index(viewer, layer, 1)
    overlays = viewer.canvas.overlays
    assert GAP_OVERLAY not in overlays or not overlays[GAP_OVERLAY].visible
    goto_index(viewer, layer, 2)
    label = overlays[GAP_OVERLAY]
    assert label.visible and label.text.startswith("slice 2:\nnot in the series"), label.text
    # clear of the edge letters (one long line ran under the "A"), down to a 500-px canvas
    from qtpy.QtWidgets import QApplication

    from anomalens.app.desktop import overlapping_overlays, overlay_boxes
    from anomalens.app.orientation import install_orientation_overlay

    install_orientation_overlay(viewer)
    canvas, window = viewer.window._qt_viewer.canvas.native, viewer.window._qt_window
    for _ in range(3):  # the docks settle their widths after the first resize
        window.resize(window.width() + 500 - canvas.width(), 700)
        for _ in range(5):
            QApplication.processEvents()
    assert abs(canvas.width() - 500) <= 40, (canvas.width(), window.width())
    assert GAP_OVERLAY in overlay_boxes(viewer) and overlapping_overlays(viewer) == [], overlapping_overlays(viewer)
    goto_index(viewer, layer, 3)
    assert not label.visible


def test_closing_the_scored_study_clears_its_status_line(make_napari_viewer: Any, qtbot: Any, env: Path) -> None:
    """The Detector dock kept "dicom_full · lorentz v1: 1 slice scored … ⚠ trained on MR, this is CT" over the
    next study, which had no result."""
    viewer, _, _, docks = _scored(make_napari_viewer, qtbot, env, with_reference=False)
    status = docks["Detector"].status
    assert "scored" in status.text()
    for lyr in list(viewer.layers):
        viewer.layers.remove(lyr)
    assert status.text() == ""


def test_long_warnings_give_their_first_clause_in_the_status_line() -> None:
    """Two whole warnings pushed the slice curve out of the Detector dock at 1,366×768."""
    from anomalens.app.widgets.detector import WARNING_CHARS, short_warning

    gap = ("slices missing between positions 12.50 and 17.50 mm along the slice normal: 1 empty slice was "
           "inserted (z indices 6) so every slice lies at its true position; they are not part of the scan")
    assert short_warning(gap) == "slices missing between positions 12.50 and 17.50 mm along the slice normal…"
    assert short_warning("a short warning: kept whole") == "a short warning: kept whole"
    long = "x" * 300
    assert short_warning(long) == "x" * (WARNING_CHARS - 1) + "…"
