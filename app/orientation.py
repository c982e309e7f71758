"""Radiological display: where napari puts a scan's voxels, so the screen shows anatomy as radiologists read it.

The convention (the *display frame*), stated once because every layer, letter and crosshair depends on it:

* napari slices along data axes: a world axis that is not displayed must be a data axis, or napari warns and
  slices askew. So world axis ``m`` always runs along data axis ``m`` (array order z, y, x), and it is the
  patient axis (LPS: x right→left, y anterior→posterior, z inferior→superior) nearest to that data axis.
* The in-plane world axes (1 and 2) point where radiological convention wants screen *down* and *right* on
  napari's default 2-D camera (vertical axis increasing downwards, horizontal rightwards): +x (patient left on
  the screen's right), +y (posterior down in an axial slice, on the right in a sagittal one) and -z (superior
  up). An axial slice therefore shows anterior up and the patient's left on the right; coronal and sagittal
  acquisitions show superior up (and anterior on the left in sagittal), whatever the file's voxel order.
* The slice axis (world 0) increases with the slice index, so napari's slider step *is* the file's slice
  number: the slider, the docks, the score curve and "slice 16" in a status line all agree.
* ``world = F @ lps`` with ``F`` a signed permutation (:attr:`Geometry.frame`), and voxel → world is
  ``scale * index + translate`` (negative scales flip): no rotation, no resampling. An oblique scan is drawn
  on its nearest axis-aligned frame (as a PACS shows the acquired slices) anchored at its centre voxel;
  :func:`physical_point` gives the exact LPS position of any voxel.
* Other planes (the three-plane view, or rolled dims) keep this world and choose the display with
  ``dims.order`` and the camera's ``orientation2d`` (:func:`plane_view`); :func:`orientation_letters` reads
  the letters of whatever is displayed from the layer's own scale signs, so they are right in every case.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.volume import Volume

#: Letter at the negative and positive end of each LPS axis (x, y, z).
NEGATIVE_LETTERS = "RAI"
POSITIVE_LETTERS = "LPS"
#: Per LPS axis, the sign that radiological convention puts at screen down (vertical) or right (horizontal).
DISPLAY_SIGN = (1, 1, -1)
#: Plane shown when the slice axis is LPS x, y or z.
PLANE_OF_AXIS = ("sagittal", "coronal", "axial")
#: Canvas-overlay keys and positions of the four edge letters.
LETTER_OVERLAYS = {"top": ("anomalens_orient_top", "top_center"),
                   "bottom": ("anomalens_orient_bottom", "bottom_center"),
                   "left": ("anomalens_orient_left", "middle_left"),
                   "right": ("anomalens_orient_right", "middle_right")}
LETTER_COLOR = "#ffd54a"
LETTER_SIZE = 14

_VOLUME_KEY = "anomalens_volume"  # reader.VOLUME_KEY (reader imports this module)
#: Viewers that have the letters (weakly held: a closed viewer drops out).
_installed: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class Geometry:
    """A volume's place in napari's world (see the module docstring), in data (z, y, x) order.

    ``axes[m]`` is the LPS axis (0 x, 1 y, 2 z) of world axis m and ``signs[m]`` its direction:
    ``world[m] = signs[m] * lps[axes[m]]``. ``scale`` and ``translate`` are the layer's voxel → world map.
    ``oblique_deg`` is how far the scan's axes are from the drawn ones (0 for an axis-aligned scan).
    """

    axes: tuple[int, int, int]
    signs: tuple[int, int, int]
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    oblique_deg: float = 0.0

    @property
    def frame(self) -> np.ndarray:
        """``F`` (3×3, world from LPS): ``world = F @ lps``."""
        f = np.zeros((3, 3))
        for m, (a, s) in enumerate(zip(self.axes, self.signs, strict=True)):
            f[m, a] = s
        return f

    def lps_to_world(self, lps: Any) -> np.ndarray:
        """World (napari) coordinates of LPS points (..., 3)."""
        return np.asarray(lps, dtype=float) @ self.frame.T

    def world_to_lps(self, world: Any) -> np.ndarray:
        """LPS coordinates of world (napari) points (..., 3)."""
        return np.asarray(world, dtype=float) @ self.frame

    def index_to_world(self, zyx: Any) -> np.ndarray:
        """World coordinates of voxel indices (..., 3) in (z, y, x) order, as napari's layer maps them."""
        return np.asarray(zyx, dtype=float) * np.asarray(self.scale) + np.asarray(self.translate)

    @property
    def plane(self) -> str:
        """The plane the slices are in: ``axial``, ``coronal`` or ``sagittal``."""
        return PLANE_OF_AXIS[self.axes[0]]

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``viewer.add_image``/``add_labels`` (or a layer-data tuple)."""
        return {"scale": self.scale, "translate": self.translate, "units": ("mm", "mm", "mm")}


def _direction(volume: Volume) -> np.ndarray:
    return np.asarray(volume.direction, dtype=float).reshape(3, 3)


def physical_point(volume: Volume, zyx: Any) -> np.ndarray:
    """The exact LPS position (mm) of voxel indices (..., 3) given in (z, y, x) order (SimpleITK's own formula)."""
    ijk = np.asarray(zyx, dtype=float)[..., ::-1]
    return np.asarray(volume.origin) + (ijk * np.asarray(volume.spacing)) @ _direction(volume).T


def _nearest_axes(d: np.ndarray) -> tuple[int, int, int]:
    """LPS axis of each data axis (z, y, x order): the signed permutation nearest to the direction cosines."""
    cols = (2, 1, 0)  # data axis m is SimpleITK index axis 2 - m (k, j, i)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[m], cols[m]]) for m in range(3)))
    return best[0], best[1], best[2]


def geometry(volume: Volume) -> Geometry:
    """The display geometry of ``volume`` (see the module docstring)."""
    d = _direction(volume)
    axes = _nearest_axes(d)
    cols = (2, 1, 0)
    along = [1 if d[axes[m], cols[m]] >= 0 else -1 for m in range(3)]  # LPS sign of increasing index m
    signs = (along[0], DISPLAY_SIGN[axes[1]], DISPLAY_SIGN[axes[2]])
    spacing = volume.spacing_zyx
    scale = tuple(float(signs[m] * along[m] * spacing[m]) for m in range(3))
    snapped = np.zeros((3, 3))
    for m in range(3):
        snapped[axes[m], cols[m]] = along[m]
    frame = np.zeros((3, 3))
    for m in range(3):
        frame[m, axes[m]] = signs[m]
    # Anchor at the centre voxel: exact for an axis-aligned scan (d - snapped is exactly zero), and an
    # oblique one is off by the least there.
    centre_ijk = (np.asarray(volume.shape[::-1], dtype=float) - 1.0) / 2.0
    translate = frame @ np.asarray(volume.origin) + frame @ ((d - snapped) @ (centre_ijk * np.asarray(volume.spacing)))
    cos = np.clip(np.abs(np.sum(d * snapped, axis=0)), -1.0, 1.0)
    oblique = float(np.degrees(np.arccos(cos.min())))
    translate = tuple(float(t) for t in translate)
    return Geometry(axes, signs, _reachable(scale, translate, volume.shape), translate, oblique)  # type: ignore[arg-type]


def layer_geometry(volume: Volume) -> dict[str, Any]:
    """``add_image``/``add_labels`` keyword arguments (scale, translate, units) placing ``volume`` radiologically."""
    return geometry(volume).kwargs()


def _steps(scale: tuple[float, ...], translate: tuple[float, ...], shape: tuple[int, ...]) -> list[int]:
    """How many slider steps napari gives each axis of a layer with this transform (its own arithmetic)."""
    from napari.utils.transforms import Affine, CompositeAffine

    tf = CompositeAffine(scale=scale, translate=translate, ndim=len(shape)).compose(Affine(ndim=len(shape)))
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in shape])), dtype=float)
    world = tf(corners)
    lo, hi, step = world.min(axis=0), world.max(axis=0), np.abs(tf.scale)
    return [int((h - lw) / s) + 1 for lw, h, s in zip(lo, hi, step, strict=True)]


