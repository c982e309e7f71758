"""Lesions of a given physical size, for checking that SCR keeps what a reader must see.

The training generators size their anomalies as a share of the slice; calibration needs the opposite: a
lesion of a stated in-plane diameter in millimetres (5–10 mm by default, the smallest size that radiology
reporting guidelines act on for brain metastases and lung nodules), so "SCR keeps lesions of 5 mm" can be
measured on a site's own normal slices (``engine.postprocess.calibrate``).

Each lesion is an elliptical blob like :func:`~.intensity.gaussian_intensity`'s (the same amplitude range,
the same random sign turned where the tissue has no headroom), but flat-topped with a soft rim so its
label is a definite area: the ellipse whose short axis is the drawn diameter. The tissue's own texture stays
under the blob, with a little texture of its own (smoothed noise modulating the amplitude), so it is not a
flat plate. The lesion lies wholly inside the tissue where there is room, and lesions on one slice do not
touch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, InvalidVolumeError
from ._common import as_foreground, as_image, check_range, log_uniform

#: Peak intensity change, as the Gaussian intensity anomalies of training use (``gaussian_intensity``).
AMPLITUDE_RANGE = (0.15, 0.5)
#: In-plane diameters, in mm: the smallest lesions reporting guidelines act on, up to twice that.
DIAMETER_MM = (5.0, 10.0)
#: Long axis over short axis: lesions are round-ish, never thinner than the drawn diameter.
ASPECT_RANGE = (1.0, 1.3)
#: The blob is full strength within this share of its radius and fades to zero at 2 − this share: 0.75 is
#: a well-defined mass, smaller values a diffuse lesion whose edge melts into the tissue.
PLATEAU = 0.75
#: Relative strength of the lesion's own texture (smoothed noise modulating its amplitude).
_TEXTURE = 0.25


def sized_lesion(
    image: np.ndarray,
    rng: np.random.Generator,
    foreground: np.ndarray | None = None,
    *,
    diameter_px: float,
    amplitude_range: tuple[float, float] = AMPLITUDE_RANGE,
    aspect_range: tuple[float, float] = ASPECT_RANGE,
    avoid: np.ndarray | None = None,
    plateau: float = PLATEAU,
) -> tuple[np.ndarray, np.ndarray]:
    """Add one lesion whose short in-plane axis is ``diameter_px`` pixels.

    Args:
        image: (H, W) slice in [0, 1]; not modified.
        rng: the only source of randomness.
        foreground: tissue mask; the lesion lies inside it where it fits (``None`` or all-False: anywhere).
        diameter_px: the lesion's short axis in pixels (at least 2).
        amplitude_range: peak intensity change, drawn log-uniformly.
        aspect_range: long axis over short axis.
        avoid: pixels the lesion (and a small gap around it) must not cover, e.g. other lesions' labels.
        plateau: share of the radius at full strength (``PLATEAU``); the rim fades to zero at 2 − plateau.

    Returns:
        The float32 slice (clipped to [0, 1]) and the lesion's non-empty boolean label (the ellipse where the
        blob is at least half its strength, within the tissue).
    """
    img = as_image(image)
    shape = img.shape
    fg = as_foreground(foreground, shape)
    check_range("amplitude_range", amplitude_range, 0.0, 1.0)
    check_range("aspect_range", aspect_range, 1.0)
    if not 0.0 < plateau < 1.0:
        raise ConfigError(f"a lesion's plateau must be a share of its radius in (0, 1), got {plateau!r}")
    if not (np.isfinite(diameter_px) and diameter_px >= 2.0):
        raise ConfigError(f"a lesion needs a diameter of at least 2 pixels, got {diameter_px!r}")
    if min(shape) < 2 * diameter_px:
        raise InvalidVolumeError(f"a {diameter_px:.1f}-pixel lesion does not fit a slice of {shape}")

    short = diameter_px / 2.0
    long = short * float(rng.uniform(*aspect_range))
    reach = long * (2.0 - plateau)  # where the soft rim reaches zero
    cy, cx = _place(rng, shape, fg, avoid, long, reach)
    angle = rng.uniform(0.0, np.pi)
    r = int(np.ceil(reach)) + 1
    y0, y1 = max(0, cy - r), min(shape[0], cy + r + 1)
    x0, x1 = max(0, cx - r), min(shape[1], cx + r + 1)
    dy = (np.arange(y0, y1) - cy)[:, None].astype(np.float64)
    dx = (np.arange(x0, x1) - cx)[None, :].astype(np.float64)
    c, s = np.cos(angle), np.sin(angle)
    rho = np.sqrt(((c * dy + s * dx) / long) ** 2 + ((-s * dy + c * dx) / short) ** 2)
    # 1 inside the plateau, a raised-cosine rim to 0 at 2 − plateau: exactly ½ at ρ = 1 (the label's edge).
    t = np.clip((rho - plateau) / (2.0 * (1.0 - plateau)), 0.0, 1.0)
    profile = 0.5 * (1.0 + np.cos(np.pi * t))
    noise = ndimage.gaussian_filter(rng.standard_normal(profile.shape), max(1.0, short / 2.0))
    noise /= max(float(noise.std()), 1e-6)
    profile = profile * (1.0 + _TEXTURE * np.clip(noise, -2.0, 2.0))

    # Contrast is a scale: log-uniform draws give faint lesions (the ones SCR endangers) as often as strong ones.
    amp = log_uniform(rng, *amplitude_range) if amplitude_range[0] > 0 else float(rng.uniform(*amplitude_range))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    old = img[y0:y1, x0:x1]
    local = rho <= 1.0
    level = float(old[local].mean())
    if sign > 0 and 1.0 - level < 0.5 * amp and level >= 0.5 * amp:
        sign = -1.0
    elif sign < 0 and level < 0.5 * amp and 1.0 - level >= 0.5 * amp:
        sign = 1.0
    new = np.clip(old + (sign * amp) * profile, 0.0, 1.0).astype(np.float32)
    if fg is not None:
        inside = fg[y0:y1, x0:x1]
        new = np.where(inside, new, old)
        if (local & inside).any():
            local &= inside
    out = img.copy()
    out[y0:y1, x0:x1] = new
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = local
    return out, mask


def _place(rng: np.random.Generator, shape: tuple[int, ...], fg: np.ndarray | None, avoid: np.ndarray | None,
           long: float, reach: float) -> tuple[int, int]:
    """A centre whose lesion lies inside the tissue and clear of ``avoid``; the roomiest point if none is."""
    room = np.ones(shape, bool) if fg is None else fg
    # Distance to the nearest non-tissue pixel, with the slice's edge counting as non-tissue.
    dist = ndimage.distance_transform_edt(np.pad(room, 1))[1:-1, 1:-1]
    if avoid is not None and np.any(avoid):
        dist = np.minimum(dist, ndimage.distance_transform_edt(~np.asarray(avoid, bool)) - reach)
    ok = np.flatnonzero(dist.ravel() >= long + 2.0)
    if ok.size == 0:
        best = float(dist.max())
        ok = np.flatnonzero(dist.ravel() >= best - 0.5)
    flat = int(ok[rng.integers(ok.size)])
    y, x = divmod(flat, shape[1])
    return int(y), int(x)


def lesion_slices(
    images: np.ndarray,
    rng: np.random.Generator,
    foregrounds: np.ndarray | None = None,
    *,
    pixel_mm: float,
    diameter_mm: tuple[float, float] = DIAMETER_MM,
    per_slice: int = 2,
    max_slices: int = 12,
    min_tissue: float = 0.05,
    amplitude_range: tuple[float, float] = AMPLITUDE_RANGE,
    rim: float = PLATEAU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Copies of normal slices with lesions of ``diameter_mm`` inserted: the set SCR's calibration checks.

    Slices with at least ``min_tissue`` of tissue are used (all of them when none has), up to ``max_slices``
    copies: a seeded subset when there are more, each slice again (with new lesions) when there are fewer, so
    the number of lesions does not depend on how many normals a site gives.

    Args:
        images: (n, H, W) normal slices in [0, 1].
        rng: the only source of randomness.
        foregrounds: (n, H, W) tissue masks (None: anywhere).
        pixel_mm: in-plane pixel size of ``images`` in mm.
        diameter_mm: range of the lesions' in-plane (short-axis) diameters, drawn uniformly.
        per_slice: lesions per slice copy (kept apart).
        max_slices: slice copies made (the detector scores each one).
        min_tissue: share of tissue a slice needs to receive lesions.
        amplitude_range: peak intensity change, drawn log-uniformly (faint lesions as often as strong ones).
        rim: the lesions' plateau (``sized_lesion``).

    Returns:
        The float32 slice copies (m, H, W), their tissue masks (m, H, W), integer labels (m, H, W: 0 is
        background, k ≥ 1 the k-th lesion) and each lesion's diameter in mm (length = the largest label),
        with ``m = max_slices``.
    """
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3 or len(imgs) == 0:
        raise InvalidVolumeError(f"lesion_slices needs a stack of slices (n, H, W), got shape {imgs.shape}")
    fgs = np.ones(imgs.shape, bool) if foregrounds is None else np.asarray(foregrounds, bool)
    if fgs.shape != imgs.shape:
        raise InvalidVolumeError(f"foreground masks {fgs.shape} do not match the slices {imgs.shape}")
    if not (np.isfinite(pixel_mm) and pixel_mm > 0):
        raise ConfigError(f"the pixel size must be a positive number of mm, got {pixel_mm!r}")
    check_range("diameter_mm", diameter_mm, 0.0)
    if per_slice < 1 or max_slices < 1:
        raise ConfigError("per_slice and max_slices must be at least 1")
    tissue = fgs.reshape(len(fgs), -1).mean(1)
    usable = np.flatnonzero(tissue >= min_tissue)
    if usable.size == 0:
        usable = np.arange(len(imgs))
    order = _pick(rng, usable, max_slices)
    out = imgs[order].copy()
    labels = np.zeros(out.shape, np.int32)
    diameters: list[float] = []
    for i, src in enumerate(order):
        for _ in range(per_slice):
            d_mm = float(rng.uniform(*diameter_mm))
            d_px = max(2.0, d_mm / pixel_mm)
            if min(out.shape[1:]) < 2 * d_px:
                raise InvalidVolumeError(f"a {d_mm:.1f} mm lesion is {d_px:.0f} pixels: it does not fit these "
                                         f"{out.shape[1]}×{out.shape[2]} slices of {pixel_mm:.3g} mm pixels")
            out[i], m = sized_lesion(out[i], rng, fgs[src], diameter_px=d_px, avoid=labels[i] > 0,
                                     amplitude_range=amplitude_range, plateau=rim)
            m &= labels[i] == 0
            if m.any():
                diameters.append(d_mm)
                labels[i][m] = len(diameters)
    return out, fgs[order].copy(), labels, np.asarray(diameters, np.float64)


def _pick(rng: np.random.Generator, usable: Sequence[int] | np.ndarray, m: int) -> np.ndarray:
    """``m`` source indices: a seeded subset of ``usable``, or all of it repeated until there are ``m``."""
    usable = np.asarray(usable, dtype=int)
    if usable.size >= m:
        return np.sort(rng.choice(usable, size=m, replace=False))
    reps = int(np.ceil(m / usable.size))
    return np.tile(usable, reps)[:m]
