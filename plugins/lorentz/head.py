"""The trainable part of the Lorentz detector: hyperbolic projection, confidence-weighted centroid, hyperplane.

Kept apart from the detector (anomalib's torch-model vs. training-module split) so the same head can be
trained, fine-tuned and inspected. ``EuclideanHead`` is the paper's ablation: the same pipeline with
Euclidean linear layers, a norm-weighted mean and a linear classifier, one config switch away.
"""

from __future__ import annotations

import torch
from torch import nn

from ...engine.geometry import _numerics as nx
from ...engine.geometry import lorentz
from ...engine.geometry.layers import LorentzHyperplaneClassifier, LorentzLinear
from ...engine.geometry.manifolds import Lorentz


def expmap0_linear(v: torch.Tensor, layer: LorentzLinear, c: torch.Tensor) -> torch.Tensor:
    """Spatial part of ``layer(lorentz.expmap0(v, c))``, without building the (N, C + 1) point.

    The exp map scales ``v`` by one number per row, ``sinh(θ)/θ`` (θ = √c‖v‖, clamped as ``expmap0``
    clamps it), and adds the time coordinate ``cosh(θ)/√c``; the layer is linear in the point, so
    ``W·x + b = s·(W_s v) + x₀·W₀ + b``. The same map and gradients (to float rounding), but the elementwise
    work runs on per-row scalars and the (N, dim) output instead of the (N, C) input (README, "Speed").
    The time coordinate of the layer's output is ``sqrt(1/c + ‖result‖²)`` (``lorentz.from_spatial``).
    """
    sc = torch.sqrt(c)
    theta = sc * nx.norm(v)
    limit = nx.max_arg(theta.dtype)
    clamped = torch.clamp_max(theta, limit)
    scale = nx.sinhc(clamped) * torch.clamp_max(limit / theta, 1.0)
    weight, bias = layer.linear.weight, layer.linear.bias
    spatial = torch.addcmul(torch.cosh(clamped) / sc * weight[:, 0], scale, v @ weight[:, 1:].t())
    return spatial if bias is None else spatial + bias


def weighted_centroid(spatial: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
    """Paper eq. 2 over levels, from each level's spatial part: ``lorentz.centroid`` with Poincaré-norm weights.

    A point with spatial part ``y`` has time ``x₀ = sqrt(1/c + ‖y‖²)`` and Poincaré norm ``‖y‖/(1 + √c x₀)``
    (``lorentz.to_poincare``), so the weighted sum needs only per-row scalars and one (N, dim) sum per
    level; the result is ``project(Σ w x / (√c ‖Σ w x‖_L))`` exactly as ``lorentz.centroid`` computes it.
    """
    sc = torch.sqrt(c)
    total_s: torch.Tensor | None = None
    total_0: torch.Tensor | None = None
    for y in spatial:
        sq = (y * y).sum(-1, keepdim=True)
        x0 = torch.sqrt(1.0 / c + sq)
        w = torch.sqrt(torch.clamp_min(sq, nx.MIN_NORM**2)) / (1 + sc * x0)
        total_s = w * y if total_s is None else torch.addcmul(total_s, w, y)
        total_0 = w * x0 if total_0 is None else torch.addcmul(total_0, w, x0)
    assert total_s is not None and total_0 is not None
    lnorm = torch.sqrt(torch.clamp_min(total_0 * total_0 - (total_s * total_s).sum(-1, keepdim=True), nx.MIN_NORM**2))
    return lorentz.from_spatial(total_s / (sc * lnorm), c)


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
        return weighted_centroid([expmap0_linear(feats[lv], self.proj[lv], c) for lv in self.levels], c)

    def embed_reference(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``embed`` written with the library's maps step by step (exp map, layer, centroid): the tests' oracle."""
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