def _reachable(scale: tuple[float, ...], translate: tuple[float, ...], shape: tuple[int, ...]) -> tuple[float, ...]:
    """``scale`` moved by a few units in the last place where napari would otherwise lose the last slice.

    napari counts an axis' steps as ``int((max - min) / step) + 1`` in floating point: with brain1's spacing of
    6.499999999999998 mm, 24 steps come out as 23.999999999999996 and the slider stops one slice short (the
    same happens to row 255 of 256). A spacing one or two units in the last place away (1e-15 mm: nothing a
    scanner could measure) gives the exact count; napari's own transform classes do the counting here.
    """
    out = list(scale)
    for m, n in enumerate(shape):
        if n < 2 or _steps(tuple(out), translate, shape)[m] == n:
            continue
        base = out[m]
        for k in (1, -1, 2, -2, 3, -3, 4, -4, 6, -6, 8, -8):
            cand = base
            for _ in range(abs(k)):
                cand = math.nextafter(cand, math.inf if (k > 0) == (base > 0) else -math.inf)
            out[m] = cand
            if _steps(tuple(out), translate, shape)[m] == n:
                break
        else:
            out[m] = base
    return tuple(out)


# -- which way is which on the screen ------------------------------------------------------------------

def world_letters(volume: Volume, layer_scale: Any = None) -> list[tuple[str, str]]:
    """(negative end, positive end) letters of each world axis of a layer showing ``volume``.

    ``layer_scale`` is the layer's own scale (its signs say which way each data axis runs in the world);
    None: the scale :func:`layer_geometry` gives.
    """
    d = _direction(volume)
    axes = _nearest_axes(d)
    cols = (2, 1, 0)
    scale = geometry(volume).scale if layer_scale is None else tuple(float(s) for s in layer_scale)[-3:]
    out = []
    for m in range(3):
        lps_sign = (1 if d[axes[m], cols[m]] >= 0 else -1) * (1 if scale[m] >= 0 else -1)
        pos, neg = POSITIVE_LETTERS[axes[m]], NEGATIVE_LETTERS[axes[m]]
        out.append((neg, pos) if lps_sign > 0 else (pos, neg))
    return out


