"""The trainable part of the curved-heads detector: a shared extractor and Euclidean / curved classifiers.

Curved-geometric-networks §IV, at patch level: every patch's frozen backbone feature goes through a small
shared extractor to the Euclidean embedding ``e_E``; the geometric transformation maps it onto the sphere
(eq. 2) or into the Poincaré ball (eq. 4), and a geometric classifier predicts the slice's rotation
(0/90/180/270°) or a pair's relative position (Patch-SVDD base, ``patchsvdd.py``) from it. Which branches
exist and how they are trained is the *variant* (paper Tab. I); ``euclidean`` is the Hendrycks & Gimpel
baseline. How the geometric score ``z`` is read off them is the *score rule* (``SCORE_RULES``): from the
trained classifiers' posteriors (the default of the detector, issue #20), or from the embeddings alone as
eqs. 9, 10 and 12 print them (what version 1 of the detector did).

Kept apart from the detector (as the Lorentz plugin does) so the head can be trained, fine-tuned and
inspected on its own, and tested without a backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engine.geometry import poincare, sphere
from ...engine.geometry.layers import AngularLinear, PoincareLinear, PoincareMLR
from ...engine.geometry.manifolds import PoincareBall, Sphere

#: The baseline and the paper's six variants (Tab. I), in the order the bench prints them.
VARIANTS = ("euclidean", "SiO", "HiO", "MiO", "SiT", "HiT", "MiT")

#: The pretext task: rotations by k·90°, k = 0..3 (RotNet, paper §V-B).
N_ROTATIONS = 4

#: How ``z`` is read off a forward pass. ``classifiers``: in-Two compares the Euclidean and the curved
#: classifiers' posteriors over the pretext classes, in-One takes the curved classifier's posterior of the true
#: pretext class, so the trained geometric classifiers decide the score. ``embeddings``: the literal eqs. 9,
#: 10 and 12 on the embeddings (softmax over embedding coordinates), where in-Two and HiO ignore every trained
#: classifier and follow ``‖e_E‖`` (issue #20); kept to read version-1 models exactly as they scored.
SCORE_RULES = ("classifiers", "embeddings")

#: Which classifier branches each variant trains (``E`` Euclidean, ``S`` sphere, ``H`` Poincaré ball).
BRANCHES = {
    "euclidean": ("E",),
    "SiO": ("S",),
    "HiO": ("H",),
    "MiO": ("S", "H"),
    "SiT": ("E", "S"),
    "HiT": ("E", "H"),
    "MiT": ("E", "S", "H"),
}


def canonical_variant(name: str) -> str:
    """``"mit"``, ``"MIT"`` and ``"MiT"`` all name Mixed-in-Two; unknown names raise ``ValueError``."""
    for v in VARIANTS:
        if str(name).strip().lower() == v.lower():
            return v
    raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {name!r}")


def default_kappa_h(variant: str) -> float:
    """The paper's ball curvature for a variant: −0.01 for *-in-One, −1.0 for *-in-Two (Tab. VIII)."""
    return -0.01 if canonical_variant(variant) in ("HiO", "MiO") else -1.0


def one_minus_tanh(z: Tensor) -> Tensor:
    """``1 − tanh(z)`` computed as ``2·sigmoid(−2z)`` in float64.

    The naive form rounds to exactly 0 in float32 once ``z ≳ 9`` (the hyperbolic ``z_H`` reaches ~60 at
    ``κ = −0.01``), which would turn every confident patch into a tie; this form keeps full relative
    precision and the ranking (AUROC) of the scores.
    """
    return 2 * torch.sigmoid(-2 * z.double())


def one_minus_max_softmax(logits: Tensor) -> Tensor:
    """``1 − max softmax`` (Hendrycks & Gimpel) as ``s / (1 + s)``, ``s = Σ_{j≠max} exp(l_j − l_max)``, float64.

    Written so for the same reason: ``1 − p_max`` cancels to exactly 0 for any confident patch.
    """
    lg = logits.double()
    top = lg.max(-1, keepdim=True)
    rest = torch.exp(lg - top.values).scatter(-1, top.indices, 0.0).sum(-1)
    return rest / (1 + rest)


