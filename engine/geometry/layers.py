"""Layers on curved manifolds: Lorentz linear + hyperplane classifier, Poincaré linear + MLR, angular linear.

Every layer takes the manifold module whose curvature it uses, so one learnable curvature can be shared by a
whole head (pass the same ``Lorentz`` instance to each layer). Parameters are plain Euclidean tensors:
each parametrisation below maps any parameter value to a valid layer, so ordinary Adam trains them (no
Riemannian optimiser needed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from . import lorentz, poincare, sphere
from .manifolds import Lorentz, PoincareBall, Sphere


class LorentzLinear(nn.Module):
    """Hyperbolic linear layer on the hyperboloid, "fully hyperbolic" style (Chen et al.; Bdeir et al.).

    ``y_s = W x + b`` acts on the WHOLE Lorentz vector ``x`` (time coordinate included) and produces the
    output's spatial part; the time coordinate is then solved for, ``y_0 = sqrt(1/c + |y_s|^2)``, so the
    output is exactly on the manifold. We chose this over "log-map, Euclidean linear, exp-map" because it
    never leaves the manifold (no tangent-space distortion far from the origin) and over Chen et al.'s
    sigmoid-rescaled time coordinate because it has no extra hyperparameters.

    Sizes are manifold dimensions: input ``(..., in_features + 1)`` → output ``(..., out_features + 1)``.
    The weight column acting on the time coordinate and the bias start at zero, so at initialisation the
    layer is a random linear map of the spatial part only.
    """

    def __init__(
        self, in_features: int, out_features: int, manifold: Lorentz | None = None, bias: bool = True
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.manifold = manifold if manifold is not None else Lorentz()
        self.linear = nn.Linear(in_features + 1, out_features, bias=bias)
        with torch.no_grad():
            self.linear.weight[:, 0].zero_()
            if self.linear.bias is not None:
                self.linear.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features + 1:
            raise ValueError(
                f"LorentzLinear expects {self.in_features + 1} coordinates (time + {self.in_features}), "
                f"got shape {tuple(x.shape)}"
            )
        return lorentz.from_spatial(self.linear(x), self.manifold.c)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class LorentzHyperplaneClassifier(nn.Module):
    """Binary classifier by one Lorentz hyperplane (lorentz-hyperbolic-anomaly-detection eqs. 3–5).

    Parameters: ``z`` ``(dim,)``, the hyperplane's normal at the origin, and ``a`` (scalar), its signed
    distance from the origin along ``z`` (``lorentz.hyperplane_normal`` for the Minkowski normal ``w``).
    ``forward`` returns the eq.-5 logit ``sign(<w, x>_L) |w|_L d(x, H_w)``; train it with
    ``BCEWithLogits(logit, is_anomalous)`` and anomalies end up on the side ``z`` points to (the paper's
    ``p = [1 + exp(l)]^-1`` is the same model with ``(z, a)`` negated). ``a`` starts at 0 (hyperplane through
    the origin) and ``z`` as a small random vector.
    """

    def __init__(self, dim: int, manifold: Lorentz | None = None):
        super().__init__()
        self.dim = dim
        self.manifold = manifold if manifold is not None else Lorentz()
        self.z = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.a = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        """Points ``(..., dim + 1)`` → logits ``(...)``."""
        if x.shape[-1] != self.dim + 1:
            raise ValueError(
                f"LorentzHyperplaneClassifier expects {self.dim + 1} coordinates, got shape {tuple(x.shape)}"
            )
        return lorentz.hyperplane_logit(x, self.z, self.a, self.manifold.c)

    def distance(self, x: Tensor) -> Tensor:
        """Unsigned distance of each point to the hyperplane (eq. 4)."""
        return lorentz.hyperplane_distance(x, self.z, self.a, self.manifold.c)

    def hyperplane(self) -> tuple[Tensor, float]:
        """``(z, a)`` detached: the normal direction at the origin ``(dim,)`` and the signed offset."""
        return self.z.detach().clone(), float(self.a.detach())

    def poincare_geodesic(self) -> lorentz.PoincareGeodesic:
        """The decision boundary in the Poincaré ball (sphere centre/radius, or a diameter) for drawing."""
        return lorentz.hyperplane_to_poincare_geodesic(self.z, self.a, self.manifold.c)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class PoincareLinear(nn.Module):
    """Hyperbolic linear layer in the Poincaré ball: ``(M ⊗ x) ⊕ b`` (curved-geometric-networks eq. 7).

    The bias is stored as a tangent vector at the origin and mapped with ``expmap0``, so any value is a
    valid point of the ball.
    """

    def __init__(
        self, in_features: int, out_features: int, manifold: PoincareBall | None = None, bias: bool = True
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.manifold = manifold if manifold is not None else PoincareBall()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        c = self.manifold.c
        y = poincare.mobius_matvec(self.weight, x, c)
        if self.bias is not None:
            y = poincare.project(poincare.mobius_add(y, poincare.expmap0(self.bias, c), c), c)
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class PoincareMLR(nn.Module):
    """Hyperbolic multinomial logistic regression (curved-geometric-networks eq. 8), (..., d) → (..., K).

    The offsets ``p_k`` are stored as tangent vectors at the origin (``expmap0`` keeps them in the ball) and
    start at the origin; the normals ``a_k`` are used as tangent vectors at ``p_k`` directly.
    """

    def __init__(self, in_features: int, num_classes: int, manifold: PoincareBall | None = None):
        super().__init__()
        self.in_features = in_features
        self.num_classes = num_classes
        self.manifold = manifold if manifold is not None else PoincareBall()
        self.a = nn.Parameter(torch.randn(num_classes, in_features) / math.sqrt(in_features))
        self.p_tangent = nn.Parameter(torch.zeros(num_classes, in_features))

    @property
    def p(self) -> Tensor:
        """The hyperplane offsets as points in the ball ``(K, d)``."""
        return poincare.expmap0(self.p_tangent, self.manifold.c)

    def forward(self, x: Tensor) -> Tensor:
        return poincare.mlr(x, self.a, self.p, self.manifold.c)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class AngularLinear(nn.Module):
    """Angular (cosine) linear layer of the spherical branch (curved-geometric-networks §III-B).

    Logits are inner products of the features and the class prototypes after both are projected on the
    sphere of curvature ``c``: ``cos(x, w_k) / c``, so ``1/c`` acts as the softmax's inverse temperature.
    """

    def __init__(self, in_features: int, out_features: int, manifold: Sphere | None = None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.manifold = manifold if manifold is not None else Sphere()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))

    def forward(self, x: Tensor) -> Tensor:
        return sphere.angular_logits(x, self.weight, 1 / self.manifold.c)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
