"""Sliding-window patches (size b, stride b/2) and the paper's Gaussian-weighted aggregation (eq. 1).

Both are vectorised with ``unfold``/``fold``: the slice is padded (edge values repeated) on the bottom and
right so the windows tile it with one uniform stride, which lets ``fold`` sum every patch's weighted
contribution back in one call; the padding is cropped off afterwards.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def padded_size(size: int, b: int, stride: int) -> int:
    """Smallest size ≥ ``size`` (and ≥ b) that windows of size b and the stride tile exactly."""
    if size <= b:
        return b
    return b + math.ceil((size - b) / stride) * stride


def extract_patches(x: torch.Tensor, b: int, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(n, 1, H, W) → patches (n·L, 1, b, b), slice-major, and the padded grid size (Hp, Wp)."""
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, b, stride), padded_size(w, b, stride)
    if (hp, wp) != (h, w):
        x = F.pad(x, (0, wp - w, 0, hp - h), mode="replicate")
    cols = F.unfold(x, kernel_size=b, stride=stride)  # (n, b·b, L)
    patches = cols.transpose(1, 2).reshape(-1, 1, b, b)
    return patches, (hp, wp)


def n_patches(h: int, w: int, b: int, stride: int) -> int:
    """Patches per slice of size (h, w)."""
    hp, wp = padded_size(h, b, stride), padded_size(w, b, stride)
    return ((hp - b) // stride + 1) * ((wp - b) // stride + 1)


def gaussian_kernel(b: int, omega: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """w(p) = exp(−‖p − c‖² / ω²) over a b × b patch, c its centre (the paper's ω², not the code's 2σ²)."""
    ax = torch.arange(b, dtype=torch.float32, device=device) - (b - 1) / 2.0
    d2 = ax[:, None] ** 2 + ax[None, :] ** 2
    return torch.exp(-d2 / (omega * omega))


def aggregate(values: torch.Tensor, n: int, shape: tuple[int, int], padded: tuple[int, int], b: int,
              stride: int, omega: float) -> torch.Tensor:
    """Gaussian-weighted average of per-patch values at every pixel (eq. 1).

    Args:
        values: (n·L, C) per-patch values (C = 1 for scores, C = k for latent features).
        n: number of slices.
        shape: the original (H, W) before padding.
        padded: the padded (Hp, Wp) from ``extract_patches``.
        b: patch size.
        stride: window step (b/2).
        omega: the Gaussian width ω (b/4).

    Returns:
        (n, C, H, W): at each pixel Σ_i w_p^i v_i / Σ_i w_p^i over the patches that contain it.
    """
    c = values.shape[1]
    k = gaussian_kernel(b, omega, values.device).reshape(1, 1, b * b, 1)
    v = values.reshape(n, -1, c).transpose(1, 2).unsqueeze(2)  # (n, C, 1, L)
    cols = (k * v).reshape(n, c * b * b, -1)  # fold expects channel-major (C·b·b, L)
    num = F.fold(cols, output_size=padded, kernel_size=b, stride=stride)
    ones = k.expand(1, 1, b * b, v.shape[-1]).reshape(1, b * b, -1)
    den = F.fold(ones, output_size=padded, kernel_size=b, stride=stride)
    h, w = shape
    return (num / den)[:, :, :h, :w]