def kl_softmax(a: Tensor, b: Tensor) -> Tensor:
    """``KL(softmax(a) ‖ softmax(b))`` over the last axis (paper eq. 12), clamped at 0 against rounding."""
    la, lb = F.log_softmax(a.double(), -1), F.log_softmax(b.double(), -1)
    return (la.exp() * (la - lb)).sum(-1).clamp_min(0)


@dataclass
class HeadOutput:
    """Everything one forward pass yields: embeddings per geometry and the logits of each branch."""

    e_E: Tensor
    logits: dict[str, Tensor]
    e_S: Tensor | None = None
    e_H: Tensor | None = None


class CurvedHeads(nn.Module):
    """Shared extractor + the Euclidean, spherical and/or hyperbolic rotation classifiers of one variant.

    - shared extractor: per-patch MLP ``in_dim → hidden → dim`` (ReLU), giving ``e_E``;
    - ``E``: a linear classifier on ``e_E`` (the baseline's classifier);
    - ``S``: ``e_S = Γ_S(e_E)`` (eq. 2), an angular linear layer of class prototypes (logits ``⟨e_S, w_j⟩``,
      eq. 3's inputs);
    - ``H``: ``e_H = Γ_H(e_E)`` (eq. 4, clipping with margin ``ξ``), the hyperbolic linear layer (eq. 7)
      and the hyperbolic MLR (eq. 8).

    Curvatures are fixed (the paper's only hyper-parameter, §V-E), given as the paper writes them:
    ``kappa_s > 0``, ``kappa_h < 0``. ``score_from`` is the score rule (``SCORE_RULES``); its default here is
    the literal one so that code and tests using the head alone keep their meaning. The detector always
    passes its configured rule (default ``classifiers``).
    """

    def __init__(self, in_dim: int, hidden: int, dim: int, variant: str, kappa_s: float = 1.0,
                 kappa_h: float | None = None, xi: float = 4e-3, n_classes: int = N_ROTATIONS,
                 score_from: str = "embeddings") -> None:
        super().__init__()
        if score_from not in SCORE_RULES:
            raise ValueError(f"score_from must be one of {', '.join(SCORE_RULES)}, got {score_from!r}")
        self.score_from = score_from
        self.n_classes = int(n_classes)
        self.variant = canonical_variant(variant)
        self.branches = BRANCHES[self.variant]
        self.kappa_s = float(kappa_s)
        self.kappa_h = float(default_kappa_h(self.variant) if kappa_h is None else kappa_h)
        if self.kappa_s <= 0 or self.kappa_h >= 0:
            raise ValueError(f"need kappa_s > 0 and kappa_h < 0, got {self.kappa_s} and {self.kappa_h}")
        self.xi = float(xi)
        self.extractor = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        if "E" in self.branches:
            self.e_classifier = nn.Linear(dim, n_classes)
        if "S" in self.branches:
            self.sphere = Sphere(c=self.kappa_s, learnable=False)
            self.s_classifier = AngularLinear(dim, n_classes, self.sphere)
        if "H" in self.branches:
            self.ball = PoincareBall(c=-self.kappa_h, learnable=False)
            self.h_linear = PoincareLinear(dim, dim, self.ball)
            self.h_mlr = PoincareMLR(dim, n_classes, self.ball)

    @property
    def geometric(self) -> bool:
        """Whether the score is the paper's ``1 − tanh(z)`` (all variants but the baseline)."""
        return self.variant != "euclidean"

    @property
    def in_two(self) -> bool:
        """Geometric-in-Two: a Euclidean branch beside the curved one(s), scored by their discrepancy."""
        return self.variant.endswith("iT")

    def forward(self, x: Tensor) -> HeadOutput:
        """Patch features ``(P, in_dim)`` → embeddings and per-branch rotation logits ``(P, 4)``."""
        e_E = self.extractor(x)
        out = HeadOutput(e_E=e_E, logits={})
        if "E" in self.branches:
            out.logits["E"] = self.e_classifier(e_E)
        if "S" in self.branches:
            out.e_S = sphere.project(e_E, self.sphere.c)
            out.logits["S"] = self.s_classifier(out.e_S)
        if "H" in self.branches:
            out.e_H = poincare.clip_features(e_E, self.xi, self.ball.c)
            out.logits["H"] = self.h_mlr(self.h_linear(out.e_H))
        return out

    def loss(self, out: HeadOutput, target: Tensor) -> Tensor:
        """Sum of the branches' cross-entropies (GiO: one branch; MiO and GiT: ``ℓ_E + ℓ_G``, §IV-C)."""
        return sum((F.cross_entropy(lg, target) for lg in out.logits.values()), torch.zeros((), device=target.device))

    def component_scores(self, out: HeadOutput, target: Tensor | int | None = None) -> dict[str, Tensor]:
        """The per-geometry scores ``z_i`` that eqs. 11 and 13 combine (float64).

        Rule ``classifiers`` (``target``: the true pretext class of each patch, or one class for all):
        - GiT: ``z_EG = KL(softmax(c_E) ‖ softmax(c_G))`` with ``c_E``, ``c_G`` the Euclidean and curved
          classifiers' logits (eq. 12 on the two branches' posteriors);
        - GiO: ``z_G = softmax(c_G)[target]``, the curved classifier's confidence in the true pretext class
          (eq. 9 with the known label in place of the max; its maximum posterior when ``target`` is None).
          A posterior, not a logit, because eq. 11 squares each component and a logit can be negative.

        Rule ``embeddings`` (the literal equations): GiO ``z_S = max_j ⟨e_S, w_j⟩`` (eq. 9),
        ``z_H = d(e_H, 0)`` (eq. 10); GiT ``z_EG = KL(softmax(e_E) ‖ softmax(e_G))``, ``e_G = Γ(e_E)``.
        """
        if self.score_from == "classifiers":
            return self._classifier_scores(out, target)
        z: dict[str, Tensor] = {}
        if self.in_two:
            if out.e_S is not None:
                z["S"] = kl_softmax(out.e_E, out.e_S)
            if out.e_H is not None:
                z["H"] = kl_softmax(out.e_E, out.e_H)
            return z
        if out.e_S is not None:
            z["S"] = out.logits["S"].double().max(-1).values
        if out.e_H is not None:
            z["H"] = poincare.dist0(out.e_H.double(), self.ball.c)
        return z

    def _classifier_scores(self, out: HeadOutput, target: Tensor | int | None) -> dict[str, Tensor]:
        curved = [b for b in ("S", "H") if b in out.logits]
        if self.in_two:
            return {b: kl_softmax(out.logits["E"], out.logits[b]) for b in curved}
        z: dict[str, Tensor] = {}
        for b in curved:
            p = F.softmax(out.logits[b].double(), -1)
            if target is None:
                z[b] = p.max(-1).values
            else:
                t = torch.as_tensor(target, device=p.device, dtype=torch.long).expand(p.shape[:-1])
                z[b] = p.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        return z

    def geometric_score(self, out: HeadOutput, target: Tensor | int | None = None) -> Tensor:
        """``z`` of the variant: one component, or the root sum of squares of several (eqs. 11, 13)."""
        if not self.geometric:
            raise ValueError("the Euclidean baseline has no geometric score; use anomaly_score")
        comps = list(self.component_scores(out, target).values())
        if len(comps) == 1:
            return comps[0]
        return torch.sqrt(sum(c * c for c in comps))

    def anomaly_score(self, out: HeadOutput, target: Tensor | int | None = None) -> Tensor:
        """Per-patch anomaly score, float64: ``1 − tanh(z)``, or ``1 − max softmax`` for the baseline.

        ``target``: the true pretext class (the rotation applied, or the pair's relative position); used by
        the in-One variants under the ``classifiers`` rule.
        """
        if not self.geometric:
            return one_minus_max_softmax(out.logits["E"])
        return one_minus_tanh(self.geometric_score(out, target))

    def accuracy(self, out: HeadOutput, target: Tensor) -> dict[str, float]:
        """Rotation-prediction accuracy of each branch (how well the pretext task was learnt)."""
        return {b: float((lg.argmax(-1) == target).float().mean()) for b, lg in out.logits.items()}

    def viewer_embedding(self, out: HeadOutput) -> tuple[Tensor, str, float]:
        """The embedding the Poincaré-disk view shows: the ball's if there is one, else the sphere's."""
        if out.e_H is not None:
            return out.e_H, "poincare", -self.kappa_h
        if out.e_S is not None:
            return out.e_S, "sphere", self.kappa_s
        return out.e_E, "euclidean", 0.0
