"""Greedy k-centre coreset selection (PatchCore's memory-bank subsampling)."""

from __future__ import annotations

import torch

from .progress import CancelToken, ProgressCallback, check, report


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
    # ‖x − y‖² = ‖x‖² − 2x·y + ‖y‖²: one matrix-vector product per pick reads the features once, where
    # (x − y)² made and summed an (n, d) temporary (9× slower at 90k × 152 on one CPU thread: 42 against 4.7
    # ms per pick, another job on the second core).
    x = x.contiguous()
    sq = (x * x).sum(1)
    min_d = sq - 2.0 * (x @ x[start]) + sq[start]
    every = max(1, n_select // 50)
    for i in range(1, n_select):
        idx = int(torch.argmax(min_d))
        selected[i] = idx
        torch.minimum(min_d, torch.addmv(sq, x, x[idx], alpha=-2.0) + sq[idx], out=min_d)
        if i % every == 0:
            check(cancel)
            report(progress, i / n_select, f"coreset {i}/{n_select}")
    return selected


def nearest_distance(query: torch.Tensor, bank: torch.Tensor, chunk: int = 512,
                     return_index: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance of each query row to its nearest bank row (and its index), chunked for memory.

    ‖q‖² is added after the minimum (it does not change which row is nearest), and ``addmm`` forms
    ‖b‖² − 2q·b in one pass; 512-row chunks keep that block in cache (2.3× faster than 4,096 rows with a
    separate sum, one CPU thread, 8,192-row bank).
    """
    bank = bank.to(query.device, query.dtype)
    bank_sq = (bank * bank).sum(1)
    bank_t = bank.T.contiguous()
    dists, idxs = [], []
    for i in range(0, len(query), chunk):
        q = query[i:i + chunk]
        v, j = torch.addmm(bank_sq, q, bank_t, alpha=-2.0).min(1)
        dists.append((v + (q * q).sum(1)).clamp_min(0).sqrt())
        idxs.append(j)
    d = torch.cat(dists)
    return (d, torch.cat(idxs)) if return_index else d