def orientation_letters(volume: Volume, displayed_axes: Any, orientation2d: Any = ("down", "right"),
                        layer_scale: Any = None) -> dict[str, str]:
    """The patient direction at each canvas edge: ``{"top": "A", "bottom": "P", "left": "R", "right": "L"}``.

    Args:
        volume: the scan the layer shows.
        displayed_axes: the layer's displayed data axes (vertical, horizontal), e.g. ``viewer.dims.displayed``.
        orientation2d: napari's ``camera.orientation2d`` (which way the vertical and horizontal axes increase).
        layer_scale: the layer's scale (None: :func:`layer_geometry`'s).
    """
    v, h = (int(a) for a in tuple(displayed_axes)[-2:])
    letters = world_letters(volume, layer_scale)
    down = str(getattr(orientation2d[0], "value", orientation2d[0])) == "down"
    right = str(getattr(orientation2d[1], "value", orientation2d[1])) == "right"
    top, bottom = letters[v] if down else letters[v][::-1]
    left, rgt = letters[h] if right else letters[h][::-1]
    return {"top": top, "bottom": bottom, "left": left, "right": rgt}


def plane_view(volume: Volume, plane: str) -> tuple[tuple[int, int, int], tuple[str, str]]:
    """(``dims.order``, ``camera.orientation2d``) showing ``plane`` of a layer placed by :func:`layer_geometry`.

    The vertical axis is the higher LPS axis of the plane (z over y over x) and the horizontal one the lower;
    each screen direction follows :data:`DISPLAY_SIGN` (superior up, posterior down or right, left on the right).
    """
    g = geometry(volume)
    lps_slice = PLANE_OF_AXIS.index(plane)
    by_lps = {a: m for m, a in enumerate(g.axes)}
    in_plane = sorted((a for a in range(3) if a != lps_slice), reverse=True)
    vertical, horizontal = by_lps[in_plane[0]], by_lps[in_plane[1]]
    order = (by_lps[lps_slice], vertical, horizontal)
    orient = ("down" if g.signs[vertical] == DISPLAY_SIGN[g.axes[vertical]] else "up",
              "right" if g.signs[horizontal] == DISPLAY_SIGN[g.axes[horizontal]] else "left")
    return order, orient


# -- the letters on a viewer's canvas -----------------------------------------------------------------

