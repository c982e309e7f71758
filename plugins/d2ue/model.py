"""The D2UE learners: identical autoencoders (AE, or AEU with a per-pixel uncertainty), batched as one module.

All N learners live in one ``EnsembleAE`` whose convolutions are grouped (``groups = N``) and whose
linear layers are batched matrix products, so one forward and one backward pass serve the whole
ensemble: on a CPU that is what brings a 3-learner dual-space map under 0.1 s. Learner m owns channel
block m of every layer; input channel m goes to learner m only. A single learner is the same module with
``members = 1``; ``stack_members`` and ``EnsembleAE.member`` convert between the two, by concatenating or
slicing every tensor along its first dimension (each layer is laid out so that this is exact).

The architecture follows the paper's AE backbone (Gu et al. 2024, after Cai et al.'s benchmark): four
stride-2 4×4 convolutions with batch norm and ReLU (widths w, 2w, 4w, 4w), a fully connected bottleneck
(4w·(s/16)² → mid → latent → mid → 4w·(s/16)², with batch norm), and the mirrored transposed
convolutions; no biases in the convolutions, no activation on the output. AEU doubles the last layer's
output channels to predict a log-variance per pixel (Mao et al. 2020).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

BACKBONES = ("ae", "aeu")
#: Layers whose activations RAR can compare, in forward order (``latent`` is the official default).
FEATURE_LAYERS = ("enc1", "enc2", "enc3", "enc4", "latent", "bottleneck", "dec1", "dec2", "dec3")
MAP_KINDS = ("reconstruction", "output", "dual")


class GroupedLinear(nn.Module):
    """``members`` independent linear layers applied to (B, members, in) as one batched matmul.

    Weights are stored (members, in, out), the layout ``baddbmm`` consumes and whose gradient it produces
    directly: the (out, in) layout of ``nn.Linear`` costs a 2-million-element copy per step here.
    """

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default initialisation (weights and biases)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (M, B, in) @ (M, in, out) + (M, 1, out) → (M, B, out) → (B, M, out)
        return torch.baddbmm(self.bias.unsqueeze(1), x.transpose(0, 1), self.weight).transpose(0, 1)


class GroupedConvTranspose2d(nn.ConvTranspose2d):
    """A grouped transposed convolution that splits into per-member calls on MPS.

    Grouped transposed convolutions are not implemented on every backend; a loop over three members costs
    little, so the fallback keeps the module usable everywhere with identical weights.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if x.device.type != "mps" or self.groups == 1:
            return super().forward(x, output_size)
        xs = x.chunk(self.groups, dim=1)
        ws = self.weight.chunk(self.groups, dim=0)
        return torch.cat([F.conv_transpose2d(xi, wi, None, self.stride, self.padding)
                          for xi, wi in zip(xs, ws, strict=True)], dim=1)


