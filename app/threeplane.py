"""Linked three-plane view: the main canvas and two more planes of the same scan, one crosshair, synced slices.

napari's multi-canvas pattern (its "multiple viewer widget" example): two extra ``ViewerModel``s with their
own ``QtViewer`` canvases in a dock, the main viewer's image and labels layers mirrored into them (the same
arrays: nothing is copied or resampled) with their display properties and data refreshes linked. All three
share napari's world (the display frame of :mod:`.orientation`), so the crosshair *is* ``dims.point``: a slice
moved in one canvas moves that plane's line in the other two, and a click in one canvas (Shift+drag anywhere,
a plain click where no layer tool is active) moves the other two planes to the clicked point. Each extra
canvas picks its plane with ``dims.order`` and its camera's ``orientation2d`` (:func:`.orientation.plane_view`)
and carries its own edge letters.

The crosshair lines are vispy lines in each canvas' scene (world coordinates), not napari layers: the docks
that look for the scan, heatmap and mask layers never see them and they cannot change the dims' step.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from ..engine.volume import Volume
from . import glcache, heap
from .orientation import (
    PLANE_OF_AXIS,
    camera_of,
    geometry,
    install_orientation_overlay,
    label_axes,
    plane_view,
    reference_layer,
    show_some_letters,
)

#: Name of the dock holding the two extra canvases.
DOCK_NAME = "Three-plane view"
#: Text of the View-menu entry.
MENU_TEXT = "Three-plane view (axial, coronal, sagittal)"
#: Colour of each plane's crosshair line (3D Slicer's: red axial, green coronal, yellow sagittal).
PLANE_COLORS = {"axial": "#f34a33", "coronal": "#6eb04b", "sagittal": "#edd54c"}
#: Layer properties kept equal between a main-viewer layer and its mirrors.
SYNCED_PROPERTIES = ("name", "visible", "opacity", "blending", "contrast_limits", "gamma", "colormap",
                     "interpolation2d", "contour", "show_selected_label", "selected_label", "scale", "translate",
                     "rotate", "shear", "affine", "iso_gradient_mode", "rendering")

#: Pause between two build steps, in ms. With none, a step ran in the same event-loop turn as the repaint the
#: step before it asked for, and a click waited for both (bench/bench_reading_room.py's "longest block").
STEP_GAP_MS = 15
#: Pause between the click and the first build step, in ms: the click's own layout and repaint of the window
#: (~90 ms at 1,920×1,080 under software OpenGL) come first, so the first step does not share their turn.
FIRST_STEP_MS = 120

#: A new canvas' edge letters, a build step each: each letter is a text visual of its own, and its first draw
#: (a shader program, the glyphs) was 50-60 ms of a paint at 1,920×1,080 under software OpenGL; two in one turn
#: made the build's longest block. The last step adds the rest and keeps them current.
LETTER_STEPS: tuple[tuple[str, ...], ...] = (("top",), ("bottom",), ("left",), ())

_views: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _qt_viewer(viewer: Any) -> Any:
    window = getattr(viewer, "window", None)
    return getattr(window, "_qt_viewer", None)


def _mirrorable(layer: Any) -> bool:
    from napari.layers import Image, Labels

    return isinstance(layer, Image | Labels) and layer.ndim >= 3


class _Crosshair:
    """Two vispy line segments in a canvas' scene, drawn over every layer."""

    def __init__(self, qt_viewer: Any) -> None:
        from vispy.scene.visuals import Line

        self.line = Line(pos=np.zeros((4, 2), np.float32), color=np.ones((4, 4), np.float32), width=1.5,
                         connect="segments", method="gl", parent=qt_viewer.canvas.view.scene)
        self.line.order = 10_000_000
        self.line.set_gl_state("translucent", depth_test=False)
        self.line.visible = False

    def show(self, segments: np.ndarray, colors: np.ndarray) -> None:
        self.line.set_data(pos=segments.astype(np.float32), color=colors.astype(np.float32))
        self.line.visible = True

    def hide(self) -> None:
        self.line.visible = False

    def remove(self) -> None:
        self.line.parent = None


