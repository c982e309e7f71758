"""The reading room: the window fits common screens, window/level presets and right-drag, keyboard shortcuts, Help.

GUI tests with real Qt/OpenGL: run under ``xvfb-run -a -s '-screen 0 1366x768x24'`` (never
QT_QPA_PLATFORM=offscreen). The screen tests start the desktop app in a child process under its own
``xvfb-run`` of each size, as a user starts ``anomalens-viewer --demo --screenshot FILE``, with the demo's
training replaced by a tiny calibrated PatchCore scoring a phantom (the real demo, minutes of CPU, runs in
the ``slow`` test). The slice slider's last stop is the orientation work's (issue #19): checked there, not here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anomalens.engine.volume import Volume, Window
from tests.fakes import calibrated_patchcore, use_model_folders
from tests.phantoms import phantom_slices

pytestmark = pytest.mark.gui

ROOT = Path(__file__).resolve().parents[1]
SCREENS = ((1366, 768), (1920, 1080))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return calibrated_patchcore(4, modality="MR").save(tmp_path_factory.mktemp("data") / "models" / "reading-fake")


@pytest.fixture
def env(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_model_folders(monkeypatch, bundle, tmp_path)


def small_demo_output(model: Path) -> Any:
    """What ``run_demo`` returns, in miniature: ``score_scan`` of a phantom with lesions on slices 1 and 4 of 6."""
    from anomalens.engine.demo import DemoOutput
    from anomalens.engine.detectors import load_bundle
    from anomalens.engine.scoring import score_scan

    normal, _ = phantom_slices(4, 64, seed=1)  # the calibration's own kind of slice: not flagged
    lesion, _ = phantom_slices(2, 64, seed=3, lesion=True)
    slices = np.stack([normal[0], lesion[0], normal[1], normal[2], lesion[1], normal[3]])
    vol = Volume(slices, spacing=(0.8, 0.8, 6.5), origin=(-10.0, 5.0, 2.0), modality="MR")
    return DemoOutput(result=score_scan(load_bundle(model), vol, np.arange(len(slices))), metrics={}, model=model)


def _ct_volume() -> Volume:
    """A phantom in Hounsfield units (air −1000, tissue ≈ 40, a bony rim) with a window in its header."""
    slices, _ = phantom_slices(4, 64, seed=7)
    hu = np.where(slices > 0, slices * 200.0 - 60.0, -1000.0).astype(np.float32)
    hu[:, :3, :] = 1200.0
    return Volume(hu, spacing=(0.7, 0.7, 5.0), modality="CT", windows=[Window(35.0, 90.0, "HEAD")])


def _desktop(viewer: Any, tmp_path: Path) -> Any:
    from anomalens.app.desktop import setup_viewer
    from anomalens.app.recent import RecentFiles

    setup_viewer(viewer, RecentFiles(tmp_path / "recent.json"))
    return viewer


def _add(viewer: Any, volume: Volume, name: str) -> Any:
    from anomalens.app.reader import image_layer_data

    data, kwargs, _ = image_layer_data(volume, name=name)
    return viewer.add_image(data, **kwargs)


def test_the_demo_opens_outside_the_slices_its_model_was_fitted_or_calibrated_on(make_napari_viewer: Any, qtbot: Any,
                                                                                   env: Path, tmp_path: Path) -> None:
    """A calibration slice's top pixel is the top of the normal range by construction: "Score volume" on the
    demo's scan opened on the vertex (a calibration slice at 1.000) instead of the lesion (0.999)."""
    import dataclasses

    from anomalens.app.desktop import show_demo_output
    from anomalens.app.results import current_index

    out = small_demo_output(env)
    ranked = sorted(out.result.slices, key=lambda s: s.score, reverse=True)
    own = (ranked[0].z,)  # say the model was fitted on the top slice
    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    res = show_demo_output(viewer, dataclasses.replace(out, normal_slices=own))
    assert res.normal_slices == frozenset(own)
    assert current_index(viewer, viewer.layers[res.layer_name]) == ranked[1].z
    status = viewer.window.anomalens_docks["Detector"].status.text()
    assert f"(slice {ranked[1].z}), not counting the 1 the model was fitted or calibrated on ({own[0]})" in status
    # the caption explains the heatmap: when it goes (Close and open, or removed by hand), so does the caption
    caption = viewer.canvas.overlays.text
    assert caption.visible and "patchcore v1" in caption.text
    viewer.layers.remove(res.heatmap_name)
    assert not caption.visible


