"""D2UE: a CKA-repulsive autoencoder ensemble scored by dual-space uncertainty (Gu et al., MICCAI 2024).

N identical autoencoders (AE or AEU) are trained one after another; learner n minimises its
reconstruction loss plus λ · mean CKA between its features and those of the already trained learners
(Redundancy-Aware Repulsion, paper eqs. 1–4). At inference each learner's input gradient of its
reconstruction error is multiplied by its residual |f(X) − X|, and the pixel map is the spread of these
products across learners (Dual-Space Uncertainty, eq. 6). Unlike the official code this runs on CPU,
CUDA and MPS, batches the learners into one grouped network, and returns pixel maps on the scan's grid.
The choices the paper leaves open are listed in README.md beside this file.

Training is counted in optimiser steps per learner (``train_steps``), not in passes over the data: the paper's
250 epochs of batch 64 over its Brain Tumor MRI set's 1,000 normals (drop_last, as the official loader) are
3,750 Adam steps per learner, while 250 passes over brain1's 48 slices would be 250.

Note on gradients at inference: ``Detector.score`` runs ``_score`` under ``torch.inference_mode()``.
DSU needs ∂L/∂X, so ``_score`` re-enables autograd (``torch.inference_mode(False)`` and
``torch.enable_grad()``) and builds its input tensors inside that block; tensors made under inference
mode cannot take part in autograd. Model parameters never require gradients while scoring, so only the
input gradient is computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from ...engine.batching import batches
from ...engine.detectors.base import Detector, DetectorConfig
from ...engine.detectors.result import AnomalyResult
from ...engine.detectors.schema import check_parameters
from ...engine.errors import ConfigError
from ...engine.patchmaps import to_heatmap
from ...engine.preprocess.resize import resize_tensor, to_tensor
from ...engine.progress import CancelToken, ProgressCallback, check, report
from ...engine.training import EpochBatches, shuffled_batches, step_batches, train_loop
from .cka import mean_cka
from .model import (
    BACKBONES,
    FEATURE_LAYERS,
    MAP_KINDS,
    EnsembleAE,
    ensemble_maps,
    reconstruction_loss,
    stack_members,
)

IMAGE_SCORES = ("mean", "max")
#: Paper learning rates (Adam): 5e-4 for AE, 1e-3 for AEU.
DEFAULT_LR = {"ae": 5e-4, "aeu": 1e-3}
#: The paper's schedule in optimiser steps per learner: 250 epochs × ⌊1,000 / 64⌋ batches (Brain Tumor MRI's
#: 1,000 training normals, batch 64, the official loader's drop_last). Its other sets give 5,750 (LAG, 1,500
#: normals) to 15,500 (VinDr-CXR, 4,000).
PAPER_STEPS = 250 * (1000 // 64)
#: Optimiser steps between two entries of the training log (the final loss is the last entry).
LOG_STEPS = 50


@dataclasses.dataclass
class D2UEConfig(DetectorConfig):
    """Paper settings where it gives them (3 learners, 64², λ = 1, batch 64, Adam, 250 epochs as 3,750 steps).

    ``repulsion=False`` and ``uncertainty="output"`` are the paper's ablations (no RAR; output-space
    uncertainty only); ``uncertainty="reconstruction"`` is its "Ens" baseline. ``train_steps`` is the number
    of Adam steps per learner whatever the number of slices; ``epochs`` > 0 instead trains that many passes
    (version 1's schedule, kept for saved benches and bundles; the log records the steps taken).
    """

    backbone: str = "aeu"
    n_learners: int = 3
    input_size: int = 64
    width: int = 16
    mid: int = 2048
    latent: int = 16
    train_steps: int = PAPER_STEPS
    epochs: int = 0
    batch_size: int = 64
    lr: float | None = None
    repulsion: bool = True
    lam: float = 1.0
    feature_layer: str = "latent"
    uncertainty: str = "dual"
    image_score: str = "mean"
    smoothing_sigma: float = 1.0
    score_batch: int = 32
    fine_tune_epochs: int = 10
    fine_tune_lr: float = 1e-4

    #: Ranges beyond ``COMMON_LIMITS``: 4–32× the paper's settings (3 learners, 64² or 128², w 16, mid 2,048,
    #: latent 16). Alone they cannot bound the ensemble: its bottleneck holds 2·N·mid·w·s²/64 weights, which at
    #: every maximum would be 275 G parameters. ``__post_init__`` therefore also counts the parameters
    #: (``ensemble_parameters``) and refuses more than ``schema.MAX_PARAMETERS`` (2**28, 1 GiB of float32; the
    #: default is 13.5 M, 128² 51 M), before ``load_state_dict`` or ``fit`` builds the network.
    LIMITS: ClassVar[dict[str, tuple[float, float]]] = {
        "n_learners": (2, 16),
        "input_size": (32, 512),
        "width": (1, 128),
        "mid": (1, 16384),
        "latent": (1, 512),
        "lam": (0.0, 100.0),
        "train_steps": (1, 10_000_000),
        "epochs": (0, 100_000),
    }

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {', '.join(BACKBONES)}, got {self.backbone!r}")
        if self.uncertainty not in MAP_KINDS:
            raise ConfigError(f"uncertainty must be one of {', '.join(MAP_KINDS)}, got {self.uncertainty!r}")
        if self.image_score not in IMAGE_SCORES:
            raise ConfigError(f"image_score must be one of {', '.join(IMAGE_SCORES)}, got {self.image_score!r}")
        if self.feature_layer not in FEATURE_LAYERS:
            raise ConfigError(f"feature_layer must be one of {', '.join(FEATURE_LAYERS)}, got {self.feature_layer!r}")
        if self.n_learners < 2:
            raise ConfigError("D2UE needs at least 2 learners: its maps are the spread across learners")
        if self.input_size < 32 or self.input_size % 16:
            raise ConfigError(f"input_size must be a multiple of 16 and at least 32 (64 or 128), got {self.input_size}")
        if (min(self.width, self.mid, self.latent, self.train_steps) < 1 or self.epochs < 0 or self.batch_size < 2
                or self.score_batch < 1):
            raise ConfigError("width, mid, latent, train_steps ≥ 1, epochs ≥ 0, batch_size ≥ 2 and score_batch ≥ 1 "
                              "are required")
        if self.lam < 0 or self.smoothing_sigma < 0 or self.fine_tune_epochs < 0:
            raise ConfigError("lam, smoothing_sigma and fine_tune_epochs must not be negative")
        if (self.lr is not None and self.lr <= 0) or self.fine_tune_lr <= 0:
            raise ConfigError("learning rates must be positive")
        check_parameters(ensemble_parameters(self), "n_learners, input_size, width, mid and latent",
                         "learner ensemble")

    def optimiser_steps(self, n_slices: int) -> int:
        """Adam steps each learner takes on ``n_slices`` slices (``train_steps`` unless ``epochs`` > 0)."""
        if self.epochs > 0:
            return self.epochs * len(_batches(max(n_slices, 2), self.batch_size)(torch.Generator()))
        return self.train_steps


def ensemble_parameters(c: D2UEConfig) -> int:
    """Parameters of the ``EnsembleAE`` a config describes, counted without building it (see ``.model``).

    Per learner: four 4×4 encoder convolutions (1→w→2w→4w→4w) and the mirrored decoder with its output head,
    each with batch norm (weight and bias); the bottleneck flat → mid → latent → mid → flat with biases and
    two batch norms, flat = 4w·(s/16)².
    """
    w, out = c.width, 2 if c.backbone == "aeu" else 1
    flat = 4 * w * (c.input_size // 16) ** 2
    convs = 16 * (w + 52 * w * w + w * out) + 2 * (11 * w + 7 * w)
    bottleneck = 2 * flat * c.mid + 2 * c.mid * c.latent + flat + c.latent + 6 * c.mid
    return c.n_learners * (convs + bottleneck)


def _batches(n: int, batch_size: int) -> EpochBatches:
    """Near-equal batches covering every sample once, none smaller than 2 (batch norm needs two)."""
    return shuffled_batches(n, batch_size, even=True, min_size=2)


def _adam(params: Any, lr: float, device: torch.device) -> torch.optim.Adam:
    """Adam with the official β₁ = 0.5; the fused kernel where it exists (it saves ~15 % of a CPU step)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), fused=fused or None)


