"""Coreset selection and nearest-neighbour search against brute force (the memory banks rest on them)."""

from __future__ import annotations

import torch

from anomalens.engine.coreset import greedy_coreset, nearest_distance


def test_nearest_distance_matches_brute_force_across_chunks() -> None:
    gen = torch.Generator().manual_seed(0)
    query, bank = torch.randn(1300, 24, generator=gen) * 3, torch.randn(700, 24, generator=gen) + 1
    full = torch.cdist(query.double(), bank.double())
    want_d, want_i = full.min(1)
    for chunk in (1, 97, 512, 5000):
        d, i = nearest_distance(query, bank, chunk=chunk, return_index=True)
        torch.testing.assert_close(d.double(), want_d, atol=1e-3, rtol=1e-4)
        assert (i == want_i).float().mean() > 0.999
    assert float(nearest_distance(bank[:5], bank).max()) < 1e-2, "a bank row is at distance 0 from itself"


def test_greedy_coreset_is_farthest_point_sampling() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(400, 16, generator=gen)
    idx = greedy_coreset(x, 40, projection_dim=0, seed=3)
    assert len(set(idx.tolist())) == 40
    # Each pick is the point farthest from those picked before it (brute force, no projection).
    for k in range(1, 40):
        d = torch.cdist(x, x[idx[:k]]).min(1).values
        assert float(d[idx[k]]) >= float(d.max()) - 1e-4
    assert torch.equal(idx, greedy_coreset(x, 40, projection_dim=0, seed=3)), "seeded"
    assert len(greedy_coreset(x, 1000)) == 400, "asking for more rows than exist returns them all"
