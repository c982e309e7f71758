"""InvDetect: anomaly detection in the noise-latent space of DDIM inversion (Ma et al.).

Training: overlapping b × b patches (stride b/2) of normal slices train a time-conditioned U-Net with the
DDPM objective (T = 1000); every normal patch is inverted by deterministic DDIM to its noise latent; a
one-class SVM (RBF, ν = 0.1, γ = 1/(dim·var)) encloses the normal latents. Scoring: each patch of a slice
is inverted (all patches of a batch of slices in one U-Net call per step), scored by −f(z) (higher = more
anomalous), and the patch scores become a pixel map by the paper's Gaussian-weighted average (ω = b/4).
The per-pixel aggregated latents r_p (projected on the first ``feature_dims`` principal axes of the normal
latents) are returned as ``AnomalyResult.features`` for SCR. See README.md beside this file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch

from ...engine.batching import batch_stage, batches
from ...engine.detectors.base import Detector, DetectorConfig
from ...engine.detectors.result import AnomalyResult
from ...engine.errors import ConfigError
from ...engine.patchmaps import to_slice_grid
from ...engine.preprocess.resize import resize_tensor, to_tensor
from ...engine.progress import CancelToken, ProgressCallback, check, report, stage
from ...engine.training import shuffled_batches, train_loop
from .diffusion import ddim_invert, ddpm_loss, make_unet, schedulers
from .ocsvm import KernelOCSVM, fit_ocsvm
from .patches import aggregate, extract_patches, n_patches


@dataclasses.dataclass
class InvDetectConfig(DetectorConfig):
    """Paper settings (b = 32, T = 1000, Adam 1e-3, ν = 0.1, ω = b/4) except the U-Net size and step count.

    ``input_size`` resizes slices before patching (None keeps the scan's grid); ``inversion_steps`` is the
    number of DDIM steps (paper: 200; see README for the measured trade-off). ``exact_svm_max`` is the
    cut-over to the Nyström + SGD one-class SVM. ``keep_latents`` normal latents are stored in the bundle
    so ``fine_tune`` can refit the SVM with a site's marked normals.
    """

    input_size: int | None = 128
    patch_size: int = 32
    channels: tuple[int, ...] = (16, 32, 32, 64)
    layers_per_block: int = 1
    norm_groups: int = 8
    num_train_timesteps: int = 1000
    epochs: int = 20
    batch_size: int = 64
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

    #: Ranges beyond ``COMMON_LIMITS`` (``patch_size`` replaces the feature detectors' 1–31), 4–16× the defaults
    #: and the paper (b = 32, T = 1000, channels up to 256). ``patch_size`` ≤ 128 allows at most 8 U-Net stages,
    #: so the largest U-Net, 8 stages of 256 channels with 4 layers each, holds 145 M parameters (0.6 GiB; the
    #: default 0.7 M). Latents have b² values: ``keep_latents`` stores up to 32,768 × b² float16 (64 MiB at
    #: b = 32, 1 GiB at b = 128); Nyström's kernel is ``nystroem_components``² float64 (128 MiB at 4,096) and
    #: its features n × components; ``feature_dims`` values per voxel come back for SCR (4 bytes each, ≤ 32).
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "patch_size": (8, 128),
        "channels": (1, 256),  # each stage's
        "layers_per_block": (1, 4),
        "norm_groups": (1, 256),
        "num_train_timesteps": (1, 10_000),
        "inversion_steps": (1, 10_000),
        "nu": (0.0, 1.0),  # (0, 1]: __post_init__ refuses 0
        "exact_svm_max": (1, 100_000),
        "nystroem_components": (1, 4096),
        "feature_dims": (1, 32),
        "keep_latents": (0, 1 << 15),
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
        if min(self.epochs, self.batch_size, self.inversion_steps, self.num_train_timesteps, self.score_batch) < 1:
            raise ConfigError("epochs, batch_size, inversion_steps, num_train_timesteps and score_batch must be ≥ 1")
        if self.inversion_steps > self.num_train_timesteps:
            raise ConfigError("inversion_steps cannot exceed num_train_timesteps")
        if not 0 < self.nu <= 1 or self.lr <= 0:
            raise ConfigError("nu must be in (0, 1] and lr positive")
        if self.feature_dims < 1 or self.keep_latents < 0 or self.exact_svm_max < 1:
            raise ConfigError("feature_dims ≥ 1, keep_latents ≥ 0 and exact_svm_max ≥ 1 are required")
        if self.image_score not in ("max", "mean"):
            raise ConfigError(f"image_score must be 'max' or 'mean', got {self.image_score!r}")


class InvDetectDetector(Detector):
    name: ClassVar[str] = "invdetect"
    version: ClassVar[str] = "1"
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
        return {"input_size": 32, "patch_size": 16, "channels": (4, 8), "norm_groups": 4, "epochs": 1,
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
        c = self.cfg
        sched, _ = schedulers(c.num_train_timesteps)
        gen = torch.Generator().manual_seed(self.seed)  # the batch order and the DDPM noise and time steps
        torch.manual_seed(self.seed)  # the U-Net's initial weights
        unet = self.unet = self._new_unet()

        def step(idx: torch.Tensor) -> torch.Tensor:
            xb = patches[idx].to(self.device)
            if self.device.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            if c.amp and self.device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    return ddpm_loss(unet, sched, xb, gen)
            return ddpm_loss(unet, sched, xb, gen)

        log = train_loop(unet, step, shuffled_batches(len(patches), c.batch_size, even=True), c.epochs, lr=c.lr,
                         generator=gen, freeze=True, progress=progress, cancel=cancel, start=0.0, stop=0.6,
                         message="U-Net epoch {epoch}/{epochs} loss {loss:.4f}", report_every="step")
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
        c = self.cfg
        report(progress, 0.0, "extracting patches")
        x = self._grid(normals)
        patches, _ = extract_patches(x, c.patch_size, self.stride)
        loss = self._train_unet(patches, progress, cancel)
        z = self.invert(patches, stage(progress, 0.6, 0.95), cancel)
        check(cancel)
        report(progress, 0.95, "fitting the one-class SVM")
        z = z.reshape(len(z), -1).numpy()
        self._fit_normality(z)
        assert self.svm is not None
        self.training_log = {"final_loss": loss, "n_patches": len(z), "svm": self.svm.kind,
                             "support": len(self.svm.anchors), "gamma": self.svm.gamma}
        report(progress, 1.0, "done")

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
    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
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
        report(progress, 1.0, "done")
        return AnomalyResult(heatmaps=heat, scores=scores, features=features,
                             info={"patches_per_slice": n_patches(hh, ww, c.patch_size, self.stride),
                                   "inversion_steps": c.inversion_steps, "svm": self.svm.kind,
                                   "image_score": f"{c.image_score} of the heatmap"})

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
