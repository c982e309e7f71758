"""Linear centred kernel alignment (CKA), the similarity that Redundancy-Aware Repulsion minimises.

Paper eqs. 2–3 (Kornblith et al. 2019): with Gram matrices K = P Pᵀ and L = Q Qᵀ over a batch of r
samples and the centring matrix H = I − 11ᵀ/r,

    HSIC(K, L) = tr(K H L H) / (r − 1)²,    CKA(P, Q) = HSIC(K, L) / √(HSIC(K, K) · HSIC(L, L)).

Why this kernel: a learner could otherwise "look different" to the trained ones by merely rescaling or
rotating its features (network redundancy, paper Fig. 3). The Gram form makes CKA invariant to
orthogonal transforms of either feature space (PU(PU)ᵀ = PPᵀ) and the normalisation makes it invariant
to isotropic scaling, so only genuinely different representations lower it. The (r − 1)² factors cancel
in the ratio and are left out.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def _centred_gram(x: torch.Tensor) -> torch.Tensor:
    """H (X Xᵀ) H for (r, d) features, computed as the Gram of column-centred features (same matrix)."""
    x = x.reshape(x.shape[0], -1)
    x = x - x.mean(dim=0, keepdim=True)
    return x @ x.T


def hsic(k_centred: torch.Tensor, l_centred: torch.Tensor) -> torch.Tensor:
    """tr(K H L H) for already centred Grams (up to the constant 1/(r − 1)², which cancels in CKA)."""
    return (k_centred * l_centred).sum()


def linear_cka(p: torch.Tensor, q: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """CKA between two feature batches (r, ...) and (r, ...): 1 for equal geometry, 0 for unrelated.

    Features are flattened per sample; the two inputs may have different widths. Differentiable in both
    arguments. A batch whose features are all equal has no geometry at all, and gives 0 rather than NaN
    (``eps`` guards the denominator), so a collapsed learner is never rewarded or punished by the term.
    """
    if p.shape[0] != q.shape[0]:
        raise ValueError(f"CKA needs the same samples in both batches, got {p.shape[0]} and {q.shape[0]}")
    k = _centred_gram(p.float())
    l_ = _centred_gram(q.float())
    return hsic(k, l_) / torch.sqrt(hsic(k, k) * hsic(l_, l_)).clamp_min(eps)


def mean_cka(trained: list[torch.Tensor], current: torch.Tensor) -> torch.Tensor:
    """L_sim of paper eq. 1: the mean CKA of the learner in training to each already trained learner.

    ``trained`` features are treated as constants (detached): repulsion moves only the new learner.
    Returns a zero tensor for the first learner (no trained learners yet).
    """
    if not trained:
        return current.new_zeros(())
    return torch.stack([linear_cka(t.detach(), current) for t in trained]).mean()
