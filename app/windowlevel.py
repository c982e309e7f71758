"""Window/level on the canvas: a preset chooser (the file's own windows, the modality's presets, auto) and right-drag.

A radiologist sets the display window two ways: by name (CT brain, lung, bone…) and by dragging the right
mouse button on the image, horizontally for the width and vertically for the level. Both act on the scan
under the cursor's layer stack: the selected image layer when it is a grey-level scan, else the scan the
AnomaLens docks work on. Every named window goes through ``engine.windows.window_to_limits`` (the function
the reader and the exports use), so the numbers on screen are the presets file's. Percentile "auto" windows
are the engine's ``percentile_limits``, computed once per layer's data. Nothing here computes on the image
while dragging: a drag only changes two numbers (napari's ``contrast_limits``, a shader uniform).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QWidget

from ..engine.errors import ConfigError
from ..engine.windows import load_presets, percentile_limits, window_to_limits
from .messages import say
from .reader import ROLE_KEY, VOLUME_KEY

if TYPE_CHECKING:
    import napari

#: Horizontal drag that doubles (right) or halves (left) the window width, in screen pixels.
DRAG_PIXELS_PER_DOUBLING = 200.0
#: Vertical drag that moves the level by one window width (down: higher level, a darker image), in pixels.
DRAG_PIXELS_PER_WIDTH = 200.0
#: Napari's button number of the right mouse button.
RIGHT_BUTTON = 2
#: Text of the combo entry shown when the window matches no choice (after a drag or napari's own slider).
CUSTOM = "Custom"
#: Modalities whose presets are in absolute units (Hounsfield units); others get auto and the file's windows.
_ABSOLUTE = ("CT",)


@dataclass(frozen=True)
class WindowChoice:
    """One entry of the chooser: a named centre/width, or ``auto`` (percentiles of the scan itself)."""

    label: str
    source: str  # "file", "preset" or "auto"
    center: float | None = None
    width: float | None = None

    def limits(self, layer: Any) -> tuple[float, float]:
        """The display limits this choice gives ``layer`` (auto: the scan's own percentiles).

        Raises:
            ConfigError: a named window is not a window (non-finite, width below 1).
        """
        if self.source == "auto":
            return auto_limits(layer)
        return window_to_limits(float(self.center), float(self.width))  # type: ignore[arg-type]


def _text(center: float, width: float) -> str:
    return f"W {width:g} L {center:g}"


def modality_of(layer: Any) -> str:
    """The layer's modality as the reader recorded it ("OT" when unknown)."""
    meta = getattr(layer, "metadata", None) or {}
    vol = meta.get(VOLUME_KEY)
    return str(getattr(vol, "modality", None) or meta.get("modality") or "OT").upper()


def _looks_like_hounsfield(layer: Any) -> bool:
    """A scan of unknown modality whose values span air to bone in HU (napari's own reader records none)."""
    try:
        lo, hi = (float(v) for v in layer.contrast_limits_range)
    except (AttributeError, TypeError, ValueError):
        return False
    return lo <= -900.0 and hi >= 300.0


def choices_for(layer: Any) -> list[WindowChoice]:
    """The windows offered for ``layer``: the file's own first, then the modality's presets, then auto.

    CT (or a scan of unknown modality with Hounsfield-like values) gets every CT preset of the presets file;
    MR and other modalities without absolute units get auto only (besides the file's own windows).
    """
    if layer is None:
        return []
    out: list[WindowChoice] = []
    vol = (getattr(layer, "metadata", None) or {}).get(VOLUME_KEY)
    for i, w in enumerate(getattr(vol, "windows", None) or []):
        try:
            window_to_limits(w.center, w.width)
        except ConfigError:
            continue  # a broken window in a header is not offered (the reader skipped it too)
        name = (w.name or f"window {i + 1}").strip()
        out.append(WindowChoice(f"File: {name} ({_text(w.center, w.width)})", "file", float(w.center), float(w.width)))
    modality = modality_of(layer)
    table = load_presets()
    absolute = modality in _ABSOLUTE or (modality in ("OT", "") and _looks_like_hounsfield(layer))
    if absolute:
        for p in table.for_modality("CT"):
            out.append(WindowChoice(f"CT {p.name} ({_text(p.center, p.width)})", "preset", p.center, p.width))
    lo, hi = table.fallback_percentiles
    label = f"auto ({lo:g}–{hi:g} %)"
    out.append(WindowChoice(f"{modality} {label}" if modality not in ("OT", "") and not absolute
                            else label.capitalize(), "auto"))
    return out


_AUTO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def auto_limits(layer: Any) -> tuple[float, float]:
    """Percentile limits of the layer's scan (``engine.windows.percentile_limits``), computed once per data."""
    data = layer.data
    hit = _AUTO.get(layer)
    if hit is not None and hit[0] == id(data):
        return hit[1]
    vol = (getattr(layer, "metadata", None) or {}).get(VOLUME_KEY)
    array = vol.array if vol is not None and tuple(vol.shape) == tuple(np.shape(data)) else np.asarray(data)
    limits = percentile_limits(array, load_presets().fallback_percentiles)
    _AUTO[layer] = (id(data), limits)
    return limits


def window_of(layer: Any) -> tuple[float, float]:
    """(centre, width) of the layer's current contrast limits."""
    lo, hi = (float(v) for v in layer.contrast_limits)
    return ((lo + hi) / 2.0, hi - lo)


def apply_window(layer: Any, limits: tuple[float, float]) -> None:
    """Show ``layer`` with these limits (napari widens the slider's range when they fall outside it)."""
    lo, hi = float(limits[0]), float(limits[1])
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return
    layer.contrast_limits = (lo, hi)


def apply_choice(layer: Any, choice: WindowChoice) -> tuple[float, float]:
    """Apply a choice to ``layer`` and record where its window came from; returns the limits."""
    limits = choice.limits(layer)
    apply_window(layer, limits)
    if isinstance(getattr(layer, "metadata", None), dict):
        layer.metadata["window_source"] = choice.label
    return limits


def matching_choice(layer: Any, choices: list[WindowChoice] | None = None) -> int | None:
    """Index of the choice whose limits the layer shows now (None: a custom window)."""
    if layer is None:
        return None
    choices = choices_for(layer) if choices is None else choices
    now = np.asarray(layer.contrast_limits, dtype=float)
    tol = max(1e-6, 1e-4 * float(abs(now[1] - now[0])))
    for i, c in enumerate(choices):
        try:
            if np.allclose(now, c.limits(layer), atol=tol, rtol=0):
                return i
        except ConfigError:
            continue
    return None


def is_scan_image(layer: Any) -> bool:
    """A grey-level image that shows anatomy (not a heatmap, not RGB)."""
    from napari.layers import Image

    return (isinstance(layer, Image) and not getattr(layer, "rgb", False)
            and (layer.metadata or {}).get(ROLE_KEY) not in ("heatmap",))


def target_layer(viewer: napari.Viewer) -> Any:
    """The scan whose window the chooser and right-drag set.

    The selected layer when it is a grey-level scan image (the user chose it); else the topmost visible
    AnomaLens scan layer, else the topmost scan image. A selected mask or heatmap does not take the window
    away from the scan under it.
    """
    active = viewer.layers.selection.active
    if active is not None and is_scan_image(active):
        return active
    images = [lyr for lyr in reversed(list(viewer.layers)) if is_scan_image(lyr)]
    for pick in (lambda lyr: lyr.visible and (lyr.metadata or {}).get(ROLE_KEY) == "scan",
                 lambda lyr: lyr.visible, lambda lyr: True):
        found = [lyr for lyr in images if pick(lyr)]
        if found:
            return found[0]
    return None


def cycle(viewer: napari.Viewer, step: int = 1) -> WindowChoice | None:
    """Apply the next (``step`` 1) or previous (-1) window of the target scan's list, wrapping around."""
    layer = target_layer(viewer)
    choices = choices_for(layer)
    if not choices:
        say(viewer, "no scan to window")
        return None
    now = matching_choice(layer, choices)
    i = (now + step) % len(choices) if now is not None else (0 if step > 0 else len(choices) - 1)
    apply_choice(layer, choices[i])
    say(viewer, f"window: {choices[i].label}")
    return choices[i]


def drag_limits(center: float, width: float, dx: float, dy: float) -> tuple[float, float]:
    """Limits after a right-drag of (dx, dy) screen pixels from a window of ``center``/``width``.

    Scale-free, so it feels the same on Hounsfield units and on MR's arbitrary ones: right doubles the
    width every ``DRAG_PIXELS_PER_DOUBLING`` pixels (more grey levels, less contrast), left narrows it;
    down raises the level by one starting width every ``DRAG_PIXELS_PER_WIDTH`` pixels (a darker image),
    up lowers it. The width never drops below 1 (DICOM's smallest window) unless it started below.
    """
    w = max(float(width) * 2.0 ** (float(dx) / DRAG_PIXELS_PER_DOUBLING), min(1.0, float(width)), 1e-6)
    c = float(center) + float(dy) * float(width) / DRAG_PIXELS_PER_WIDTH
    return (c - w / 2.0, c + w / 2.0)


def _camera(viewer: napari.Viewer) -> Any:
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def window_level_drag(viewer: napari.Viewer, event: Any) -> Generator[None, None, None]:
    """Right-drag on the canvas sets the target scan's window and level (a napari drag callback).

    vispy's camera zooms on a right-drag; that is switched off for the drag (``mouse_pan``, which also
    gates its right-button zoom) and put back on release. Active tools of other layers keep the right
    button (a labels layer in paint mode, say): only pan/zoom mode windows.
    """
    if getattr(event, "button", None) != RIGHT_BUTTON or tuple(getattr(event, "modifiers", ()) or ()):
        return
    active = viewer.layers.selection.active
    if active is not None and str(getattr(active, "mode", "pan_zoom")) != "pan_zoom":
        return
    layer = target_layer(viewer)
    if layer is None:
        return
    camera = _camera(viewer)
    pan = camera.mouse_pan
    camera.mouse_pan = False
    x0, y0 = (float(v) for v in event.pos[:2])
    center, width = window_of(layer)
    try:
        yield
        while event.type == "mouse_move":
            x, y = (float(v) for v in event.pos[:2])
            apply_window(layer, drag_limits(center, width, x - x0, y - y0))
            event.handled = True
            yield
        if getattr(event, "pos", None) is not None:  # the release: moves napari dropped under load still count
            x, y = (float(v) for v in event.pos[:2])
            apply_window(layer, drag_limits(center, width, x - x0, y - y0))
    finally:
        camera.mouse_pan = pan
    c, w = window_of(layer)
    say(viewer, f"window {_text(round(c, 1), round(w, 1))}")


def install_right_drag(viewer: napari.Viewer) -> None:
    """Add the right-drag window/level to the viewer's canvas (once)."""
    if window_level_drag not in viewer.mouse_drag_callbacks:
        viewer.mouse_drag_callbacks.append(window_level_drag)


class WindowLevelBar(QWidget):
    """"W/L [preset ▾] W 80 L 40": the chooser of the target scan's windows, and its current window.

    The list follows the target scan (the selected layer, else the AnomaLens scan); a window set by a drag
    or by napari's contrast slider shows as "Custom" with its numbers.
    """

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.combo = QComboBox()
        self.combo.setToolTip("Window/level preset of the scan (W/Shift+W cycle; right-drag on the image: "
                              "horizontal = width, vertical = level)")
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(24)  # "CT mediastinum (W 350 L 50)" reads whole
        self.readout = QLabel("")
        self.readout.setMinimumWidth(110)
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        row.addWidget(QLabel("W/L"))
        row.addWidget(self.combo)
        row.addWidget(self.readout)
        self.choices: list[WindowChoice] = []
        self._layer: Any = None
        self.combo.activated.connect(self._on_activated)
        viewer.layers.selection.events.active.connect(self.retarget)
        viewer.layers.events.inserted.connect(self.retarget)
        viewer.layers.events.removed.connect(self.retarget)
        self.retarget()

    @property
    def layer(self) -> Any:
        return self._layer

    def retarget(self, event: Any = None) -> None:
        """Follow the target scan: rebuild the list when it changed, then show its current window."""
        layer = target_layer(self.viewer)
        if layer is not self._layer:
            if self._layer is not None:
                try:
                    self._layer.events.contrast_limits.disconnect(self.sync)
                except (RuntimeError, TypeError, ValueError):
                    pass
            self._layer = layer
            self.choices = choices_for(layer)
            self.combo.blockSignals(True)
            self.combo.clear()
            self.combo.addItems([c.label for c in self.choices])
            self.combo.addItem(CUSTOM)
            view = self.combo.view()
            view.setMinimumWidth(view.sizeHintForColumn(0) + 24)  # the list shows every label whole
            self.combo.blockSignals(False)
            if layer is not None:
                layer.events.contrast_limits.connect(self.sync)
        self.setEnabled(layer is not None)
        self.sync()

    def sync(self, event: Any = None) -> None:
        """Show the layer's window in the readout and the matching choice (or Custom) in the combo."""
        layer = self._layer
        if layer is None:
            self.readout.setText("")
            return
        c, w = window_of(layer)
        self.readout.setText(_text(float(f"{c:.4g}"), float(f"{w:.4g}")))
        i = matching_choice(layer, self.choices)
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(i if i is not None else self.combo.count() - 1)
        self.combo.blockSignals(False)

    def choose(self, label: str) -> bool:
        """Apply the choice whose label starts with ``label`` (case-insensitive); False when there is none."""
        want = label.strip().lower()
        for i, c in enumerate(self.choices):
            if c.label.lower().startswith(want):
                self.combo.setCurrentIndex(i)
                self._on_activated(i)
                return True
        return False

    def _on_activated(self, index: int) -> None:
        if self._layer is None or not 0 <= index < len(self.choices):
            self.sync()
            return
        apply_choice(self._layer, self.choices[index])
        say(self.viewer, f"window: {self.choices[index].label}")
        self.sync()
