"""Greedy k-centre coreset selection (PatchCore's memory-bank subsampling)."""

from __future__ import annotations

import torch

from anomalens.engine.progress import CancelToken, ProgressCallback, check, report


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> torch.Tensor:
    """Indices of ``n_select`` rows chosen by farthest-point sampling.

    Distances are computed in a random Gaussian projection (Johnson–Lindenstrauss) of ``projection_dim``
    dimensions, as PatchCore does, which keeps each of the ``n_select`` iterations one matrix-vector pass.
    The picked rows cover the feature space evenly, so a 10 % bank scores almost like the full one.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(int(seed))
    x = features.float()
    if projection_dim and x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj.to(x.device)
    start = int(torch.randint(n, (1,), generator=gen))
    selected = torch.empty(n_select, dtype=torch.long)
    selected[0] = start
    min_d = ((x - x[start]) ** 2).sum(1)
    every = max(1, n_select // 50)
    for i in range(1, n_select):
        idx = int(torch.argmax(min_d))
        selected[i] = idx
        torch.minimum(min_d, ((x - x[idx]) ** 2).sum(1), out=min_d)
        if i % every == 0:
            check(cancel)
            report(progress, i / n_select, f"coreset {i}/{n_select}")
    return selected


def nearest_distance(query: torch.Tensor, bank: torch.Tensor, chunk: int = 4096,
                     return_index: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance of each query row to its nearest bank row (and its index), chunked for memory."""
    bank = bank.to(query.device, query.dtype)
    bank_sq = (bank * bank).sum(1)
    dists, idxs = [], []
    for i in range(0, len(query), chunk):
        q = query[i:i + chunk]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ bank.T + bank_sq
        v, j = d2.min(1)
        dists.append(v.clamp_min(0).sqrt())
        idxs.append(j)
    d = torch.cat(dists)
    return (d, torch.cat(idxs)) if return_index else d