def reference_layer(viewer: Any) -> Any:
    """The scan whose orientation the letters show: the selected scan layer, else the lowest scan layer."""
    def has_volume(layer: Any) -> bool:
        return isinstance(getattr(layer, "metadata", None), dict) and isinstance(layer.metadata.get(_VOLUME_KEY),
                                                                                 Volume)

    active = viewer.layers.selection.active
    if active is not None and has_volume(active):
        return active
    return next((lyr for lyr in viewer.layers if has_volume(lyr)), None)


def _text_overlays(viewer: Any) -> Any:
    canvas = getattr(viewer, "canvas", None)
    return getattr(canvas, "overlays", None)


def viewer_letters(viewer: Any) -> dict[str, str] | None:
    """The edge letters for what ``viewer`` shows now; None when unknown (no scan, 3-D, a rotated layer)."""
    layer = reference_layer(viewer)
    if layer is None or viewer.dims.ndisplay != 2 or layer.ndim != 3:
        return None
    if layer.metadata[_VOLUME_KEY].metadata.get("patient_geometry") is False:
        return None  # a PNG/JPEG/TIFF picture: no patient directions to letter (a photo got A/P/R/L)
    lin = np.asarray(layer.affine.linear_matrix, dtype=float)
    if (not np.allclose(lin, np.diag(np.diag(lin))) or not np.allclose(layer.rotate, np.eye(3))
            or not np.allclose(layer.shear, 0.0)):
        return None  # turned by hand: no axis-aligned letters to give
    displayed = [a - (viewer.dims.ndim - 3) for a in viewer.dims.displayed]
    if min(displayed) < 0:
        return None
    scale = np.asarray(layer.scale, dtype=float) * np.sign(np.diag(lin))
    return orientation_letters(layer.metadata[_VOLUME_KEY], displayed, camera_of(viewer).orientation2d, scale)


def update_orientation_overlay(viewer: Any) -> dict[str, str] | None:
    """Write the edge letters for what ``viewer`` shows now (hidden when unknown); returns them."""
    overlays = _text_overlays(viewer)
    if overlays is None:
        return None
    letters = viewer_letters(viewer)
    for edge, (key, _pos) in LETTER_OVERLAYS.items():
        if key in overlays:
            ov = overlays[key]
            ov.text = letters[edge] if letters else ""
            ov.visible = letters is not None
    return letters