# -- keyboard shortcuts ----------------------------------------------------------------------------------

def test_every_shortcut_is_free_in_napari_registered_and_listed_in_help(make_napari_viewer: Any, env: Path,
                                                                       tmp_path: Path, qtbot: Any) -> None:
    from napari._app_model import get_app_model
    from napari.utils.key_bindings import coerce_keybinding
    from napari.utils.shortcuts import default_shortcuts

    from anomalens.app.shortcuts import MOUSE, SHORTCUTS, ShortcutsDialog, shortcut_rows

    ours = [coerce_keybinding(s.key) for s in SHORTCUTS]
    assert len(set(ours)) == len(ours)  # no key twice
    napari_keys = {coerce_keybinding(k) for keys in default_shortcuts.values() for k in keys}
    napari_keys |= {coerce_keybinding(str(kb.keybinding)) for kb in get_app_model().keybindings}
    assert napari_keys and not napari_keys & set(ours), [str(k) for k in napari_keys & set(ours)]
    wanted = {"next_slice", "previous_slice", "next_flagged", "previous_flagged", "toggle_heatmap", "toggle_mask",
              "mark_normal", "undo_mark", "redo_mark", "next_window", "previous_window", "three_plane", "toggle_docks"}
    assert wanted <= {s.action for s in SHORTCUTS}

    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    bound = set(viewer.keymap)
    assert all(k in bound for k in ours), [s.key for s, k in zip(SHORTCUTS, ours, strict=True) if k not in bound]

    # View → Three-plane view shows its key (as a hint: napari's keymap owns it, the action has no shortcut)
    from anomalens.app.shortcuts import key_for

    view_menu = viewer.window.view_menu
    view_menu.aboutToShow.emit()
    [three] = [a for a in view_menu.actions() if a.objectName() == "anomalens_three_plane_action"]
    assert three.text().endswith("\t" + key_for("three_plane")) and three.shortcut().isEmpty()

    # Help → AnomaLens keyboard shortcuts opens the dialog built from the same table
    menu = viewer.window.help_menu
    menu.aboutToShow.emit()
    [action] = [a for a in menu.actions() if a.text().startswith("AnomaLens keyboard shortcuts")]
    action.trigger()
    dialog = viewer.window.anomalens_shortcuts_dialog
    assert isinstance(dialog, ShortcutsDialog) and dialog.isVisible()
    assert dialog.rows() == shortcut_rows() == [(s.key, s.text) for s in SHORTCUTS] + [(m.gesture, m.text)
                                                                                     for m in MOUSE]
    dialog.close()


def _press(qtbot: Any, viewer: Any, key: str) -> None:
    """Type ``key`` ("Shift+N", "PageDown") on the canvas, the way napari receives keys from the user."""
    from qtpy.QtCore import Qt

    *mods, name = key.split("+")
    modifier = Qt.KeyboardModifier.NoModifier
    for m in mods:
        modifier |= {"Shift": Qt.KeyboardModifier.ShiftModifier, "Ctrl": Qt.KeyboardModifier.ControlModifier}[m]
    code = getattr(Qt.Key, f"Key_{name}")
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, code, modifier)


