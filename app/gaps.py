"""Say on the canvas when the shown slice is one the reader inserted, not one the scanner sent.

A DICOM series missing slices is read with empty slices at the missing positions (so every real slice
lies where the scanner put it). On screen such a slice was plain black with nothing on it: a reader could
take it for a scan of air, or for a display fault. The docks' status lines said so once, for the whole scan.
"""

from __future__ import annotations

from typing import Any

from ..engine.io.base import gap_indices
from .reader import VOLUME_KEY
from .results import current_index

#: napari canvas overlay key of the label (a text overlay in the top-left corner, under a "marked" label).
GAP_OVERLAY = "anomalens_gap_slice"
GAP_COLOR = "#ffb347"


def gap_overlay(viewer: Any) -> Any:
    """The canvas text overlay for inserted slices (added to napari's canvas overlays on first use)."""
    from napari.components.overlays import TextOverlay

    overlays = viewer.canvas.overlays
    if GAP_OVERLAY not in overlays:
        overlays[GAP_OVERLAY] = TextOverlay(text="", position="top_left", color=GAP_COLOR, font_size=10,
                                            visible=False)
    return overlays[GAP_OVERLAY]


def shown_gap(viewer: Any, layer: Any) -> int | None:
    """The z index shown of ``layer`` when it is an inserted (gap) slice of its scan, else None."""
    if layer is None:
        return None
    volume = layer.metadata.get(VOLUME_KEY) if isinstance(getattr(layer, "metadata", None), dict) else None
    if volume is None or not volume.metadata.get("gap_slices"):
        return None
    z = current_index(viewer, layer)
    return z if z in gap_indices(volume) else None


def show_gap_on_canvas(viewer: Any, layer: Any) -> bool:
    """Label the canvas while ``layer``'s shown slice is an inserted one; returns whether it is."""
    z = shown_gap(viewer, layer) if layer is not None and getattr(layer, "visible", True) else None
    overlays = getattr(getattr(viewer, "canvas", None), "overlays", None)
    if overlays is None or (z is None and GAP_OVERLAY not in overlays):
        return z is not None  # nothing shown, nothing to hide: no overlay is made for scans without gaps
    overlay = gap_overlay(viewer)
    # short lines: one long one ran under the "A" at the top edge's centre
    overlay.text = "" if z is None else f"slice {z}:\nnot in the series\n(inserted empty)"
    overlay.visible = z is not None
    return z is not None
