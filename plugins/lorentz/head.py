"""The trainable part of the Lorentz detector: hyperbolic projection, confidence-weighted centroid, hyperplane.

Kept apart from the detector (anomalib's torch-model vs. training-module split) so the same head can be
trained, fine-tuned and inspected. ``EuclideanHead`` is the paper's ablation: the same pipeline with
Euclidean linear layers, a norm-weighted mean and a linear classifier, one config switch away.
"""

from __future__ import annotations

import torch
from torch import nn

from ...engine.geometry import lorentz
from ...engine.geometry.layers import LorentzHyperplaneClassifier, LorentzLinear
from ...engine.geometry.manifolds import Lorentz


class LorentzHead(nn.Module):
    """Per-level features → hyperboloid (exp map at the origin) → Lorentz linear → weighted centroid → logit.

    The centroid weights are the Euclidean norms of each level's point after mapping to the Poincaré ball
    (paper §2.3): points far from the origin are the confident ones.
    """

    manifold_name = "lorentz"

    def __init__(self, in_dims: dict[str, int], dim: int, curvature: float = 1.0, learn_curvature: bool = True):
        super().__init__()
        self.levels = tuple(in_dims)
        self.manifold = Lorentz(c=curvature, learnable=learn_curvature)
        self.proj = nn.ModuleDict({lv: LorentzLinear(c, dim, self.manifold) for lv, c in in_dims.items()})
        self.classifier = LorentzHyperplaneClassifier(dim, self.manifold)

    @property
    def curvature(self) -> float:
        return float(self.manifold.c.detach())

    def embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, C_l) per level → (N, dim + 1) points on the hyperboloid (time coordinate first)."""
        c = self.manifold.c
        points = [self.proj[lv](lorentz.expmap0(feats[lv], c)) for lv in self.levels]
        stacked = torch.stack(points, dim=-2)
        weights = lorentz.to_poincare(stacked, c).norm(dim=-1)
        return lorentz.centroid(stacked, weights, c, dim=-2)

    def logit(self, z: torch.Tensor) -> torch.Tensor:
        """Anomaly logit of embedded points (higher = more anomalous)."""
        return self.classifier(z)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logit(self.embed(feats))

    def hyperplane(self) -> tuple[torch.Tensor, float]:
        """The decision hyperplane's normal (ambient coordinates) and offset, for the Poincaré-disk view."""
        return self.classifier.hyperplane()


class EuclideanHead(nn.Module):
    """The ablation: linear projections, norm-weighted mean over levels, linear classifier."""

    manifold_name = "euclidean"

    def __init__(self, in_dims: dict[str, int], dim: int, curvature: float = 1.0, learn_curvature: bool = True):
        super().__init__()
        self.levels = tuple(in_dims)
        self.proj = nn.ModuleDict({lv: nn.Linear(c, dim) for lv, c in in_dims.items()})
        self.classifier = nn.Linear(dim, 1)

    @property
    def curvature(self) -> float:
        return 0.0

    def embed(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        points = torch.stack([self.proj[lv](feats[lv]) for lv in self.levels], dim=-2)
        weights = points.norm(dim=-1, keepdim=True)
        return (weights * points).sum(-2) / weights.sum(-2).clamp_min(1e-6)

    def logit(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z).squeeze(-1)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logit(self.embed(feats))

    def hyperplane(self) -> tuple[torch.Tensor, float]:
        return self.classifier.weight.detach()[0], float(self.classifier.bias.detach()[0])


HEADS = {"lorentz": LorentzHead, "euclidean": EuclideanHead}