def test_shortcuts_move_slices_toggle_layers_mark_and_undo(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import anomalens.app
    from anomalens.app.desktop import docks_visible, show_demo_output
    from anomalens.app.results import current_index
    from anomalens.app.shortcuts import key_for
    from anomalens.app.state import get_state

    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    qtbot.wait(50)  # napari shows the docks it added from the event loop, as the app's loop would
    res = show_demo_output(viewer, small_demo_output(env))
    scan = viewer.layers[res.layer_name]
    assert viewer.layers.selection.active is scan  # not the new mask: napari's paint keys stay off it
    state = get_state(viewer)
    flagged = sorted(z for z, s in res.slices.items() if s.flagged)
    assert flagged and len(flagged) < len(res.slices), "the phantom needs flagged and unflagged slices"

    def z() -> int:
        return current_index(viewer, scan)

    viewer.dims.set_current_step(0, 2)
    _press(qtbot, viewer, key_for("next_slice"))
    assert z() == 3
    _press(qtbot, viewer, key_for("previous_slice"))
    _press(qtbot, viewer, key_for("previous_slice"))
    assert z() == 1
    viewer.dims.set_current_step(0, 0)
    _press(qtbot, viewer, key_for("previous_slice"))
    assert z() == 0  # stops at the first slice

    # flagged slices, forward then backward, wrapping around at the ends
    visits = []
    for _ in flagged:
        _press(qtbot, viewer, key_for("next_flagged"))
        visits.append(z())
    assert visits == flagged
    _press(qtbot, viewer, key_for("next_flagged"))
    assert z() == flagged[0] and "wrapped" in viewer.window.anomalens_files.status.text()
    qtbot.wait(50)  # napari rewrites its own status line on the slice change; the window's label keeps the answer
    assert "wrapped" in viewer.window.anomalens_files.status.text()
    assert "wrapped" not in str(viewer.status)  # said once: twice, both copies were cut off at 1,366 px
    _press(qtbot, viewer, key_for("previous_flagged"))
    assert z() == flagged[-1]

    heat, mask = viewer.layers[res.heatmap_name], viewer.layers[res.mask_name]
    caption = viewer.canvas.overlays.text  # "normal quantile: 1 = top of the normal range", the heatmap's
    assert heat.visible and mask.visible and caption.visible
    _press(qtbot, viewer, key_for("toggle_heatmap"))
    assert not heat.visible and mask.visible and not caption.visible
    _press(qtbot, viewer, key_for("toggle_mask"))
    assert not mask.visible
    _press(qtbot, viewer, key_for("toggle_heatmap"))
    _press(qtbot, viewer, key_for("toggle_mask"))
    assert heat.visible and mask.visible and caption.visible

    # mark the shown slice normal through the Calibration dock, then undo it
    viewer.dims.set_current_step(0, 1)
    assert 1 not in (state.extras.get("marked_slices") or [])
    _press(qtbot, viewer, key_for("mark_normal"))
    assert state.extras["marked_slices"] == [1]
    _press(qtbot, viewer, key_for("undo_mark"))
    assert state.extras["marked_slices"] == []
    _press(qtbot, viewer, key_for("redo_mark"))
    assert state.extras["marked_slices"] == [1]
    _press(qtbot, viewer, key_for("undo_mark"))
    assert state.extras["marked_slices"] == []

    # W cycles the scan's windows (an MR: the file has none, so auto only: it stays on auto)
    _press(qtbot, viewer, key_for("next_window"))
    assert viewer.window.anomalens_toolbar.window_level.combo.currentText().startswith("MR auto")

    # the three-plane key calls app.threeplane.toggle_three_plane (that module is another part of #19)
    calls: list[Any] = []
    fake = types.SimpleNamespace(toggle_three_plane=lambda v: calls.append(v) or True)
    monkeypatch.setitem(sys.modules, "anomalens.app.threeplane", fake)
    monkeypatch.setattr(anomalens.app, "threeplane", fake, raising=False)
    _press(qtbot, viewer, key_for("three_plane"))
    assert len(calls) == 1 and getattr(calls[0], "__wrapped__", calls[0]) is getattr(viewer, "__wrapped__", viewer)

    # one key hides every AnomaLens dock (the canvas takes the room) and shows them again
    canvas = viewer.window._qt_viewer.canvas.native
    assert docks_visible(viewer)
    before = canvas.width()
    _press(qtbot, viewer, key_for("toggle_docks"))
    frames = viewer.window.anomalens_frames
    assert not docks_visible(viewer) and not any(f.isVisible() for f in frames.values())
    qtbot.waitUntil(lambda: canvas.width() > before + 200, timeout=5000)
    _press(qtbot, viewer, key_for("toggle_docks"))
    assert docks_visible(viewer) and frames["Detector"].isVisible()
    qtbot.waitUntil(lambda: canvas.width() <= before + 5, timeout=5000)


# -- window/level ----------------------------------------------------------------------------------------

def test_window_presets_on_ct_and_auto_on_mr(make_napari_viewer: Any, qtbot: Any, env: Path, tmp_path: Path) -> None:
    from anomalens.app.shortcuts import key_for
    from anomalens.engine.windows import load_presets, percentile_limits, window_to_limits

    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    ct = _ct_volume()
    layer = _add(viewer, ct, "ct")
    bar = viewer.window.anomalens_toolbar.window_level
    assert bar.layer is layer
    labels = [c.label for c in bar.choices]
    table = load_presets()
    assert labels[0].startswith("File: HEAD")  # the file's own window first
    for name in ("brain", "subdural", "lung", "mediastinum", "bone", "abdomen"):
        assert any(lbl.startswith(f"CT {name} (") for lbl in labels), name
    assert len([c for c in bar.choices if c.source == "preset"]) == len(table.for_modality("CT"))
    assert tuple(layer.contrast_limits) == pytest.approx(window_to_limits(35.0, 90.0))  # the reader chose it
    assert bar.combo.currentText().startswith("File: HEAD")

    assert bar.choose("CT lung")
    lung = table.get("lung")
    assert tuple(layer.contrast_limits) == pytest.approx(window_to_limits(lung.center, lung.width))
    assert bar.combo.currentText().startswith("CT lung") and "W 1500 L -600" in bar.readout.text()

    # W / Shift+W walk the list from the current entry
    i = [c.label for c in bar.choices].index(bar.combo.currentText())
    _press(qtbot, viewer, key_for("next_window"))
    nxt = bar.choices[i + 1]
    assert tuple(layer.contrast_limits) == pytest.approx(nxt.limits(layer))
    assert bar.combo.currentText() == nxt.label
    _press(qtbot, viewer, key_for("previous_window"))
    assert bar.combo.currentText().startswith("CT lung")

    # a window set elsewhere (napari's slider) reads as Custom with its numbers
    layer.contrast_limits = (-13.0, 77.0)
    assert bar.combo.currentText() == "Custom" and bar.readout.text() == "W 90 L 32"

    # an MR scan: auto only (plus any file window), the engine's percentiles of the scan
    slices, _ = phantom_slices(3, 64, seed=2)
    mr = Volume(slices * 800.0, spacing=(1.0, 1.0, 3.0), modality="MR")
    mr_layer = _add(viewer, mr, "mr")
    assert bar.layer is mr_layer
    assert [c.source for c in bar.choices] == ["auto"] and bar.choices[0].label.startswith("MR auto")
    mr_layer.contrast_limits = (0.0, 5000.0)
    bar.choose("MR auto")
    want = percentile_limits(mr.array, table.fallback_percentiles)
    assert tuple(mr_layer.contrast_limits) == pytest.approx(want)

    # a selected mask does not take the window away from the scan under it
    viewer.add_labels(np.zeros(mr.shape, np.uint8), name="mask", scale=mr_layer.scale)
    assert viewer.layers.selection.active.name == "mask" and bar.layer is mr_layer


def _mouse(widget: Any, kind: str, pos: tuple[int, int], button: Any, buttons: Any) -> None:
    """Send one real Qt mouse event to the canvas (vispy's Qt backend turns it into the canvas's events)."""
    from qtpy.QtCore import QEvent, QPoint, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    types = {"press": QEvent.Type.MouseButtonPress, "move": QEvent.Type.MouseMove,
             "release": QEvent.Type.MouseButtonRelease}
    local = QPointF(*pos)
    event = QMouseEvent(types[kind], local, QPointF(widget.mapToGlobal(QPoint(*pos))), button, buttons,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)


def _drag(widget: Any, start: tuple[int, int], moves: list[tuple[int, int]], button: Any) -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    _mouse(widget, "press", start, button, button)
    for p in moves:
        QApplication.processEvents()  # as between a hand's moves: timers and repaints run
        _mouse(widget, "move", p, Qt.MouseButton.NoButton, button)
    QApplication.processEvents()
    _mouse(widget, "release", moves[-1], button, Qt.MouseButton.NoButton)


def test_right_drag_sets_width_and_level_and_does_not_zoom(make_napari_viewer: Any, qtbot: Any, env: Path,
                                                           tmp_path: Path) -> None:
    from qtpy.QtCore import Qt

    from anomalens.app.windowlevel import DRAG_PIXELS_PER_DOUBLING, DRAG_PIXELS_PER_WIDTH, window_of

    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    layer = _add(viewer, _ct_volume(), "ct")
    viewer.add_labels(np.zeros(layer.data.shape, np.uint8), name="mask", scale=layer.scale)  # selected, pan_zoom
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitUntil(lambda: canvas.width() > 200, timeout=5000)
    qtbot.wait(300)  # the canvas fitter's refit after the scan was added has run
    camera = viewer.scene.camera
    zoom, center = camera.zoom, tuple(camera.center)
    c0, w0 = window_of(layer)
    x, y = canvas.width() // 2, canvas.height() // 2

    # horizontal: width only (right: wider); several small moves, as a hand makes them
    _drag(canvas, (x, y), [(x + 20 * k, y) for k in range(1, 6)], Qt.MouseButton.RightButton)
    c1, w1 = window_of(layer)
    assert w1 == pytest.approx(w0 * 2 ** (100 / DRAG_PIXELS_PER_DOUBLING), rel=1e-3)
    assert c1 == pytest.approx(c0, abs=1e-3)
    assert camera.zoom == pytest.approx(zoom) and tuple(camera.center) == pytest.approx(center)  # no zoom
    assert camera.mouse_pan  # given back after the drag

    # vertical: level only (down: higher level)
    _drag(canvas, (x, y), [(x, y + 25), (x, y + 50)], Qt.MouseButton.RightButton)
    c2, w2 = window_of(layer)
    assert w2 == pytest.approx(w1, rel=1e-6)
    assert c2 == pytest.approx(c1 + 50 * w1 / DRAG_PIXELS_PER_WIDTH, rel=1e-3)
    assert viewer.window.anomalens_toolbar.window_level.combo.currentText() == "Custom"

    # the left button still pans and leaves the window alone
    _drag(canvas, (x, y), [(x + 20, y + 15), (x + 40, y + 30)], Qt.MouseButton.LeftButton)
    assert window_of(layer) == pytest.approx((c2, w2))
    assert tuple(camera.center) != pytest.approx(center)

    # a labels layer in paint mode keeps its right button: no window change
    viewer.layers["mask"].mode = "paint"
    _drag(canvas, (x, y), [(x + 100, y)], Qt.MouseButton.RightButton)
    assert window_of(layer) == pytest.approx((c2, w2))


# -- fitting the screen ----------------------------------------------------------------------------------

def test_docks_and_the_image_follow_the_canvas(make_napari_viewer: Any, qtbot: Any, env: Path,
                                               tmp_path: Path) -> None:
    from anomalens.app.desktop import describe_layout, fit_to_screen, layer_docks_visible, set_layer_docks_visible

    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    fit_to_screen(viewer)
    qt = viewer.window._qt_window
    avail = qt.screen().availableGeometry()
    qtbot.waitUntil(lambda: qt.width() == avail.width() and qt.height() == avail.height(), timeout=5000)
    layer = _add(viewer, _ct_volume(), "ct")
    fitter = viewer.window.anomalens_fitter
    qtbot.waitUntil(lambda: fitter.fits > 0, timeout=5000)
    assert describe_layout(viewer)["fit"] == pytest.approx(0.95, abs=0.02)  # fitted after loading

    # a narrower window: refitted to the new canvas
    fits = fitter.fits
    qt.resize(avail.width() * 2 // 3, avail.height() * 3 // 4)
    qtbot.waitUntil(lambda: fitter.fits > fits, timeout=5000)
    assert describe_layout(viewer)["fit"] == pytest.approx(0.95, abs=0.02)

    # the user zoomed in: a resize keeps their view
    viewer.scene.camera.zoom *= 2
    fits, zoom = fitter.fits, viewer.scene.camera.zoom
    qt.resize(avail.width(), avail.height())
    qtbot.wait(300)
    assert fitter.fits == fits and viewer.scene.camera.zoom == pytest.approx(zoom)

    # napari's layer docks: the Layers button shows and hides them; a heatmap added keeps the view
    bar = viewer.window.anomalens_toolbar
    shown = layer_docks_visible(viewer)
    bar.layers_button.click()
    assert layer_docks_visible(viewer) is not shown and bar.layers_button.isChecked() is not shown
    set_layer_docks_visible(viewer, shown)
    assert bar.layers_button.isChecked() is shown
    viewer.add_image(np.zeros(layer.data.shape, np.float32), scale=layer.scale, name="heat",
                     metadata={"anomalens_role": "heatmap"})
    qtbot.wait(200)
    assert fitter.fits == fits


def _run_on_screen(width: int, height: int, argv: list[str], tmp_path: Path, preamble: str = "",
                   timeout: int = 300) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Start the desktop app under its own X server of ``width``×``height``; returns its layout line as a dict."""
    if shutil.which("xvfb-run") is None:
        pytest.fail("xvfb-run is required for the screen-size tests (apt-get install xvfb)")
    env = {**os.environ, "ANOMALENS_THREADS": "1", "XDG_STATE_HOME": str(tmp_path / "state"),
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("QT_QPA_PLATFORM", None)
    code = (f"import sys\n{preamble}\nfrom anomalens.app.desktop import main\n"
            f"sys.exit(main({argv!r}))\n")
    out = subprocess.run(["xvfb-run", "-a", "-s", f"-screen 0 {width}x{height}x24", sys.executable, "-c", code],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("AnomaLens layout: ")]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    return out, json.loads(lines[-1].split(": ", 1)[1])


def _check_fits(layout: dict[str, Any], width: int, height: int, shot: Path) -> None:
    from PIL import Image

    x, y, w, h = layout["window"]
    assert layout["screen"] == [0, 0, width, height]
    assert x >= 0 and y >= 0 and x + w <= width and y + h <= height  # the whole window is on the screen
    assert (w, h) == (width, height)  # and it fills the screen's available area
    assert layout["minimum"][0] <= 1280 and layout["minimum"][1] <= 720
    assert layout["canvas_share"] >= 0.60, layout
    assert layout["docks_visible"]
    assert layout["docks_clipped"] == [], layout  # no dock scrolls sideways (buttons cut off at its edge)
    assert "Detector" not in layout["docks_scrolling"], layout  # its score curve is whole, not half scrolled away
    assert 0.9 <= layout["fit"] <= 1.0, layout  # the image is fitted to the canvas
    assert layout["slider_last"] == layout["last_index"], layout  # the last slice is reachable
    assert layout["slice"] == layout["most_anomalous"] is not None, layout  # it opens on the most anomalous slice
    assert layout["colorbar"], layout  # the heatmap has its colour bar
    assert layout["overlays_overlapping"] == [], layout  # caption, colour bar, key and letters each in the clear
    with Image.open(shot) as img:
        assert img.size[0] <= width and img.size[1] <= height


@pytest.mark.parametrize(("width", "height"), SCREENS)
def test_the_demo_window_fits_the_screen(width: int, height: int, bundle: Path, tmp_path: Path) -> None:
    """``anomalens-viewer --demo --screenshot FILE`` on a laptop and a reading-room screen (a tiny demo job)."""
    shot = tmp_path / "viewer.png"
    preamble = ("from pathlib import Path\nimport anomalens.engine.demo as demo\n"
                "from tests.test_app_reading_room import small_demo_output\n"
                f"demo.run_demo = lambda **_: small_demo_output(Path({str(bundle)!r}))\n")
    env_dirs = f"import os\nos.environ['ANOMALENS_DATA_DIR'] = {str(bundle.parent.parent)!r}\n"
    out, layout = _run_on_screen(width, height, ["--demo", "--screenshot", str(shot)], tmp_path,
                                 env_dirs + preamble)
    assert shot.is_file(), out.stdout[-2000:]
    # no worker outlives the window (superqt: "RuntimeError: Signal source has been deleted" on the way out)
    assert "Traceback" not in out.stderr and "Signal source" not in out.stderr, out.stderr[-2000:]
    _check_fits(layout, width, height, shot)
    # napari's layer docks are shown only where the canvas keeps its share with them
    assert layout["napari_docks_visible"] == (width >= 1920)


@pytest.mark.slow
def test_the_real_demo_screenshot_fits_a_laptop_screen(tmp_path: Path) -> None:
    """The issue's line, as written: ``xvfb-run -s '-screen 0 1366x768x24' anomalens-viewer --demo --screenshot``."""
    if shutil.which("xvfb-run") is None:
        pytest.fail("xvfb-run is required (apt-get install xvfb)")
    launcher = Path(sys.executable).with_name("anomalens-viewer")
    command = [str(launcher)] if launcher.is_file() else [sys.executable, "-m", "anomalens.app.desktop"]
    shot = tmp_path / "viewer.png"
    env = {**os.environ, "ANOMALENS_DATA_DIR": str(tmp_path / "data"), "ANOMALENS_CONFIG_DIR": str(tmp_path / "cfg"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    out = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1366x768x24", *command, "--demo", "--screenshot",
                          str(shot)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    [line] = [ln for ln in out.stdout.splitlines() if ln.startswith("AnomaLens layout: ")]
    _check_fits(json.loads(line.split(": ", 1)[1]), 1366, 768, shot)


def test_the_status_bar_reads_hounsfield_units_whole() -> None:
    """napari wrote a voxel's value to three significant digits: air on CT read "-1e+03", bone "1.52e+03"."""
    from napari.layers import Image

    from anomalens.app import statusvalues

    data = np.zeros((2, 4, 4), np.float32)
    data[0, 0], data[0, 1], data[0, 2] = -1000.0, 1523.6, 35.24  # rows of the shown slice
    layer = Image(data, scale=(5.0, 0.7, 0.7))
    assert statusvalues.install() and statusvalues.install()  # once per process, the second call a no-op
    value = lambda y: layer.get_status((0.0, y * 0.7, 0.7), world=True)["value"]  # noqa: E731
    assert (value(0), value(1), value(2)) == ("-1000", "1524", "35.2")
    heat = Image(np.full((1, 2, 2), 0.99437, np.float32))
    assert heat.get_status((0, 0, 0), world=True)["value"] == "0.994"  # small values keep napari's digits


def test_a_toast_raised_while_the_window_was_away_goes_once_the_user_is_back(make_napari_viewer: Any, qtbot: Any,
                                                                             env: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtCore import QEvent
    from qtpy.QtWidgets import QApplication

    viewer = _desktop(make_napari_viewer(show=True), tmp_path)
    canvas = viewer.window._qt_viewer.canvas.native
    monkeypatch.setattr(NapariQtNotification, "DISMISS_AFTER", 150)
    monkeypatch.setattr(canvas, "isActiveWindow", lambda: False)  # the user is in another program
    toast = NapariQtNotification("scoring finished", "info", parent=canvas)
    toast.show()
    from qtpy.QtWidgets import QWidget

    other_window = QWidget()  # another window, also in the background: its toast is not this window's to time
    qtbot.addWidget(other_window)
    other_window.show()
    monkeypatch.setattr(other_window, "isActiveWindow", lambda: False)
    elsewhere = NapariQtNotification("another window's", "info", parent=other_window)
    elsewhere.show()
    qtbot.wait(400)
    assert toast in NapariQtNotification._instances and not toast.timer.isActive()  # napari keeps it while away
    gone_parent = QWidget()  # a toast over a window closed meanwhile stays in napari's list, its Qt objects gone
    monkeypatch.setattr(gone_parent, "isActiveWindow", lambda: False)
    gone = NapariQtNotification("from a closed window", "info", parent=gone_parent)
    gone.show()
    gone_parent.deleteLater()
    qtbot.wait(50)
    QApplication.sendEvent(viewer.window._qt_window, QEvent(QEvent.Type.WindowActivate))  # the user is back
    assert toast.timer.isActive()
    assert not elsewhere.timer.isActive()
    qtbot.waitUntil(lambda: toast not in NapariQtNotification._instances, timeout=5000)  # faded out and closed
    assert elsewhere in NapariQtNotification._instances
    elsewhere.close()
    NapariQtNotification._instances.remove(gone)  # what napari's own close would have done
