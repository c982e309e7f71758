"""One-class SVM on noise latents, stored as a kernel expansion so a bundle never needs pickle.

Both variants reduce to the same decision function

    f(z) = Σ_j w_j · exp(−γ ‖z − a_j‖²) + c

* exact (scikit-learn ``OneClassSVM``, libsvm): a_j are the support vectors, w_j the dual coefficients,
  c the intercept (−ρ);
* scalable (``Nystroem`` + ``SGDOneClassSVM``): a_j are the Nyström landmarks, w = Mᵀβ with M the Nyström
  normalisation and β the linear SVM's weights, c = −offset.

So after fitting, only (a, w, c, γ) are kept — as tensors in the bundle — and the decision is evaluated
here, identically before and after a save/load. The exact SVM's fit grows with n² (kernel evaluations),
so above ``exact_max`` training latents the Nyström variant is chosen automatically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class KernelOCSVM:
    """f(z) = Σ_j w_j exp(−γ‖z − a_j‖²) + c; higher = more normal (scikit-learn's sign)."""

    anchors: np.ndarray  # (m, d) float64
    weights: np.ndarray  # (m,) float64
    intercept: float
    gamma: float
    kind: str

    def decision_function(self, z: np.ndarray | torch.Tensor, chunk: int = 4096) -> np.ndarray:
        """Signed distance-like score (> 0 inside the normal boundary), in float64, chunked for memory."""
        zt = torch.as_tensor(np.asarray(z), dtype=torch.float64)
        a = torch.from_numpy(self.anchors)
        w = torch.from_numpy(self.weights)
        a2 = (a * a).sum(1)
        out = []
        for i in range(0, len(zt), chunk):
            zc = zt[i:i + chunk]
            d2 = ((zc * zc).sum(1, keepdim=True) + a2[None] - 2.0 * zc @ a.T).clamp_min_(0)
            out.append(torch.exp(-self.gamma * d2) @ w + self.intercept)
        return torch.cat(out).numpy() if out else np.zeros(0)

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}anchors": torch.from_numpy(np.ascontiguousarray(self.anchors)),
                f"{prefix}weights": torch.from_numpy(np.ascontiguousarray(self.weights)),
                f"{prefix}scalars": torch.tensor([self.intercept, self.gamma], dtype=torch.float64)}

    @classmethod
    def from_tensors(cls, state: dict[str, torch.Tensor], prefix: str, kind: str) -> KernelOCSVM:
        s = state[f"{prefix}scalars"].double()
        return cls(anchors=state[f"{prefix}anchors"].double().numpy(),
                   weights=state[f"{prefix}weights"].double().numpy(),
                   intercept=float(s[0]), gamma=float(s[1]), kind=kind)


def latent_gamma(z: np.ndarray) -> float:
    """γ = 1 / (dim · variance of the latents), the paper's (and scikit-learn's "scale") choice."""
    var = float(np.asarray(z, dtype=np.float64).var())
    return 1.0 / (z.shape[1] * max(var, 1e-12))


def fit_ocsvm(z: np.ndarray, nu: float = 0.1, gamma: float | None = None, exact_max: int = 10000,
              n_components: int = 1000, seed: int = 0) -> KernelOCSVM:
    """Fit the one-class SVM on normal latents (n, d); exact up to ``exact_max`` samples, Nyström above."""
    z64 = np.asarray(z, dtype=np.float64)
    g = latent_gamma(z64) if gamma is None else float(gamma)
    if len(z64) <= exact_max:
        from sklearn.svm import OneClassSVM

        svm = OneClassSVM(kernel="rbf", nu=nu, gamma=g, tol=1e-4, cache_size=512).fit(z64)
        return KernelOCSVM(anchors=np.asarray(svm.support_vectors_, np.float64),
                           weights=np.asarray(svm.dual_coef_, np.float64).ravel(),
                           intercept=float(np.ravel(svm.intercept_)[0]), gamma=g, kind="exact")
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import SGDOneClassSVM

    ny = Nystroem(kernel="rbf", gamma=g, n_components=min(n_components, len(z64)), random_state=seed).fit(z64)
    feats = ny.transform(z64)
    sgd = SGDOneClassSVM(nu=nu, random_state=seed, max_iter=50, tol=1e-4).fit(feats)
    w = np.asarray(ny.normalization_, np.float64).T @ np.asarray(sgd.coef_, np.float64).ravel()
    return KernelOCSVM(anchors=np.asarray(ny.components_, np.float64), weights=w,
                       intercept=-float(np.ravel(sgd.offset_)[0]), gamma=g, kind="nystroem")
