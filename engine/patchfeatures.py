"""Patch features from a frozen backbone, shared by every feature-based detector.

PatchCore, the Lorentz classifier and the curved-geometry heads all start the same way: two backbone
stages, each locally averaged over a ``patch_size`` neighbourhood (so a feature describes a patch, not a
receptive-field centre), upsampled to the finer grid. Keeping this in one place means the reference
detector and ours see exactly the same features, which is what makes the bench comparison fair.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess.resize import to_tensor


@dataclass
class PatchGrid:
    """Per-level patch features on one common grid: ``levels[name]`` is (n, C, h, w) float32."""

    levels: dict[str, torch.Tensor]
    grid: tuple[int, int]

    def concat(self) -> torch.Tensor:
        """All levels stacked along channels, (n, ΣC, h, w)."""
        return torch.cat(list(self.levels.values()), dim=1)


@dataclass(frozen=True, eq=False)
class BackboneWeights:
    """Backbone weights a model carries inside its bundle (a user's WRN-50-2 file, copied in at ``train``).

    A bundle never names a file: the weights travel with the model. Equal (and cached) by ``digest``.
    """

    name: str
    state: dict[str, torch.Tensor]
    digest: str

    @classmethod
    def read(cls, spec: str) -> BackboneWeights:
        """The weights a ``name=/path/to/file`` spec names, read now (the file is never needed again)."""
        from .backbones import parse_spec, weights_file
        from .backbones.weights import read_state_dict

        name, _ = parse_spec(spec)
        return cls.of(name, read_state_dict(weights_file(spec)))

    @classmethod
    def of(cls, name: str, state: dict[str, torch.Tensor]) -> BackboneWeights:
        import hashlib

        h = hashlib.sha256(name.encode())
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().to("cpu").contiguous().numpy().tobytes())
        return cls(name, {k: v.detach().to("cpu").contiguous() for k, v in state.items()}, h.hexdigest()[:16])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BackboneWeights) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


class PatchFeatureExtractor:
    """Frozen backbone → locally averaged, co-registered multi-level patch features.

    The backbone is loaded from a pip-installed package (``lite0``) or from weights the model carries
    (``BackboneWeights``); ``anomalens.engine.backbones.load_backbone`` never fetches from a hub.
    """

    def __init__(self, backbone: str = "lite0", input_size: int = 224, levels: tuple[str, ...] = ("s8", "s16"),
                 patch_size: int = 3, device: torch.device | str = "cpu",
                 weights: BackboneWeights | None = None) -> None:
        from .backbones import build_backbone, load_backbone

        self.device = torch.device(device)
        if weights is not None:
            self.backbone = build_backbone(weights.name, weights.state, device=self.device, source="the model's")
        else:
            self.backbone = load_backbone(backbone, device=self.device)
        self.input_size = int(input_size)
        self.levels = tuple(levels)
        self.patch_size = int(patch_size)
        self.channels = {lv: int(self.backbone.channels[lv]) for lv in self.levels}

    @property
    def dim(self) -> int:
        return sum(self.channels.values())

    @torch.inference_mode()
    def __call__(self, slices: np.ndarray | torch.Tensor) -> PatchGrid:
        """Features of (n, H, W) slices in [0, 1], computed at ``input_size`` px."""
        x = slices if isinstance(slices, torch.Tensor) else to_tensor(slices)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        feats = self.backbone.extract(self.backbone.prepare(x.float(), self.input_size))
        out: dict[str, torch.Tensor] = {}
        grid: tuple[int, int] | None = None
        for lv in self.levels:
            f = feats[lv].float()
            if self.patch_size > 1:
                pad = self.patch_size // 2
                f = F.avg_pool2d(f, self.patch_size, stride=1, padding=pad, count_include_pad=False)
            if grid is None:
                grid = (int(f.shape[-2]), int(f.shape[-1]))
            elif tuple(f.shape[-2:]) != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            out[lv] = f.contiguous(memory_format=torch.contiguous_format)
        assert grid is not None
        return PatchGrid(levels=out, grid=grid)

    def features(self, slices: np.ndarray | torch.Tensor) -> PatchGrid:
        """Like calling the extractor, but the tensors are ordinary ones a trained head may use with autograd."""
        grid = self(slices)
        return PatchGrid(levels={k: v.clone() for k, v in grid.levels.items()}, grid=grid.grid)


@functools.lru_cache(maxsize=4)
def _shared(backbone: str, input_size: int, levels: tuple[str, ...], patch_size: int,
            device: str, weights: BackboneWeights | None) -> PatchFeatureExtractor:
    # Building the network draws its (then overwritten) initial weights from torch's global generator;
    # fork it so whether the cache was warm never changes a detector's seeded training.
    with torch.random.fork_rng(devices=[]):
        return PatchFeatureExtractor(backbone, input_size, levels, patch_size, device, weights)


def extractor_for(config: object, device: torch.device | str,
                  weights: BackboneWeights | None = None) -> PatchFeatureExtractor:
    """The extractor a detector config asks for (``backbone``, ``input_size``, ``levels``, ``patch_size``).

    ``weights``: the backbone weights the model carries (``Detector.backbone_weights``), if any. Cached and
    shared: the backbone is frozen, so every detector on the same settings (a model and its fine-tuned
    copy, the bench's variants, the viewer's docks) can use one copy instead of loading it again.
    """
    c = config
    return _shared(str(c.backbone), int(c.input_size), tuple(c.levels), int(c.patch_size), str(device), weights)