class EnsembleAE(nn.Module):
    """N autoencoders as one module: input (B, N, s, s), outputs per member.

    Args:
        members: Number of learners N held by this module.
        input_size: Side s of the square input (a multiple of 16; 64 by default, 128 selectable).
        backbone: ``"ae"`` (reconstruction only) or ``"aeu"`` (reconstruction and log-variance).
        width: Channels of the first convolution (w).
        mid: Width of the fully connected layers around the latent code.
        latent: Size of the latent code.
    """

    def __init__(self, members: int = 1, input_size: int = 64, backbone: str = "aeu", width: int = 16,
                 mid: int = 2048, latent: int = 16) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if input_size % 16 or input_size < 16:
            raise ValueError(f"input_size must be a positive multiple of 16, got {input_size}")
        self.members, self.input_size, self.backbone = members, input_size, backbone
        self.width, self.mid, self.latent = width, mid, latent
        m = members
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(m * cin, m * cout, 4, 2, 1, groups=m, bias=False),
                          nn.BatchNorm2d(m * cout), nn.ReLU(inplace=True))
            for cin, cout in itertools.pairwise(chans))
        self.fm = input_size // 16
        flat = 4 * width * self.fm * self.fm
        self.enc_fc1, self.enc_bn = GroupedLinear(m, flat, mid), nn.BatchNorm1d(m * mid)
        self.enc_fc2 = GroupedLinear(m, mid, latent)
        self.dec_fc1, self.dec_bn = GroupedLinear(m, latent, mid), nn.BatchNorm1d(m * mid)
        self.dec_fc2 = GroupedLinear(m, mid, flat)
        self.out_channels = 2 if backbone == "aeu" else 1
        dchans = [4 * width, 4 * width, 2 * width, width]
        self.decoder = nn.ModuleList(
            nn.Sequential(GroupedConvTranspose2d(m * cin, m * cout, 4, 2, 1, groups=m, bias=False),
                          nn.BatchNorm2d(m * cout), nn.ReLU(inplace=True))
            for cin, cout in itertools.pairwise(dchans))
        self.head = GroupedConvTranspose2d(m * width, m * self.out_channels, 4, 2, 1, groups=m, bias=False)

    def _bn1d(self, bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        return bn(x.reshape(b, -1)).reshape(b, self.members, -1)

    def forward(self, x: torch.Tensor, feature: str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Reconstructions (B, N, s, s), log-variances (B, N, s, s) or None, and one layer's features.

        ``feature`` names a layer of :data:`FEATURE_LAYERS`; its activations come back flattened per
        member as (B, N, D), for RAR's CKA.
        """
        b, m = x.shape[0], self.members
        if x.shape[1] != m:
            raise ValueError(f"expected {m} input channel(s), one per learner; got {x.shape[1]}")
        feats: dict[str, torch.Tensor] = {}
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h)
            feats[f"enc{i + 1}"] = h
        h = h.reshape(b, m, -1)
        z = self.enc_fc2(F.relu(self._bn1d(self.enc_bn, self.enc_fc1(h))))
        feats["latent"] = z
        h = self.dec_fc2(F.relu(self._bn1d(self.dec_bn, self.dec_fc1(z))))
        h = h.reshape(b, m * 4 * self.width, self.fm, self.fm)
        feats["bottleneck"] = h
        for i, block in enumerate(self.decoder):
            h = block(h)
            feats[f"dec{i + 1}"] = h
        out = self.head(h).reshape(b, m, self.out_channels, self.input_size, self.input_size)
        recon = out[:, :, 0]
        log_var = out[:, :, 1] if self.out_channels == 2 else None
        feat = None if feature is None else feats[feature].reshape(b, m, -1)
        return recon, log_var, feat

    # -- one learner ↔ the ensemble ----------------------------------------------------------------
    def config(self) -> dict[str, int | str]:
        return {"input_size": self.input_size, "backbone": self.backbone, "width": self.width, "mid": self.mid,
                "latent": self.latent}

    def member(self, index: int) -> EnsembleAE:
        """Learner ``index`` as a one-member module (a copy)."""
        one = EnsembleAE(1, **self.config())  # type: ignore[arg-type]
        state = {}
        for k, v in self.state_dict().items():
            state[k] = v.clone() if k.endswith("num_batches_tracked") else v.chunk(self.members, 0)[index].clone()
        one.load_state_dict(state)
        return one.to(next(self.parameters()).device)


def stack_members(learners: list[EnsembleAE]) -> EnsembleAE:
    """One N-member module from N trained learners (each one- or multi-member), tensors concatenated."""
    if not learners:
        raise ValueError("no learners to stack")
    cfg = learners[0].config()
    if any(lr.config() != cfg for lr in learners):
        raise ValueError("learners of an ensemble must share one architecture")
    out = EnsembleAE(sum(lr.members for lr in learners), **cfg)  # type: ignore[arg-type]
    states = [lr.state_dict() for lr in learners]
    merged = {}
    for k in states[0]:
        if k.endswith("num_batches_tracked"):
            merged[k] = states[0][k].clone()
        else:
            merged[k] = torch.cat([s[k].detach().cpu() for s in states], 0)
    out.load_state_dict(merged)
    return out.to(next(learners[0].parameters()).device)


# -- losses and maps ---------------------------------------------------------------------------------
def reconstruction_loss(recon: torch.Tensor, log_var: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Training loss per member (N,): MSE for AE, the heteroscedastic Gaussian NLL for AEU.

    AEU: mean(exp(−s)·(x − x̂)²) + mean(s) with s the predicted log-variance (up to constants, the
    negative log-likelihood of x under N(x̂, eˢ)), which lets the model down-weight pixels it cannot
    reconstruct on normal data instead of blurring them.
    """
    sq = (recon - x) ** 2
    if log_var is None:
        return sq.mean(dim=(0, 2, 3))
    return (torch.exp(-log_var) * sq).mean(dim=(0, 2, 3)) + log_var.mean(dim=(0, 2, 3))


def ensemble_maps(model: EnsembleAE, x: torch.Tensor, kinds: tuple[str, ...] = ("dual",)) -> dict[str, torch.Tensor]:
    """Per-pixel anomaly maps (B, s, s) of an N-member ensemble for inputs x (B, 1, s, s).

    ``reconstruction`` (paper's "Ens"): squared error of the ensemble's mean reconstruction (for AEU
    divided by the mean predicted variance). ``output`` (paper's "Unc", eq. 5): the spread of the
    learners' reconstructions (AEU: normalised by the mean predicted standard deviation). ``dual`` (DSU,
    eq. 6): the spread across learners of ∇ₓL_i ⊙ |f_i(x) − x|, with L_i learner i's reconstruction
    error; gradients are taken for all learners in one backward pass (each input channel feeds one
    learner, so the gradient of the summed loss is every learner's own gradient).

    For ``dual`` the caller must have autograd enabled (``Detector.score`` runs under inference mode;
    the D2UE detector leaves it for this call). The model should be in eval mode.
    """
    unknown = set(kinds) - set(MAP_KINDS)
    if unknown:
        raise ValueError(f"unknown map kind(s) {sorted(unknown)}; known: {MAP_KINDS}")
    m = model.members
    xr = x.expand(-1, m, -1, -1).clone()
    dual = "dual" in kinds
    if dual:
        xr.requires_grad_(True)
    recon, log_var, _ = model(xr)
    var_mean = None if log_var is None else torch.exp(log_var.detach()).mean(dim=1)
    out: dict[str, torch.Tensor] = {}
    if dual:
        if log_var is None:
            # The official code differentiates the L1 error for AE; its gradient's magnitude then carries
            # the Jacobian's disagreement, not the residual's size a second time.
            err = (recon - xr).abs()
        else:
            err = torch.exp(-log_var) * (recon - xr) ** 2
        # Sum over pixels, not mean: per-pixel magnitudes do not then shrink with the input size.
        (grad,) = torch.autograd.grad(err.sum(), xr)
        g = grad * (recon.detach() - xr.detach()).abs()
        if var_mean is not None:
            g = g / var_mean.sqrt().unsqueeze(1)
        out["dual"] = g.std(dim=1) if m > 1 else g.abs().squeeze(1)
    recon, xd = recon.detach(), x.detach()[:, 0]
    if "output" in kinds:
        spread = recon.var(dim=1) if m > 1 else torch.zeros_like(recon[:, 0])
        out["output"] = (spread / var_mean).sqrt() if var_mean is not None else spread.sqrt()
    if "reconstruction" in kinds:
        err = (xd - recon.mean(dim=1)) ** 2
        out["reconstruction"] = err / var_mean if var_mean is not None else err
    return out