def camera_of(viewer: Any) -> Any:
    """A viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def show_native_plane(viewer: Any, layer: Any) -> bool:
    """Show ``layer``'s acquired plane radiologically (``dims.order``, camera orientation); True if it changed.

    Needed only for an in-plane transposed file (its rows run where the screen's vertical axis should):
    napari cannot swap two data axes by a transform, so the view swaps them. Every other file is already
    radiological through :func:`layer_geometry` alone.
    """
    vol = layer.metadata.get(_VOLUME_KEY) if isinstance(getattr(layer, "metadata", None), dict) else None
    dims = viewer.dims
    if not isinstance(vol, Volume) or layer.ndim != 3 or dims.ndim != 3 or dims.ndisplay != 2:
        return False
    if not np.allclose(np.asarray(layer.scale, dtype=float), geometry(vol).scale):
        return False  # placed by someone else: its world is not our display frame
    order, orient = plane_view(vol, geometry(vol).plane)
    camera = camera_of(viewer)
    current = tuple(str(getattr(o, "value", o)) for o in camera.orientation2d)
    changed = tuple(dims.order) != order or current != orient
    if tuple(dims.order) != order:
        dims.order = order
    if current != orient:
        camera.orientation2d = orient
    return changed


#: Slider labels: the plane a slider steps through, as PACS viewers abbreviate it (napari's label box is narrow).
PLANE_LABEL = {"axial": "AX", "coronal": "COR", "sagittal": "SAG"}


def axis_labels(volume: Volume) -> tuple[str, str, str]:
    """The plane each world axis' slider steps through (``AX`` for the slices of an axial scan)."""
    return tuple(PLANE_LABEL[PLANE_OF_AXIS[a]] for a in geometry(volume).axes)  # type: ignore[return-value]


def label_axes(viewer: Any, layer: Any) -> bool:
    """Name the sliders by plane ("AX" beside the slice slider, not napari's "-3"); True if they changed.

    Only a viewer showing this one 3-D grid is labelled: napari's labels belong to world axes, which other
    layers may use otherwise.
    """
    vol = layer.metadata.get(_VOLUME_KEY) if isinstance(getattr(layer, "metadata", None), dict) else None
    if not isinstance(vol, Volume) or layer.ndim != 3 or viewer.dims.ndim != 3:
        return False
    labels = axis_labels(vol)
    if tuple(viewer.dims.axis_labels) == labels:
        return False
    viewer.dims.axis_labels = labels
    return True


def _letter_overlay(position: str, **kwargs: Any) -> Any:
    from napari.components.overlays import TextOverlay

    return TextOverlay(position=position, font_size=LETTER_SIZE, color=LETTER_COLOR, **kwargs)


def show_some_letters(viewer: Any, edges: tuple[str, ...]) -> None:
    """Put the letters of ``edges`` on ``viewer``'s canvas now, before :func:`install_orientation_overlay`.

    A canvas' first text costs a shader program per letter and its glyphs: the three-plane view brings a
    new canvas' letters in two halves, a paint each, so neither holds the UI thread long.
    """
    overlays = _text_overlays(viewer)
    letters = viewer_letters(viewer)
    if overlays is None or letters is None:
        return
    for edge in edges:
        key, pos = LETTER_OVERLAYS[edge]
        if key not in overlays:
            overlays[key] = _letter_overlay(pos, text=letters[edge], visible=True)


def install_orientation_overlay(viewer: Any, follow_scan: bool = True) -> bool:
    """Put A/P/L/R/S/I letters on the canvas edges of ``viewer``, kept current (once per viewer; True if new).

    With ``follow_scan`` a newly chosen reference scan is also shown in its acquired plane
    (:func:`show_native_plane`); the three-plane view's extra canvases choose their own planes.
    """
    overlays = _text_overlays(viewer)
    if overlays is None or _installed.get(id(viewer)) is viewer:
        return False
    for key, pos in LETTER_OVERLAYS.values():
        if key not in overlays:
            overlays[key] = _letter_overlay(pos, visible=False)
    shown: dict[str, int] = {}

    def update(*_: Any) -> None:
        layer = reference_layer(viewer)
        if follow_scan and layer is not None and shown.get("layer") != id(layer):
            shown["layer"] = id(layer)
            show_native_plane(viewer, layer)
        if layer is not None:
            label_axes(viewer, layer)
        update_orientation_overlay(viewer)

    viewer.layers.events.inserted.connect(update)
    viewer.layers.events.removed.connect(update)
    viewer.layers.events.moved.connect(update)
    viewer.layers.selection.events.active.connect(update)
    viewer.dims.events.order.connect(update)
    viewer.dims.events.ndisplay.connect(update)
    camera_of(viewer).events.orientation.connect(update)
    _installed[id(viewer)] = viewer
    update()
    return True


# -- layers that must lie exactly on another layer's grid ----------------------------------------------

def same_geometry(layer: Any) -> dict[str, Any]:
    """Keyword arguments placing a new layer exactly on ``layer``'s grid (its last three axes).

    Scale, translation, rotation, shear, affine and units, copied: a heatmap, mask or marker made from a
    scan layer stays on it whichever reader (or script) placed the scan.
    """
    def last3(values: Any) -> tuple:
        return tuple(np.asarray(values, dtype=float).tolist())[-3:]

    out: dict[str, Any] = {"scale": last3(layer.scale), "translate": last3(layer.translate)}
    if layer.ndim == 3:  # rotate/shear/affine are ndim-square: copy them only when they are 3-D already
        out.update(rotate=np.asarray(layer.rotate), shear=np.asarray(layer.shear),
                   affine=np.asarray(layer.affine.affine_matrix))
    units = getattr(layer, "units", None)
    if units:
        out["units"] = tuple(str(u) for u in units)[-3:]
    return out


def result_geometry(source: Any, volume: Volume) -> tuple[tuple[float, ...], dict[str, Any]]:
    """(scale, other keyword arguments) for a result layer of ``volume``: the scan layer's own geometry.

    ``source`` is the scan layer (None when it was removed): then the geometry our reader gives ``volume``.
    """
    if source is not None and tuple(np.shape(source.data))[-3:] == tuple(volume.shape):
        geo = same_geometry(source)
    else:
        geo = layer_geometry(volume)
    scale = geo.pop("scale")
    return scale, geo