class ThreePlaneView:
    """The two extra canvases of ``viewer`` and the links that keep them in step with it (see the module doc).

    ``planes`` maps a plane name (``axial``, ``coronal``, ``sagittal``) to its extra ``ViewerModel``; the
    main viewer shows the remaining plane. ``widget`` is the dock's content.
    """

    def __init__(self, viewer: Any, staged: bool = False) -> None:
        """Lay out the dock's column; ``staged``: build the canvases over several event-loop turns.

        Building everything at once held the UI thread for about a second (two vispy canvases, a shader
        program per mirrored layer and canvas, napari re-binding every shortcut per canvas). Staged, each turn
        does one step (a garbage collection, a canvas, one layer mirrored into one canvas, orienting a canvas,
        half a canvas' letters), so the window keeps answering while the planes fill in; ``ready`` says when it
        is done and ``finish`` does the rest at once.
        """
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QLabel, QSplitter, QVBoxLayout, QWidget

        glcache.install()  # the extra canvases build the main canvas' shader programs again: parse once
        self.viewer = viewer
        self.dock: Any = None  # the napari dock holding ``widget`` (set by toggle_three_plane)
        self.stepped_aside: list[Any] = []  # weak references to the docks hidden while the view is open
        self.watcher: Any = None
        self.watched: Any = None
        self._links: list[tuple[Any, Callable]] = []
        self._mirrors: dict[int, list[Any]] = {}
        self._pending: set[int] = set()
        self._seen: dict[int, tuple] = {}
        self._geometry = geometry(Volume(np.zeros((2, 2, 2), np.float32)))
        self._syncing = False
        self._closed = False
        self.step_ms: list[float] = []  # UI-thread time of each staged build step
        self.step_log: list[tuple[str, float, float]] = []  # (step, start, end) in perf_counter seconds
        self.failed = False  # a build step raised: the build stopped there
        self.point: list[float] = [float(v) for v in viewer.dims.point]
        self.main_plane = self._main_plane()
        self.plane_names = [p for p in ("axial", "coronal", "sagittal") if p != self.main_plane]
        self.planes: dict[str, Any] = {}
        self.qt_viewers: dict[str, Any] = {}
        self.titles: dict[str, Any] = {}
        self._boxes: dict[str, Any] = {}
        self.widget = QSplitter(Qt.Orientation.Vertical)
        self.widget.setObjectName("anomalens_three_plane")
        for name in self.plane_names:
            box = QWidget()
            lay = QVBoxLayout(box)
            lay.setContentsMargins(0, 0, 0, 0)
            lay.setSpacing(2)
            title = QLabel(f"{name.capitalize()} (preparing…)")
            title.setStyleSheet(f"color: {PLANE_COLORS[name]}; font-weight: bold; padding-left: 4px;")
            lay.addWidget(title)
            lay.addStretch(1)
            self.widget.addWidget(box)
            self.widget.setStretchFactor(self.widget.count() - 1, 1)
            self._boxes[name], self.titles[name] = box, title
        self.main_qt = _qt_viewer(viewer)
        self._drag_main = self._drag_callback(viewer, plain_click=False)
        self.crosshairs: dict[int, _Crosshair] = {}
        if self.main_qt is not None:
            self.crosshairs[id(viewer)] = _Crosshair(self.main_qt)
        self._link(viewer.layers.events.removed, self._on_removed)
        self._gc_hold = heap.CollectionHold()
        self._steps: deque[Callable[[], None]] = deque(self._plan())
        if staged:
            from qtpy.QtCore import QTimer

            # the dock shows first (the click's layout and repaint); the canvases follow, a step a turn
            QTimer.singleShot(FIRST_STEP_MS, self._next_step)
        else:
            self.finish()

    # -- building, a step per event-loop turn ----------------------------------------------------------
    def _plan(self) -> list[Callable[[], None]]:
        """The build steps, a turn each: collect, canvases, layers, orientation, letters, links.

        A collection first; each canvas, made (a QtViewer: ~50 ms of Python here), given its slice sliders
        (napari makes them with a canvas' first layer, a third of that step) while it is not shown yet (a shown
        canvas repaints at once on every resize, and the sliders resize it twice), then put in the dock (the
        dock's layout and the canvas' first paint), each in a turn of its own; each mirrorable layer into each
        canvas (a canvas oriented after its first); each canvas' letters, one a turn; then the links.
        """
        steps: list[Callable[[], None]] = [self._gc_hold.start]
        for name in self.plane_names:  # a canvas is made, given its sliders, put in the dock: a turn each
            steps += [partial(self._make_plane, name), partial(self._make_sliders, name),
                      partial(self._place_plane, name)]
        for i, layer in enumerate([lyr for lyr in self.viewer.layers if _mirrorable(lyr)]):
            for name in self.plane_names:
                steps.append(partial(self._mirror_step, weakref.ref(layer), name))
                if i == 0:  # the first layer makes the canvas' sliders, orienting it moves them: a turn each
                    steps.append(partial(self._set_up_plane, name))
        steps += [partial(self._dress_plane, name, part)
                  for part in range(len(LETTER_STEPS)) for name in self.plane_names]
        steps.append(self._finish_links)
        return steps

    @property
    def ready(self) -> bool:
        """Whether every canvas is built and linked."""
        return not self._steps and not self._closed and not self.failed

    def finish(self) -> None:
        """Run the build steps still to come, now (tests, scripts, and a close during the build)."""
        while self._steps and not self._closed:
            self._run(self._steps.popleft())

    def _run(self, step: Callable[[], None]) -> None:
        """One build step; a step that fails ends the build and gives garbage collection back first."""
        try:
            step()
        except Exception:
            self._steps.clear()
            self.failed = True
            self._gc_hold.release()
            raise

    def _next_step(self) -> None:
        import time

        from qtpy.QtCore import QTimer

        if self._closed or not self._steps:
            return
        step = self._steps.popleft()
        t0 = time.perf_counter()
        self._run(step)
        t1 = time.perf_counter()
        self.step_ms.append((t1 - t0) * 1000.0)  # for bench_reading_room
        self.step_log.append((getattr(step, "func", step).__name__, t0, t1))
        if self._steps:
            QTimer.singleShot(STEP_GAP_MS, self._next_step)

    def _make_plane(self, name: str) -> None:
        """Make plane ``name``'s model and canvas, not yet shown: the dock lays it out in the next turn."""
        from napari.components import ViewerModel
        from napari.qt import QtViewer
        from napari.utils.action_manager import action_manager

        model = ViewerModel(title=f"AnomaLens {name}")
        # A new QtViewer unbinds and rebinds every napari shortcut to the same keys; each change event makes
        # every open canvas' welcome text rebuild its shortcut list (~150 ms for nothing): the keys end up as
        # they were, so the events are held back.
        with action_manager.events.shortcut_changed.blocker():
            qtv = QtViewer(model)
        self.planes[name], self.qt_viewers[name] = model, qtv

    def _place_plane(self, name: str) -> None:
        """Put plane ``name``'s canvas in the dock and link its crosshair and clicks."""
        model, qtv = self.planes[name], self.qt_viewers[name]
        lay = self._boxes[name].layout()
        lay.insertWidget(1, qtv, 1)
        lay.removeItem(lay.itemAt(2))  # the placeholder stretch
        self.titles[name].setText(name.capitalize())
        n = self.widget.count()
        self.widget.setSizes([max(1, self.widget.height() // n)] * n)  # the planes share the column equally
        # Its edge letters come in later steps (_dress_plane): a canvas' first text is its costliest paint.
        model.mouse_drag_callbacks.append(self._drag_callback(model, plain_click=True))
        self.crosshairs[id(model)] = _Crosshair(qtv)
        model.dims.events.point.connect(lambda _e=None, m=model: self._sync_from(m))

    def _make_sliders(self, name: str) -> None:
        """Give plane ``name`` the dimensions of the scan, so its slice sliders exist before its first layer."""
        model = self.planes.get(name)
        ndim = max((lyr.ndim for lyr in self.viewer.layers if _mirrorable(lyr)), default=0)
        if model is not None and not model.layers and ndim > model.dims.ndim:
            model.dims.ndim = ndim

    def _mirror_step(self, ref: Callable[[], Any], name: str) -> None:
        """Mirror one main-viewer layer into one canvas (a layer removed meanwhile is skipped)."""
        layer = ref()
        if layer is None or layer not in self.viewer.layers:
            return
        self._mirror_into(layer, name, orient=False)
        if len(self._mirrors.get(id(layer), [])) == len(self.plane_names):
            self._link_layer(layer)

    def _dress_plane(self, name: str, part: int) -> None:
        """Give plane ``name`` the letters of ``LETTER_STEPS[part]``; the last part keeps them current."""
        if name not in self.planes:
            return
        model = self.planes[name]
        if part < len(LETTER_STEPS) - 1:
            show_some_letters(model, LETTER_STEPS[part])
        else:
            install_orientation_overlay(model, follow_scan=False)

    def _finish_links(self) -> None:
        """Mirror what arrived during the build, link the main viewer's events, orient and fit every plane."""
        viewer = self.viewer
        for layer in viewer.layers:
            if _mirrorable(layer) and len(self._mirrors.get(id(layer), [])) < len(self.plane_names):
                for name in self.plane_names[len(self._mirrors.get(id(layer), [])):]:
                    self._mirror_into(layer, name)
                self._link_layer(layer)
        self._on_moved()
        self._geometry = geometry(self._reference_volume())  # each plane was oriented with its first layer
        viewer.mouse_drag_callbacks.append(self._drag_main)
        self._link(viewer.layers.events.inserted, self._on_inserted)
        self._link(viewer.layers.events.moved, self._on_moved)
        self._link(viewer.dims.events.point, lambda _e=None: self._sync_from(viewer))
        self._link(viewer.dims.events.order, lambda _e=None: self.draw_crosshairs())
        self.point = [float(v) for v in viewer.dims.point]
        self._push()
        for name in self.planes:  # oriented (a no-op unless its first layer went away mid-build) and refitted
            self._set_up_plane(name)
        self.fit_planes_on_resize()
        self._gc_hold.release()

    # -- which plane each canvas shows ------------------------------------------------------------------
    def _reference_volume(self) -> Volume:
        layer = reference_layer(self.viewer)
        vol = layer.metadata.get("anomalens_volume") if layer is not None else None
        return vol if isinstance(vol, Volume) else Volume(np.zeros((2, 2, 2), np.float32))

    def _main_plane(self) -> str:
        dims = self.viewer.dims
        axis = dims.order[-3] - (dims.ndim - 3) if dims.ndim >= 3 else 0
        return PLANE_OF_AXIS[geometry(self._reference_volume()).axes[axis]] if 0 <= axis < 3 else "axial"

    def _set_up_planes(self) -> None:
        self._geometry = geometry(self._reference_volume())
        for name in self.planes:
            self._set_up_plane(name)
        self.point = [float(v) for v in self.viewer.dims.point]
        self._push()

    def _set_up_plane(self, name: str) -> None:
        """Show plane ``name`` in its canvas: its dims order, radiological camera, and the scan fitted."""
        model = self.planes.get(name)
        if model is None:
            return
        if model.dims.ndim < 3:
            return
        vol = self._reference_volume()
        order, orient = plane_view(vol, name)
        extra = model.dims.ndim - 3
        model.dims.order = tuple(range(extra)) + tuple(a + extra for a in order)
        camera_of(model).orientation2d = orient
        model.reset_view()

    def fit_planes_on_resize(self) -> None:
        """Refit each extra plane whenever its canvas changes size (the dock gets its size after opening)."""
        from qtpy.QtCore import QTimer

        for model in self.planes.values():
            timer = QTimer(self.widget)
            timer.setSingleShot(True)
            timer.setInterval(30)  # a resize comes as a burst of size events: fit once after it
            timer.timeout.connect(model.reset_view)
            def later(_e: Any = None, t: Any = timer) -> None:
                try:
                    t.start()
                except RuntimeError:  # the view was closed: its timers are gone
                    pass

            model.canvas.events.size.connect(later)

    # -- mirrored layers --------------------------------------------------------------------------------
    def _link(self, emitter: Any, callback: Callable) -> None:
        emitter.connect(callback)
        self._links.append((emitter, callback))

    def _mirror_into(self, layer: Any, name: str, index: int | None = None, orient: bool = True) -> None:
        """Put a mirror of ``layer`` (the same array, its state) into the canvas of plane ``name``.

        ``orient``: set the plane up when this is its first layer (the staged build does it as a step of its own).
        """
        from napari.layers import Layer

        model = self.planes[name]
        data, state, kind = layer.as_layer_data_tuple()
        mirror = Layer.create(data, state, kind)
        self._syncing = True  # the extra canvas' dims move while its first layer arrives: not the user
        try:
            model.layers.insert(len(model.layers) if index is None else min(index, len(model.layers)), mirror)
        finally:
            self._syncing = False
        self._mirrors.setdefault(id(layer), []).append(mirror)
        if model.dims.ndim >= 3 and len(model.layers) == 1:
            # Slider names ("COR", "SAG") now, while the new sliders are laid out in napari's order: napari sizes
            # the label box from the first slider's width, which stays stale once the plane's order hides it.
            label_axes(model, mirror)
            if orient:
                self._set_up_plane(name)

    def _link_layer(self, layer: Any) -> None:
        """Keep ``layer``'s mirrors in step with it: display properties, in-place refreshes, new data."""
        self._seen[id(layer)] = self._slice_key()
        for prop in SYNCED_PROPERTIES:
            emitter = getattr(layer.events, prop, None)
            if emitter is not None:
                self._link(emitter, self._property_sync(layer, prop))
        for ev in ("set_data", "paint"):
            emitter = getattr(layer.events, ev, None)
            if emitter is not None:
                self._link(emitter, self._refresh_later(layer))
        self._link(layer.events.data, self._data_sync(layer))

    def _add_mirror(self, layer: Any, index: int | None = None) -> None:
        """Mirror a layer new in the main viewer into every canvas, linked."""
        if not _mirrorable(layer) or id(layer) in self._mirrors:
            return
        for name in self.planes:
            self._mirror_into(layer, name, index)
        self._link_layer(layer)

    def _property_sync(self, layer: Any, prop: str) -> Callable:
        ref = weakref.ref(layer)

        def sync(_event: Any = None) -> None:
            src = ref()
            if src is None:
                return
            value = getattr(src, prop)
            for mirror in self._mirrors.get(id(src), []):
                try:
                    setattr(mirror, prop, value)
                except (AttributeError, TypeError, ValueError):  # a property this layer type does not take
                    continue

        return sync

    def _data_sync(self, layer: Any) -> Callable:
        ref = weakref.ref(layer)

        def sync(_event: Any = None) -> None:
            src = ref()
            for mirror in self._mirrors.get(id(src), []) if src is not None else []:
                if mirror.data is not src.data:
                    mirror.data = src.data

        return sync

    def _slice_key(self) -> tuple:
        """What the main canvas shows: its displayed axes and the point on the others."""
        dims = self.viewer.dims
        return (dims.ndisplay, tuple(dims.order), tuple(dims.point[a] for a in dims.not_displayed))

    def _refresh_later(self, layer: Any) -> Callable:
        """Refresh the mirrors after an in-place data change, once per event-loop turn.

        napari sends ``set_data`` both when a layer is re-sliced (the main canvas moved to another slice: the
        mirrors, on other planes, have nothing new) and when ``refresh()`` follows an in-place edit (a scored
        slice, an SCR re-cut, a slider drag many times a second): only the second refreshes the mirrors.
        """
        from qtpy.QtCore import QTimer

        ref = weakref.ref(layer)

        def schedule(event: Any = None) -> None:
            src = ref()
            if src is None or self.viewer is None:  # the layer is gone, or the view was closed
                return
            key = self._slice_key()
            if getattr(event, "type", "") == "set_data" and self._seen.get(id(src)) != key:
                self._seen[id(src)] = key  # a new slice of the same data
                return
            if id(src) in self._pending:
                return
            self._pending.add(id(src))

            def run() -> None:
                self._pending.discard(id(src))
                for mirror in self._mirrors.get(id(src), []):
                    if mirror.data is not src.data:
                        mirror.data = src.data
                    else:
                        mirror.refresh(thumbnail=False, highlight=False, extent=False)

            QTimer.singleShot(0, run)

        return schedule

    def _on_inserted(self, event: Any) -> None:
        self._add_mirror(event.value, event.index)
        if reference_layer(self.viewer) is event.value:  # a (new) scan: its planes may lie elsewhere
            self._set_up_planes()
        self._push()

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        for model, mirror in zip(self.planes.values(), self._mirrors.pop(id(layer), []), strict=False):
            if mirror in model.layers:
                model.layers.remove(mirror)
        keep = []
        for emitter, cb in self._links:
            owner = getattr(getattr(emitter, "source", None), "events", None)
            if getattr(emitter, "source", None) is layer and owner is not None:
                emitter.disconnect(cb)
            else:
                keep.append((emitter, cb))
        self._links = keep

    def _on_moved(self, _event: Any = None) -> None:
        order = [id(lyr) for lyr in self.viewer.layers if id(lyr) in self._mirrors]
        for i, model in enumerate(self.planes.values()):
            wanted = [self._mirrors[k][i] for k in order]
            for dst, mirror in enumerate(wanted):
                src = model.layers.index(mirror)
                if src != dst:
                    model.layers.move(src, dst)

    # -- the shared point -----------------------------------------------------------------------------
    def models(self) -> list[Any]:
        """The main viewer and the extra canvases' models."""
        return [self.viewer, *self.planes.values()]

    def _sync_from(self, source: Any) -> None:
        """Take the slice positions ``source`` shows into the shared point and give each canvas its own.

        Only non-displayed axes are written to a canvas' dims (a displayed axis' point would make napari
        re-slice the same plane): moving the axial slice re-slices the main canvas alone, and the other
        two only redraw their crosshair.
        """
        if self._syncing:
            return
        dims = source.dims
        if dims.ndim == len(self.point):
            for axis in dims.not_displayed:
                self.point[axis] = float(dims.point[axis])
        self._push(exclude=source)

    def _push(self, exclude: Any = None) -> None:
        self._syncing = True
        try:
            for model in self.models():
                dims = model.dims
                if model is exclude or dims.ndim != len(self.point):
                    continue
                axes = [a for a in dims.not_displayed if dims.point[a] != self.point[a]]
                if axes:
                    dims.set_point(axes, [self.point[a] for a in axes])
        finally:
            self._syncing = False
        self.draw_crosshairs()

    def set_crosshair(self, world: Any, source: Any = None) -> None:
        """Move the crosshair, and every canvas' slice, to the world point ``world`` (one value per dims axis)."""
        values = [float(v) for v in world]
        if len(values) != len(self.point):
            self.point = list(self.viewer.dims.point)
        ranges = self.viewer.dims.range
        self.point = [float(np.clip(v, r.start, r.stop)) for v, r in zip(values, ranges, strict=False)]
        self._push()

    def crosshair(self) -> tuple[float, ...]:
        """The shared point in world coordinates (the slice positions of all three planes)."""
        return tuple(self.point)

    def _drag_callback(self, model: Any, plain_click: bool) -> Callable:
        def move(event: Any) -> None:
            displayed = list(model.dims.displayed)
            point = list(model.dims.point)
            for axis in displayed:
                point[axis] = float(event.position[axis])
            self.set_crosshair(point, source=model)

        def on_drag(_model: Any, event: Any):  # napari calls it on press, then on each move and the release
            if event.button != 1:
                return
            shift = "Shift" in {str(getattr(m, "name", m)) for m in event.modifiers}
            active = model.layers.selection.active
            plain = plain_click or active is None or getattr(active, "mode", "pan_zoom") == "pan_zoom"
            if shift:
                move(event)
            yield
            moved = False
            while event.type == "mouse_move":
                moved = True
                if shift:
                    move(event)
                yield
            if not moved and not shift and plain:
                move(event)

        return on_drag

    def draw_crosshairs(self) -> None:
        """Draw each canvas' two lines: the other planes through the shared point, in their colours."""
        if len(self.point) != self.viewer.dims.ndim:
            self.point = [float(v) for v in self.viewer.dims.point]
        point = np.asarray(self.point, dtype=float)
        g = self._geometry
        ndim = len(point)
        for model in self.models():
            cross = self.crosshairs.get(id(model))
            if cross is None:
                continue
            if model.dims.ndisplay != 2 or ndim < 3 or model.dims.ndim != ndim or len(model.layers) == 0:
                cross.hide()
                continue
            v, h = model.dims.displayed
            lo, hi = np.asarray(model.dims.range)[:, 0], np.asarray(model.dims.range)[:, 1]
            pad_v, pad_h = 0.02 * (hi[v] - lo[v]) + 1.0, 0.02 * (hi[h] - lo[h]) + 1.0
            segments = np.array([[lo[h] - pad_h, point[v]], [hi[h] + pad_h, point[v]],
                                 [point[h], lo[v] - pad_v], [point[h], hi[v] + pad_v]])
            colour_v = _rgba(PLANE_COLORS[PLANE_OF_AXIS[g.axes[v - (ndim - 3)]]])  # the plane where world v is fixed
            colour_h = _rgba(PLANE_COLORS[PLANE_OF_AXIS[g.axes[h - (ndim - 3)]]])
            cross.show(segments, np.array([colour_v, colour_v, colour_h, colour_h]))

    # -- teardown -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Disconnect everything from the main viewer and let go of the extra canvases.

        Their layers are not removed one by one: napari runs a full garbage collection after each layer
        removal (0.3 s each here); the canvases close and the mirrors go with their models.
        """
        self._closed = True
        self._steps.clear()
        self._gc_hold.release()
        for emitter, cb in self._links:
            try:
                emitter.disconnect(cb)
            except (RuntimeError, ValueError, TypeError):
                continue
        self._links.clear()
        if self._drag_main in self.viewer.mouse_drag_callbacks:
            self.viewer.mouse_drag_callbacks.remove(self._drag_main)
        main_cross = self.crosshairs.pop(id(self.viewer), None)
        if main_cross is not None:
            main_cross.remove()
        for qtv in self.qt_viewers.values():
            qtv.close()  # stops its dims and deletes its vispy canvas (what napari does for its own)
        self._mirrors.clear()
        self.crosshairs.clear()
        self.qt_viewers.clear()
        self.planes.clear()
        # Closures Qt still holds until its deferred deletes run (the dock's watcher) reach this object: let go
        # of the main window so it is freed when it closes.
        self.main_qt = None
        self.viewer = None


def _rgba(colour: str) -> np.ndarray:
    from vispy.color import Color

    return np.asarray(Color(colour).rgba, dtype=np.float32)


def three_plane_view(viewer: Any) -> ThreePlaneView | None:
    """The open three-plane view of ``viewer`` (None when it is closed)."""
    return _views.get(id(viewer))


def toggle_three_plane(viewer: Any) -> bool:
    """Open the three-plane view of ``viewer`` as a dock, or close it; returns whether it is open now."""
    if three_plane_view(viewer) is not None:
        close_three_plane(viewer)
        return False
    from qtpy.QtCore import QEvent, QObject

    from .desktop import docks_visible, set_docks_visible

    view = ThreePlaneView(viewer, staged=True)
    _views[id(viewer)] = view
    # A layout of its own, as a PACS viewer's MPR: the AnomaLens docks make room (and come back on close).
    view.restore_docks = docks_visible(viewer)
    if view.restore_docks:
        set_docks_visible(viewer, False)
    view.stepped_aside = _step_aside(viewer)  # a plain napari's right-hand docks (the desktop's are hidden above)
    with _settings_file_untouched():
        view.dock = viewer.window.add_dock_widget(view.widget, name=DOCK_NAME, area="right", tabify=False)
    _size_dock(viewer, view.dock)

    class Watcher(QObject):
        """Closes the view when its dock's own close or hide button takes it out, or the main window closes.

        napari's hide button closes the dock widget (a hidden dock, not a removed one): watched too, since the
        view otherwise stayed open behind it, crosshairs on the main canvas and the AnomaLens docks hidden.
        """

        def eventFilter(self, obj: Any, event: Any) -> bool:
            kind = event.type()
            if (kind == QEvent.Type.Close and obj is not view.widget) or (
                    kind == QEvent.Type.ParentChange and obj is view.widget and view.widget.parent() is None):
                if three_plane_view(viewer) is view:
                    close_three_plane(viewer)
            return False

    view.watcher = Watcher(view.widget)
    view.widget.installEventFilter(view.watcher)
    if isinstance(view.dock, QObject):
        view.dock.installEventFilter(view.watcher)
    qwin = viewer.window._qt_window
    qwin.installEventFilter(view.watcher)
    view.watched = qwin
    return True


def close_three_plane(viewer: Any) -> None:
    """Close the three-plane view of ``viewer`` (nothing when none is open)."""
    view = _views.pop(id(viewer), None)
    if view is None:
        return
    watched = getattr(view, "watched", None)
    if watched is not None:
        try:
            watched.removeEventFilter(view.watcher)
        except RuntimeError:  # the main window is already gone
            pass
    view.close()
    dock = getattr(view, "dock", None)
    if dock is not None and view.widget.parent() is not None:
        try:
            viewer.window.remove_dock_widget(dock)
        except (LookupError, RuntimeError, AttributeError):
            pass
    view.widget.deleteLater()
    view.watched = view.watcher = view.dock = None  # nothing of the closed view keeps the main window alive
    if getattr(view, "restore_docks", False):
        from .desktop import set_docks_visible

        set_docks_visible(viewer, True)
    for ref in getattr(view, "stepped_aside", []):
        dock = ref()
        try:
            if dock is not None:
                dock.show()
        except RuntimeError:  # deleted meanwhile (its plugin closed it)
            continue
    view.stepped_aside = []


@contextmanager
def _settings_file_untouched() -> Iterator[None]:
    """Hold napari's settings-file write for the dock added in this block: ~15 ms of disk in the click's turn.

    napari rewrites its settings file whenever a dock is added, to keep the dock's side. This dock is always
    put on the right, so nothing of it needs keeping; other settings changes still save as they happen.
    """
    try:
        from napari.settings import get_settings

        settings = get_settings()
        before = settings._save_on_change
    except (ImportError, AttributeError):
        yield
        return
    settings._save_on_change = False
    try:
        yield
    finally:
        settings._save_on_change = before


def _step_aside(viewer: Any) -> list[Any]:
    """Hide the docks shown in the window's right-hand column; weak references to them, to show them again.

    In a plain napari viewer the AnomaLens docks opened from the Plugins menu (and any other plugin's) stay
    stacked in that column, and the three-plane dock added below them got 15–40 px of height per plane. The
    desktop window hides its own docks itself; what is left there is docked by the user and steps aside too.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    qwin = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if qwin is None:
        return []
    aside = []
    for dock in qwin.findChildren(QDockWidget):
        if dock.isVisible() and not dock.isFloating() and dock.parent() is qwin \
                and qwin.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea:
            dock.hide()
            aside.append(weakref.ref(dock))
    return aside


def _size_dock(viewer: Any, dock: Any) -> None:
    """Give the dock about a third of the window's width: each extra plane needs room to be read."""
    from qtpy.QtCore import Qt

    qwin = viewer.window._qt_window
    try:
        qwin.resizeDocks([dock], [max(320, qwin.width() // 3)], Qt.Orientation.Horizontal)
    except (AttributeError, RuntimeError, TypeError):
        pass


def add_three_plane_menu_item(viewer: Any) -> Any:
    """Add "Three-plane view" to the View menu of ``viewer`` (checkable, follows the dock); returns the action.

    napari rebuilds its menus when plugins change them, so the entry is put back whenever the menu opens.
    Also puts the orientation letters on the main canvas.
    """
    from qtpy.QtGui import QAction

    from .shortcuts import key_for

    install_orientation_overlay(viewer)
    menu = viewer.window.view_menu
    # the key as a hint after a tab (Qt draws it as the shortcut column) without binding it a second time:
    # napari's keymap already owns it, and a QAction shortcut would make the key ambiguous
    action = QAction(f"{MENU_TEXT}\t{key_for('three_plane')}", menu)
    action.setCheckable(True)
    action.setObjectName("anomalens_three_plane_action")

    def triggered(_checked: bool = False) -> None:
        action.setChecked(toggle_three_plane(viewer))

    def install() -> None:
        action.setChecked(three_plane_view(viewer) is not None)
        if action not in menu.actions():
            menu.addSeparator()
            menu.addAction(action)

    action.triggered.connect(triggered)
    menu.aboutToShow.connect(install)
    install()
    viewer.window.anomalens_three_plane_action = action
    return action


def setup_radiological_view(viewer: Any) -> Any:
    """The AnomaLens window's radiological habits, in one call (``desktop.setup_viewer`` makes it).

    Edge letters on the canvas (and the acquired plane shown radiologically), AnomaLens as napari's preferred
    reader for scans, and the View-menu entry of the three-plane view; returns that menu action.
    """
    from .reader import prefer_anomalens_reader

    prefer_anomalens_reader()
    _import_in_background("scipy.spatial.transform")
    return add_three_plane_menu_item(viewer)


def _import_in_background(module: str) -> None:
    """Import ``module`` on a thread now: napari imports it on a new canvas' first layer, 0.4 s on the UI thread."""
    import importlib
    import sys
    import threading

    if module not in sys.modules:
        threading.Thread(target=importlib.import_module, args=(module,), name=f"import {module}", daemon=True).start()