class D2UEDetector(Detector):
    name: ClassVar[str] = "d2ue"
    #: 2: training counted in optimiser steps per learner, each learner's batch order seeded by its index.
    version: ClassVar[str] = "2"
    description: ClassVar[str] = "D2UE: CKA-repulsive autoencoder ensemble, dual-space uncertainty maps"
    config_class = D2UEConfig

    def __init__(self, config: dict[str, Any] | DetectorConfig | None = None, device: str = "cpu",
                 seed: int = 0) -> None:
        super().__init__(config, device, seed)
        self.model: EnsembleAE | None = None
        self.training_log: dict[str, Any] = {}

    @classmethod
    def test_config(cls) -> dict[str, Any]:
        return {"input_size": 32, "width": 4, "mid": 32, "latent": 8, "train_steps": 4, "batch_size": 4,
                "fine_tune_epochs": 1}

    @property
    def cfg(self) -> D2UEConfig:
        assert isinstance(self.config, D2UEConfig)
        return self.config

    # -- data ------------------------------------------------------------------------------------
    def _inputs(self, slices: np.ndarray) -> torch.Tensor:
        """(n, H, W) in [0, 1] → (n, 1, s, s) in [−1, 1] on the device (the official normalisation)."""
        x = resize_tensor(to_tensor(slices), self.cfg.input_size)
        return (x * 2.0 - 1.0).to(self.device)

    def _new_learner(self, index: int) -> EnsembleAE:
        c = self.cfg
        torch.manual_seed(self.seed * 1009 + index)  # each learner's initialisation depends on its index only
        return EnsembleAE(1, c.input_size, c.backbone, c.width, c.mid, c.latent).to(self.device)

    @torch.no_grad()
    def _features(self, learner: EnsembleAE, x: torch.Tensor) -> torch.Tensor:
        """A trained learner's RAR features of every training slice (eval mode, as the official code)."""
        learner.eval()
        layer = self.cfg.feature_layer
        return torch.cat([learner(x[b], layer)[2][:, 0] for b in batches(len(x), self.cfg.score_batch)])

    def _learner_step(self, learner: EnsembleAE, x: torch.Tensor,
                      seniors: list[torch.Tensor] | None) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
        """One RAR step (paper eq. 4): reconstruction loss, plus λ · mean CKA to the seniors' features if any."""
        c = self.cfg

        def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
            idx_d = idx.to(self.device)
            xb = x[idx_d]
            recon, log_var, feat = learner(xb, c.feature_layer if seniors is not None else None)
            rec = reconstruction_loss(recon, log_var, xb).sum()
            if seniors is None:
                return {"loss": rec, "rec": rec}
            assert feat is not None
            sim = mean_cka([f[idx_d] for f in seniors], feat[:, 0])
            return {"loss": rec + c.lam * sim, "rec": rec, "cka": sim}

        return step

    # -- training --------------------------------------------------------------------------------
    def _fit(self, normals: np.ndarray, progress: ProgressCallback | None, cancel: CancelToken | None) -> None:
        c = self.cfg
        report(progress, 0.0, f"learner 1/{c.n_learners}")
        x = self.training_inputs(normals)
        learners: list[EnsembleAE] = []
        log: list[dict[str, Any]] = []
        with torch.inference_mode(False):  # the learners' tensors must be usable by autograd when scoring
            for k in range(c.n_learners):
                learner, entry = self.train_learner(k, x, learners, progress=progress, cancel=cancel)
                learners.append(learner)
                log.append(entry)
            self.model = self._freeze(stack_members(learners))
        self.training_log = {"learners": log, "lr": self._lr()}

    def _lr(self) -> float:
        c = self.cfg
        return c.lr if c.lr is not None else DEFAULT_LR[c.backbone]

    def training_inputs(self, normals: np.ndarray) -> torch.Tensor:
        """The normal slices as the learners train on them (one slice is doubled: batch norm needs two)."""
        x = self._inputs(normals)
        return torch.cat([x, x]) if len(x) == 1 else x

    def train_learner(self, k: int, x: torch.Tensor, seniors: list[EnsembleAE],
                      progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None) -> tuple[EnsembleAE, dict[str, Any]]:
        """Learner ``k`` trained for ``cfg.optimiser_steps`` Adam steps, repelled from ``seniors`` (RAR, eq. 4).

        Depends only on the seed, ``k``, the data and the seniors (its initial weights and its batch order are
        seeded by ``seed·1009 + k``), so a bench can train learner 1 once and reuse it for several λ.
        Returns the learner and its log entry (final reconstruction loss and CKA, optimiser steps).
        """
        c = self.cfg
        check(cancel)
        with torch.inference_mode(False):
            repel = c.repulsion and c.lam > 0 and k > 0
            # trained learners are frozen and see no augmentation: their features are fixed
            senior_feats = [self._features(lr_, x) for lr_ in seniors] if repel else None
            learner = self._new_learner(k)
            total = c.optimiser_steps(len(x))
            done = [0]
            inner = self._learner_step(learner, x, senior_feats)

            def step(idx: torch.Tensor) -> dict[str, torch.Tensor]:
                done[0] += 1
                return inner(idx)

            def tell(f: float, m: str) -> None:
                report(progress, f, f"learner {k + 1}/{c.n_learners} step {done[0]}/{total}, {m}")

            batches, rounds = step_batches(len(x), c.batch_size, total, LOG_STEPS, even=True, min_size=2)
            gen = torch.Generator().manual_seed(self.seed * 1009 + k)
            trained = train_loop(learner, step, batches, rounds,
                                 optimizer=_adam(learner.parameters(), self._lr(), self.device), generator=gen,
                                 progress=tell, cancel=cancel, start=k / c.n_learners,
                                 stop=(k + 1) / c.n_learners,
                                 message="loss {rec:.4f}" + (" CKA {cka:.3f}" if repel else ""),
                                 report_every="step")
        entry = {"final_loss": trained.final["rec"], "final_cka": trained.final["cka"] if repel else None,
                 "optimiser_steps": done[0]}
        return learner, entry

    def _freeze(self, model: EnsembleAE) -> EnsembleAE:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _fine_tune(self, normals: np.ndarray, progress: ProgressCallback | None,
                   cancel: CancelToken | None) -> None:
        """A few epochs of every learner's reconstruction loss on a site's marked normals.

        All learners are tuned at once in the grouped module (their losses are independent, so this equals
        tuning each alone). Batch norm stays in eval mode: a handful of slices would otherwise overwrite the
        running statistics learned from the full training set. RAR is not applied: the learners are already
        diverse, and CKA over a batch of a few slices is degenerate (always 1 for two).
        """
        assert self.model is not None
        c = self.cfg
        if c.fine_tune_epochs == 0:
            return
        x = self._inputs(normals)
        model = self.model

        def step(idx: torch.Tensor) -> torch.Tensor:
            xb = x[idx.to(self.device)]
            recon, log_var, _ = model(xb.expand(-1, model.members, -1, -1))
            return reconstruction_loss(recon, log_var, xb).sum()

        for p in model.parameters():
            p.requires_grad_(True)
        train_loop(model, step, _batches(len(x), c.batch_size), c.fine_tune_epochs,
                   optimizer=_adam(model.parameters(), c.fine_tune_lr, self.device), seed=self.seed + 1,
                   train_mode=False, freeze=True, progress=progress, cancel=cancel,
                   message="fine-tuning epoch {epoch}/{epochs} loss {loss:.4f}")

    # -- scoring ---------------------------------------------------------------------------------
    def raw_maps(self, slices: np.ndarray, kinds: tuple[str, ...], progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> dict[str, torch.Tensor]:
        """Maps (n, s, s) at the model's input size for several map kinds from one pass (bench, ablations)."""
        assert self.model is not None
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
        with torch.inference_mode(False), torch.enable_grad():
            for b in batches(len(slices), self.cfg.score_batch, progress, cancel, "scored {done}/{total} slices"):
                out = ensemble_maps(self.model, self._inputs(slices[b]), kinds)
                for k in kinds:
                    parts[k].append(out[k].detach().cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    def to_result(self, maps: torch.Tensor, shape: tuple[int, int], kind: str | None = None) -> AnomalyResult:
        """Bring (n, s, s) maps to the scan's grid, smooth them, and take image scores."""
        c = self.cfg
        heat = np.maximum(to_heatmap(maps, shape, c.smoothing_sigma, c.input_size), 0)
        flat = heat.reshape(len(heat), -1)
        scores = flat.mean(1) if c.image_score == "mean" else flat.max(1)
        return AnomalyResult(heatmaps=heat, scores=scores,
                             info={"image_score": f"{c.image_score} of the heatmap",
                                   "uncertainty": kind or c.uncertainty, "learners": c.n_learners})

    def _score(self, slices: np.ndarray, progress: ProgressCallback | None,
               cancel: CancelToken | None) -> AnomalyResult:
        kind = self.cfg.uncertainty
        maps = self.raw_maps(slices, (kind,), progress, cancel)[kind]
        return self.to_result(maps, slices.shape[1:], kind)

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        assert self.model is not None
        return {f"ensemble.{k}": v for k, v in self.model.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        c = self.cfg
        with torch.inference_mode(False):  # parameters made under inference mode could not feed autograd
            model = EnsembleAE(c.n_learners, c.input_size, c.backbone, c.width, c.mid, c.latent)
            model.load_state_dict({k[len("ensemble."):]: v for k, v in state.items() if k.startswith("ensemble.")})
        self.model = self._freeze(model.to(self.device))

    def extra_state(self) -> dict[str, Any]:
        return {"training_log": self.training_log}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.training_log = dict(state.get("training_log") or {})
