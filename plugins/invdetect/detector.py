"""InvDetect: anomaly detection in the noise-latent space of DDIM inversion (Ma et al.).

Training: overlapping b × b patches (stride b/2) of normal slices train a time-conditioned U-Net with the
DDPM objective (T = 1000); every normal patch is inverted by deterministic DDIM to its noise latent; a
one-class SVM (RBF, ν = 0.1, γ = 1/(dim·var)) encloses the normal latents. Scoring: each patch of a slice
is inverted (all patches of a batch of slices in one U-Net call per step), scored by −f(z) (higher = more
anomalous), and the patch scores become a pixel map by the paper's Gaussian-weighted average (ω = b/4).
The per-pixel aggregated latents r_p (projected on the first ``feature_dims`` principal axes of the normal
latents) are returned as ``AnomalyResult.features`` for the product's SCR; the paper's own SCR (raw −f(z),
t = 0, T = 1, full latents) is ``segment`` with ``scr_mode="paper"`` (``scr_paper.py``).

Training is counted in optimiser steps (``train_steps``), never in passes over the data: how many patches a
site has must not decide how long a diffusion model trains. See README.md beside this file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch

from ...engine.batching import batch_stage, batches
from ...engine.detectors.base import Detector, DetectorConfig
from ...engine.detectors.result import AnomalyResult
from ...engine.errors import ConfigError, ModelError
from ...engine.patchmaps import to_slice_grid
from ...engine.preprocess.resize import resize_tensor, to_tensor
from ...engine.progress import CancelToken, ProgressCallback, check, report, stage
from ...engine.training import step_batches, train_loop
from .diffusion import ddim_invert, ddpm_loss, make_unet, schedulers
from .ocsvm import KernelOCSVM, fit_ocsvm
from .patches import aggregate, extract_patches, n_patches
from .scr_paper import DEFAULT_FPR, neighbour_sq_distances, paper_scr, paper_weights, select_lambda, tau_from

#: What ``segment`` cuts: the product's calibrated SCR, the paper's SCR, or the paper's "w/o SCR" (A > 0).
SCR_MODES = ("product", "paper", "threshold")
#: What the result says of the masks ``score`` cuts itself, per ``scr_mode`` (the product's SCR is not cut then).
OWN_MASK_METHODS = {"paper": "InvDetect's own SCR (paper eqs. 2-4: raw -f(z), t = 0, T = 1, tau from the latents)",
                    "threshold": "InvDetect's A > 0 (the paper's 'w/o SCR')"}
#: Optimiser steps between two entries of the training log (and the final loss: the last entry's mean).
LOG_STEPS = 100


@dataclasses.dataclass
class InvDetectConfig(DetectorConfig):
    """Paper settings (b = 32, T = 1000, Adam 1e-3, ν = 0.1, ω = b/4) except the U-Net size and inversion steps.

    ``train_steps`` is the number of Adam steps of the U-Net (batches of ``batch_size`` patches), whatever the
    number of training patches; ``epochs`` > 0 instead trains that many passes over the patches (version 1's
    schedule, kept for saved benches and bundles; the log records the steps it took). ``input_size`` resizes
    slices before patching (None keeps the scan's grid); ``inversion_steps`` is the number of DDIM steps
    (paper: 200; see README for the measured trade-off). ``exact_svm_max`` is the cut-over to the Nyström +
    SGD one-class SVM. ``keep_latents`` normal latents are stored in the bundle so ``fine_tune`` can refit
    the SVM with a site's marked normals. ``scr_mode`` picks what ``segment`` cuts (``SCR_MODES``);
    ``scr_lambda`` fixes the paper SCR's λ (None: the smallest λ flagging under ``scr_fpr`` of the normal
    training slices' pixels, the paper's rule).
    """

    input_size: int | None = 128
    patch_size: int = 32
    channels: tuple[int, ...] = (16, 32, 32, 64)
    layers_per_block: int = 1
    norm_groups: int = 8
    num_train_timesteps: int = 1000
    train_steps: int = 10_000
    epochs: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    inversion_steps: int = 10
    nu: float = 0.1
    exact_svm_max: int = 10000
    nystroem_components: int = 1000
    feature_dims: int = 8
    keep_latents: int = 4096
    score_batch: int = 512
    amp: bool = True
    image_score: str = "max"
    scr_mode: str = "product"
    scr_lambda: float | None = None
    scr_fpr: float = DEFAULT_FPR

    #: Ranges beyond ``COMMON_LIMITS`` (``patch_size`` replaces the feature detectors' 1–31), 4–16× the defaults
    #: and the paper (b = 32, T = 1000, channels up to 256). ``patch_size`` ≤ 128 allows at most 8 U-Net stages,
    #: so the largest U-Net, 8 stages of 256 channels with 4 layers each, holds 145 M parameters (0.6 GiB; the
    #: default 0.7 M). Latents have b² values: ``keep_latents`` stores up to 32,768 × b² float16 (64 MiB at
    #: b = 32, 1 GiB at b = 128); Nyström's kernel is ``nystroem_components``² float64 (128 MiB at 4,096) and
    #: its features n × components; ``feature_dims`` values per voxel come back for SCR (4 bytes each, ≤ 32).
    #: ``train_steps`` up to 10⁷ (10³ × the default); ``epochs`` 0 means "count steps".
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "patch_size": (8, 128),
        "channels": (1, 256),  # each stage's
        "layers_per_block": (1, 4),
        "norm_groups": (1, 256),
        "num_train_timesteps": (1, 10_000),
        "train_steps": (1, 10_000_000),
        "epochs": (0, 100_000),
        "inversion_steps": (1, 10_000),
        "nu": (0.0, 1.0),  # (0, 1]: __post_init__ refuses 0
        "exact_svm_max": (1, 100_000),
        "nystroem_components": (1, 4096),
        "feature_dims": (1, 32),
        "keep_latents": (0, 1 << 15),
        "scr_lambda": (0.0, 1e6),
        "scr_fpr": (0.0, 1.0),  # (0, 1): __post_init__ refuses the ends
    }

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        b = self.patch_size
        if b < 8 or b % 4:
            raise ConfigError(f"patch_size must be a multiple of 4 and at least 8, got {b}")
        if b % (2 ** (len(self.channels) - 1)):
            raise ConfigError(f"patch_size {b} must be divisible by 2^(stages − 1) = {2 ** (len(self.channels) - 1)}")
        if not self.channels or any(c < 1 or c % self.norm_groups for c in self.channels):
            raise ConfigError("every U-Net channel count must be a positive multiple of "
                              f"norm_groups={self.norm_groups}")
        if self.input_size is not None and self.input_size < b:
            raise ConfigError(f"input_size ({self.input_size}) must be at least the patch size ({b})")
        if min(self.train_steps, self.batch_size, self.inversion_steps, self.num_train_timesteps,
               self.score_batch) < 1 or self.epochs < 0:
            raise ConfigError("train_steps, batch_size, inversion_steps, num_train_timesteps and score_batch must be "
                              "≥ 1 (epochs ≥ 0)")
        if self.inversion_steps > self.num_train_timesteps:
            raise ConfigError("inversion_steps cannot exceed num_train_timesteps")
        if not 0 < self.nu <= 1 or self.lr <= 0:
            raise ConfigError("nu must be in (0, 1] and lr positive")
        if self.feature_dims < 1 or self.keep_latents < 0 or self.exact_svm_max < 1:
            raise ConfigError("feature_dims ≥ 1, keep_latents ≥ 0 and exact_svm_max ≥ 1 are required")
        if self.image_score not in ("max", "mean"):
            raise ConfigError(f"image_score must be 'max' or 'mean', got {self.image_score!r}")
        if self.scr_mode not in SCR_MODES:
            raise ConfigError(f"scr_mode must be one of {', '.join(SCR_MODES)}, got {self.scr_mode!r}")
        if not 0 < self.scr_fpr < 1 or (self.scr_lambda is not None and self.scr_lambda < 0):
            raise ConfigError("scr_fpr must be in (0, 1) and scr_lambda ≥ 0")

    def optimiser_steps(self, n_patches: int) -> int:
        """Adam steps the U-Net takes on ``n_patches`` training patches (``train_steps`` unless ``epochs`` > 0)."""
        if self.epochs > 0:
            return self.epochs * math.ceil(n_patches / self.batch_size)
        return self.train_steps


@dataclasses.dataclass
class Segmentation:
    """Masks (n, H, W) of ``InvDetectDetector.segment`` with the result they were cut from and how."""

    result: AnomalyResult
    masks: np.ndarray
    mode: str
    lam: float | None = None
    tau: float | None = None


class InvDetectDetector(Detector):
    name: ClassVar[str] = "invdetect"
    #: 2: training counted in optimiser steps; the paper SCR's τ and λ are kept in the training log.
    version: ClassVar[str] = "2"
    description: ClassVar[str] = "InvDetect: one-class SVM on DDIM-inversion noise latents of patches"
    config_class = InvDetectConfig

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(config, device, seed)
        self.unet: Any = None
        self.svm: KernelOCSVM | None = None
        self.pca_mean: np.ndarray | None = None
        self.pca_axes: np.ndarray | None = None
        self.kept: np.ndarray | None = None
        self.training_log: dict[str, Any] = {}

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        return {"input_size": 32, "patch_size": 16, "channels": (4, 8), "norm_groups": 4, "train_steps": 4,
                "batch_size": 32, "inversion_steps": 2, "keep_latents": 64, "feature_dims": 4}

    @property
    def cfg(self) -> InvDetectConfig:
        assert isinstance(self.config, InvDetectConfig)
        return self.config

    @property
    def stride(self) -> int:
        return self.cfg.patch_size // 2

    @property
    def omega(self) -> float:
        return self.cfg.patch_size / 4.0

    # -- data ------------------------------------------------------------------------------------
    def _grid(self, slices: np.ndarray) -> torch.Tensor:
        """(n, H, W) in [0, 1] → (n, 1, h, w) in [−1, 1] at the working size (DDPM's data range)."""
        x = to_tensor(slices)
        if self.cfg.input_size is not None:
            x = resize_tensor(x, self.cfg.input_size)
        return x * 2.0 - 1.0

    def _new_unet(self) -> Any:
        c = self.cfg
        with torch.inference_mode(False):
            unet = make_unet(c.patch_size, c.channels, c.layers_per_block, c.norm_groups).to(self.device)
        if self.device.type == "cuda":
            unet = unet.to(memory_format=torch.channels_last)
        return unet

    # -- inversion ------------------------------------------------------------------------------
    def invert(self, patches: torch.Tensor, progress: ProgressCallback | None = None,
               cancel: CancelToken | None = None) -> torch.Tensor:
        """Noise latents (N, 1, b, b) of patches in [−1, 1], in batches of ``score_batch`` patches."""
        assert self.unet is not None
        c = self.cfg
        _, inverse = schedulers(c.num_train_timesteps)
        self.unet.eval()
        out = []
        n = len(patches)
        for b in batches(n, c.score_batch, progress, cancel, "inverted {done}/{total} patches"):
            xb = patches[b].to(self.device)
            if self.device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            z = ddim_invert(self.unet, inverse, xb, c.inversion_steps, amp=c.amp, cancel=cancel,
                            progress=batch_stage(progress, b, n))
            out.append(z.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 1, c.patch_size, c.patch_size)

    def latents(self, slices: np.ndarray, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Flattened noise latents (n·L, b²) of every patch, with the working and padded grid sizes."""
        x = self._grid(slices)
        patches, padded = extract_patches(x, self.cfg.patch_size, self.stride)
        z = self.invert(patches, progress, cancel)
        return z.reshape(len(z), -1).numpy(), tuple(x.shape[-2:]), padded  # type: ignore[return-value]

    # -- training --------------------------------------------------------------------------------
    def _train_unet(self, patches: torch.Tensor, progress: ProgressCallback | None,
                    cancel: CancelToken | None) -> float:
        """``cfg.optimiser_steps`` Adam steps of the DDPM objective; returns the last ``LOG_STEPS`` steps' mean loss."""
        c = self.cfg
        sched, _ = schedulers(c.num_train_timesteps)
        gen = torch.Generator().manual_seed(self.seed)  # the batch order and the DDPM noise and time steps
        torch.manual_seed(self.seed)  # the U-Net's initial weights
        unet = self.unet = self._new_unet()
        total = c.optimiser_steps(len(patches))
        done = [0]

        def step(idx: torch.Tensor) -> torch.Tensor:
            done[0] += 1
            xb = patches[idx].to(self.device)
            if self.device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            if c.amp and self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return ddpm_loss(unet, sched, xb, gen)
            return ddpm_loss(unet, sched, xb, gen)

        def tell(f: float, m: str) -> None:
            report(progress, f, f"U-Net step {done[0]}/{total}, {m}")

        batches, rounds = step_batches(len(patches), c.batch_size, total, LOG_STEPS, even=True)
        log = train_loop(unet, step, batches, rounds, lr=c.lr, generator=gen, freeze=True, progress=tell,
                         cancel=cancel, start=0.0, stop=0.6, message="loss {loss:.4f}", report_every="step")
        self.training_log["optimiser_steps"] = done[0]
        self.training_log["loss_log"] = {"every_steps": LOG_STEPS, "mean_loss": [round(h["loss"], 5)
                                                                              for h in log.history]}
        return log.final_loss

    def _fit_normality(self, z: np.ndarray) -> None:
        """SVM on the normal latents; PCA axes for SCR's features; a subsample kept for fine-tuning."""
        c = self.cfg
        self.svm = fit_ocsvm(z, nu=c.nu, exact_max=c.exact_svm_max, n_components=c.nystroem_components,
                             seed=self.seed)
        z64 = z.astype(np.float64)
        self.pca_mean = z64.mean(0)
        k = min(c.feature_dims, z.shape[1], len(z))
        _, _, vt = np.linalg.svd(z64 - self.pca_mean, full_matrices=False)
        self.pca_axes = vt[:k]
        self._keep(z)

    def _keep(self, z: np.ndarray) -> None:
        keep = self.cfg.keep_latents
        if len(z) > keep:
            idx = np.random.default_rng(self.seed).choice(len(z), keep, replace=False)
            z = z[np.sort(idx)]
        self.kept = z.astype(np.float16)

    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.training_log = {}
        report(progress, 0.0, "extracting patches")
        patches, _ = extract_patches(self._grid(normals), self.cfg.patch_size, self.stride)
        loss = self._train_unet(patches, progress, cancel)
        self.training_log["final_loss"] = loss
        self.fit_latent_model(normals, stage(progress, 0.6, 1.0), cancel)

    def fit_latent_model(self, normals: np.ndarray, progress: ProgressCallback | None = None,
                         cancel: CancelToken | None = None) -> None:
        """Everything of ``fit`` after the U-Net: invert the normals, fit SVM and PCA, calibrate the paper's SCR.

        Public so a bench can vary ``inversion_steps`` on one trained U-Net (the U-Net is the slow part).
        """
        assert self.unet is not None
        c = self.cfg
        x = self._grid(normals)
        patches, padded = extract_patches(x, c.patch_size, self.stride)
        z = self.invert(patches, stage(progress, 0.0, 0.75), cancel)
        check(cancel)
        report(progress, 0.75, "fitting the one-class SVM")
        z = z.reshape(len(z), -1).numpy()
        self._fit_normality(z)
        assert self.svm is not None
        self.training_log.update({"n_patches": len(z), "svm": self.svm.kind, "support": len(self.svm.anchors),
                                  "gamma": self.svm.gamma, "inversion_steps": c.inversion_steps})
        report(progress, 0.9, "calibrating the paper's SCR on the training slices")
        self._fit_paper_scr(z, len(x), tuple(x.shape[-2:]), padded)  # type: ignore[arg-type]
        report(progress, 1.0, "done")

    def _fit_paper_scr(self, z: np.ndarray, n: int, shape: tuple[int, int], padded: tuple[int, int]) -> None:
        """τ (τ² = mean ‖r_p − r_q‖² of the full latents) and λ (paper's 1 % rule) on the normal training slices.

        Both are numbers in the training log (bundle.json), so the paper's SCR needs no extra tensor.
        """
        c = self.cfg
        raw = self._raw_map(z, n, shape, padded)
        down, right = neighbour_sq_distances(z, n, shape, padded, c.patch_size, self.stride, self.omega)
        tau = tau_from([(down, right)])
        weights = paper_weights(down, right, tau)
        scr: dict[str, Any] = {"tau": tau, "fpr_target": c.scr_fpr}
        if c.scr_lambda is None:
            choice = select_lambda(raw, weights, c.scr_fpr)
            scr.update(lam=choice.lam, flagged=choice.flagged, flagged_without=choice.flagged_without,
                       target_met=choice.met)
        else:
            scr.update(lam=float(c.scr_lambda), flagged=float(paper_scr(raw, weights, c.scr_lambda).mean()),
                       flagged_without=float((raw > 0).mean()))
        self.training_log["paper_scr"] = scr

    def _fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> None:
        """Refit the SVM on the kept normal latents plus the marked slices' latents (same γ, same U-Net).

        The U-Net is not tuned: changing it would make the stored latents stale (their patches are not kept).
        """
        assert self.svm is not None
        z_new, _, _ = self.latents(normals, stage(progress, 0.0, 0.9), cancel)
        old = self.kept.astype(np.float32) if self.kept is not None else np.zeros((0, z_new.shape[1]), np.float32)
        z = np.concatenate([old, z_new])
        c = self.cfg
        self.svm = fit_ocsvm(z, nu=c.nu, gamma=self.svm.gamma, exact_max=c.exact_svm_max,
                             n_components=c.nystroem_components, seed=self.seed)
        self._keep(z)
        report(progress, 1.0, "SVM refitted")

    # -- scoring ---------------------------------------------------------------------------------
    def _raw_map(self, z: np.ndarray, n: int, shape: tuple[int, int], padded: tuple[int, int]) -> np.ndarray:
        """The paper's A (eq. 1) on the working grid: Gaussian-weighted −f(z), raw decision units."""
        assert self.svm is not None
        s = torch.from_numpy(-self.svm.decision_function(z).astype(np.float32))[:, None]
        c = self.cfg
        return aggregate(s, n, shape, padded, c.patch_size, self.stride, self.omega)[:, 0].numpy()

    def _score_latents(self, slices: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None
                       ) -> tuple[AnomalyResult, np.ndarray, tuple[int, int], tuple[int, int]]:
        """The result, with the patch latents and grid sizes it came from (``segment`` reuses them)."""
        assert self.svm is not None and self.pca_axes is not None and self.pca_mean is not None
        c = self.cfg
        n, h, w = slices.shape
        z, (hh, ww), padded = self.latents(slices, stage(progress, 0.0, 0.95), cancel)
        check(cancel)
        s = -self.svm.decision_function(z)
        feats = (z.astype(np.float64) - self.pca_mean) @ self.pca_axes.T
        vals = torch.from_numpy(np.concatenate([s[:, None], feats], 1).astype(np.float32))
        maps = aggregate(vals, n, (hh, ww), padded, c.patch_size, self.stride, self.omega)  # (n, 1+k, hh, ww)
        # No extra smoothing: the Gaussian-weighted patch average (ω = b/4) is the paper's smoothing.
        heat = to_slice_grid(maps[:, 0], (h, w))
        k = maps.shape[1] - 1
        f = to_slice_grid(maps[:, 1:].reshape(n * k, hh, ww), (h, w))
        features = np.ascontiguousarray(f.reshape(n, k, h, w).transpose(0, 2, 3, 1))
        flat = heat.reshape(n, -1)
        scores = flat.max(1) if c.image_score == "max" else flat.mean(1)
        result = AnomalyResult(heatmaps=heat, scores=scores, features=features,
                               info={"patches_per_slice": n_patches(hh, ww, c.patch_size, self.stride),
                                     "inversion_steps": c.inversion_steps, "svm": self.svm.kind,
                                     "image_score": f"{c.image_score} of the heatmap",
                                     "heatmap_units": "raw −f(z) of the one-class SVM (0 on its boundary)"})
        return result, z, (hh, ww), padded

    @property
    def cuts_own_masks(self) -> bool:
        """``scr_mode`` paper (with the τ a version-2 fit records) or threshold: ``score`` cuts the masks itself."""
        mode = self.cfg.scr_mode
        return mode == "threshold" or (mode == "paper" and "tau" in (self.training_log.get("paper_scr") or {}))

    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        result, z, grid, padded = self._score_latents(slices, progress, cancel)
        if self.cuts_own_masks:
            masks, _, _ = self._own_cut(z, len(slices), grid, padded, slices.shape[1:])
            result.own_masks = masks
            result.own_masks_method = OWN_MASK_METHODS[self.cfg.scr_mode]
        report(progress, 1.0, "done")
        return result

    def _own_cut(self, z: np.ndarray, n: int, grid: tuple[int, int], padded: tuple[int, int],
                 shape: tuple[int, int], lam: float | None = None) -> tuple[np.ndarray, float | None, float | None]:
        """The paper's masks of ``n`` slices from their latents: (masks on the slices' grid, λ, τ)."""
        raw = self._raw_map(z, n, grid, padded)
        if self.cfg.scr_mode == "threshold":
            cut, lam_used, tau = raw > 0, None, None
        else:
            c, scr = self.cfg, self.training_log["paper_scr"]
            tau = float(scr["tau"])
            lam_used = float(scr["lam"] if lam is None else lam)
            down, right = neighbour_sq_distances(z, n, grid, padded, c.patch_size, self.stride, self.omega)
            cut = paper_scr(raw, paper_weights(down, right, tau), lam_used)
        return to_slice_grid(cut.astype(np.float32), shape) > 0.5, lam_used, tau

    def segment(self, slices: np.ndarray, lam: float | None = None, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> Segmentation:
        """Score slices and cut their abnormality masks the way ``scr_mode`` says.

        ``"paper"``: the paper's SCR (eqs. 2–4): unary σ(A) on the raw map A (t = 0, T = 1), pairwise
        exp(−‖r_p − r_q‖²/τ²) on the full aggregated latents, τ and λ from the normal training slices (``lam``
        overrides λ). ``"threshold"``: the paper's "w/o SCR", A > 0. ``"product"``: the product's masks, i.e.
        the model's calibration and the engine's SCR (``engine.scoring.apply_calibration``; needs a calibrated
        model). ``"paper"`` cuts on the working grid (``input_size``) and brings the mask to the slices' grid.

        Raises:
            ModelError: a mode whose parameters the model lacks (uncalibrated for ``"product"``; a version-1
                bundle, which has no τ, for ``"paper"``).
        """
        from ...engine.detectors.base import validate_slices

        if not self.fitted:
            raise ModelError("the invdetect detector is not trained yet: fit it or load a bundle")
        slices = validate_slices(slices)
        mode = self.cfg.scr_mode
        scr = self.training_log.get("paper_scr") or {}
        if mode == "paper" and "tau" not in scr:
            raise ModelError("this InvDetect model was saved before the paper's SCR was part of it (plugin version 1): "
                             "train it again to use scr_mode=paper")
        if mode == "product" and self.calibration is None:
            raise ModelError("scr_mode=product cuts the calibrated SCR mask: calibrate the model first")
        with torch.inference_mode():
            result, z, grid, padded = self._score_latents(slices, progress, cancel)
        n, h, w = slices.shape
        if mode == "product":
            from ...engine.scoring import apply_calibration

            assert self.calibration is not None
            cal = apply_calibration(self.calibration, result, slices)
            masks = cal.scr_mask if cal.scr_mask is not None else cal.mask
            return Segmentation(result, np.asarray(masks, bool), mode, cal.scr.lam, cal.scr.tau)
        masks, lam_used, tau = self._own_cut(z, n, grid, padded, (h, w), lam)
        report(progress, 1.0, "done")
        return Segmentation(result, masks, mode, lam_used, tau)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.unet is not None and self.svm is not None
        assert self.pca_mean is not None and self.pca_axes is not None
        state = {f"unet.{k}": v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
        state.update(self.svm.to_tensors("svm."))
        state["pca.mean"] = torch.from_numpy(self.pca_mean.copy())
        state["pca.axes"] = torch.from_numpy(np.ascontiguousarray(self.pca_axes))
        if self.kept is not None:
            state["kept_latents"] = torch.from_numpy(self.kept.copy())
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        unet = self._new_unet()
        with torch.inference_mode(False):
            unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        unet.eval()
        for p in unet.parameters():
            p.requires_grad_(False)
        self.unet = unet
        self.svm = KernelOCSVM.from_tensors(state, "svm.", kind=self.training_log.get("svm", "exact"))
        self.pca_mean = state["pca.mean"].double().numpy()
        self.pca_axes = state["pca.axes"].double().numpy()
        self.kept = state["kept_latents"].numpy() if "kept_latents" in state else None

    def extra_state(self) -> dict[str, Any]:
        return {"training_log": self.training_log}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.training_log = dict(state.get("training_log") or {})
        if self.svm is not None:
            self.svm.kind = self.training_log.get("svm", self.svm.kind)
