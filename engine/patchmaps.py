"""From a detector's score grid to a heatmap on the slice grid: one resampling and one smoothing rule.

Every detector scores on its own grid (patch cells of a backbone at ``input_size`` px, an autoencoder's
64² output, InvDetect's working size) and must return maps on the slice grid. Doing that tail in one place
means detector comparisons differ only in their heads: before it, PatchCore took its sigma in slice
pixels and the others in input pixels, so at the same configured sigma its maps were blurred by a
different anatomical amount (on brain1's 256² grid: 4 px, where the rule below gives 4.6 px at 224-px
input and 3.2 px at 320).

The rule: ``smoothing_sigma`` is given in pixels of the detector's input (what a user can reason about: a
fraction of a patch), and becomes ``sigma · max(H, W) / input_size`` on the (H, W) slice grid, so a map
is blurred by the same anatomical amount whatever the scan's matrix size.
"""

from __future__ import annotations

import numpy as np
import torch

from .preprocess.resize import resize_back
from .preprocess.smooth import gaussian_smooth


def slice_sigma(sigma: float, shape: tuple[int, int], input_size: int | None) -> float:
    """A smoothing sigma in input pixels expressed in pixels of the (H, W) slice grid.

    ``input_size=None`` means the detector works on the slice grid itself (no scaling).
    """
    if input_size is None or sigma <= 0:
        return float(sigma)
    return float(sigma) * max(int(shape[0]), int(shape[1])) / int(input_size)


def to_slice_grid(maps: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear (n, h, w) → (n, H, W) float32, unchanged when already on the slice grid."""
    return resize_back(maps, (int(shape[0]), int(shape[1])))


def to_heatmap(maps: torch.Tensor | np.ndarray, shape: tuple[int, int], sigma: float,
               input_size: int | None) -> np.ndarray:
    """Score grid (n, h, w) → smoothed heatmaps (n, H, W) on the slice grid, float32.

    Resampled first, then smoothed on the slice grid with :func:`slice_sigma` (``sigma <= 0``: no
    smoothing), so the blur does not depend on the score grid's resolution.
    """
    heat = torch.as_tensor(to_slice_grid(maps, shape))
    return gaussian_smooth(heat, slice_sigma(sigma, shape, input_size)).numpy()


def patch_centers(grid: tuple[int, int], shape: tuple[int, int], n: int) -> np.ndarray:
    """(n·h·w, 2) float32 (y, x) centres on the slice grid of every cell of an (h, w) patch grid, slice-major.

    The order matches ``features.permute(0, 2, 3, 1).reshape(-1, C)``, how the detectors flatten their
    patch embeddings for ``Embeddings``.
    """
    h, w = int(grid[0]), int(grid[1])
    H, W = int(shape[0]), int(shape[1])
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * H / h, (np.arange(w) + 0.5) * W / w, indexing="ij")
    return np.tile(np.stack([ys.ravel(), xs.ravel()], 1), (int(n), 1)).astype(np.float32)


def patch_slice_index(grid: tuple[int, int], n: int) -> np.ndarray:
    """The slice each flattened patch belongs to, in the order of :func:`patch_centers`."""
    return np.repeat(np.arange(int(n)), int(grid[0]) * int(grid[1]))
