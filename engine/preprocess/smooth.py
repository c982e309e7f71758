"""Light Gaussian smoothing of heatmaps, in torch so it runs where the model runs."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                      truncate: float = 3.0) -> torch.Tensor:
    """A normalised 1-D Gaussian kernel of radius ``ceil(truncate * sigma)``."""
    radius = max(1, math.ceil(truncate * sigma))
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Smooth (n, H, W) or (n, 1, H, W) maps with a separable Gaussian (reflect padding).

    Patch-level scores upsampled to pixels show the patch grid; a small blur (as PatchCore does) removes
    that blockiness without moving lesion borders much. ``sigma <= 0`` returns the maps unchanged.
    """
    if sigma <= 0:
        return maps
    squeeze = maps.ndim == 3
    x = maps.unsqueeze(1) if squeeze else maps
    k = gaussian_kernel1d(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    mode = "reflect" if min(x.shape[-2:]) > r else "replicate"
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return x.squeeze(1) if squeeze else x
