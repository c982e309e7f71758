"""Source/sink deformations: tissue pushed away from (source) or pulled toward (sink) a point.

Inside an ellipse, each output pixel at normalised elliptical radius ``ρ`` reads the input along
the same ray at radius ``ρ·g(ρ)`` with ``g(ρ) = 1 ∓ s·(1 − ρ)²``. At ``ρ = 1`` the map is the identity
with a matching first derivative, so there is no seam at the region's edge; ``ρ·g(ρ)`` is increasing for
``s < 1`` (source) and ``s < 3`` (sink), so the map never folds. A source magnifies the centre by
``1/(1 − s)`` (a mass pushing tissue outward); a sink shrinks it (atrophy, a retraction).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import ConfigError
from ._common import as_foreground, as_image, check_range, log_uniform, pick_point

_SOURCE_STRENGTH = (0.5, 0.9)
_SINK_STRENGTH = (0.6, 1.5)


def source_deformation(
    image: np.ndarray,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    *,
    direction: Literal["random", "source", "sink"] = "random",
    radius_range: tuple[float, float] = (0.06, 0.2),
    strength: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deform an elliptical region of the slice around a centre in the tissue.

    Args:
        image: (H, W) slice in [0, 1]; not modified.
        rng: the only source of randomness.
        foreground: tissue mask; the centre lies in it and only its pixels change (``None`` or
            all-False: anywhere).
        direction: ``"source"`` (push outward), ``"sink"`` (pull inward) or ``"random"`` (either).
        radius_range: long semi-axis as a fraction of the shorter side (at least 3 pixels).
        strength: the scaling parameter ``s``; default random in (0.5, 0.9) for a source and
            (0.6, 1.5) for a sink.

    Returns:
        The float32 slice and the deformed region (ellipse ∩ foreground) as a non-empty boolean mask;
        pixels outside it are exactly unchanged. On a flat region the deformation is invisible but the
        region is still returned as the label.
    """
    img = as_image(image)
    shape = img.shape
    fg = as_foreground(foreground, shape)
    check_range("radius_range", radius_range, 0.0)
    if direction not in ("random", "source", "sink"):
        raise ConfigError(f"direction must be 'random', 'source' or 'sink', got {direction!r}.")
    if direction == "random":
        direction = "source" if rng.random() < 0.5 else "sink"
    if strength is None:
        strength = rng.uniform(*(_SOURCE_STRENGTH if direction == "source" else _SINK_STRENGTH))
    limit = 1.0 if direction == "source" else 3.0
    if not (0.0 < strength < limit):
        raise ConfigError(f"A {direction} deformation needs 0 < strength < {limit}, got {strength}.")

    a = max(3.0, min(shape) * rng.uniform(*radius_range))
    b = max(2.0, a / log_uniform(rng, 1.0, 1.6))
    angle = rng.uniform(0.0, np.pi)
    cy, cx = pick_point(rng, shape, fg)

    r = int(np.ceil(a))
    y0, y1 = max(0, cy - r), min(shape[0], cy + r + 1)
    x0, x1 = max(0, cx - r), min(shape[1], cx + r + 1)
    dy = (np.arange(y0, y1) - cy)[:, None].astype(np.float64)
    dx = (np.arange(x0, x1) - cx)[None, :].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    rho = np.sqrt(((c * dy + s * dx) / a) ** 2 + ((-s * dy + c * dx) / b) ** 2)
    region = rho < 1.0
    if fg is not None:
        region &= fg[y0:y1, x0:x1]

    sgn = -1.0 if direction == "source" else 1.0
    g = 1.0 + sgn * strength * (1.0 - rho[region]) ** 2
    ys = cy + np.broadcast_to(dy, rho.shape)[region] * g
    xs = cx + np.broadcast_to(dx, rho.shape)[region] * g
    values = ndimage.map_coordinates(img, [ys, xs], order=1, mode="nearest")

    out = img.copy()
    window = out[y0:y1, x0:x1]
    window[region] = np.clip(values, 0.0, 1.0)
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = region
    return out, mask
