"""Resizing between a scan's grid and a detector's input size, and back, with one convention."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_tensor(slices: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, H, W) float array → (n, 1, H, W) float32 tensor on ``device``."""
    return torch.as_tensor(np.ascontiguousarray(slices, dtype=np.float32), device=device).unsqueeze(1)


def resize_tensor(x: torch.Tensor, size: int | tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (n, C, H, W); antialiased when shrinking so thin structures do not alias into anomalies."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=shrink and mode == "bilinear")


def resize_slices(slices: np.ndarray, size: int | tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize a stack (n, H, W) in NumPy terms."""
    return resize_tensor(to_tensor(slices), size, mode).squeeze(1).numpy()


def resize_back(maps: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bring (n, h, w) maps back to a scan's (H, W) grid with bilinear interpolation."""
    t = maps if isinstance(maps, torch.Tensor) else torch.as_tensor(np.asarray(maps, dtype=np.float32))
    t = t.float()
    if t.ndim == 3:
        t = t.unsqueeze(1)
    return resize_tensor(t, shape).squeeze(1).cpu().numpy()


def pad_to_square(slices: np.ndarray, value: float = 0.0) -> np.ndarray:
    """Pad (n, H, W) symmetrically with ``value`` (air) to (n, S, S), so resizing keeps the aspect ratio."""
    n, h, w = slices.shape
    s = max(h, w)
    if h == w:
        return slices
    out = np.full((n, s, s), value, dtype=slices.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[:, top:top + h, left:left + w] = slices
    return out
