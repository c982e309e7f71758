"""EfficientNet-Lite (TF-ported ImageNet weights) in plain torch.

Lite is EfficientNet without squeeze-excitation, with ReLU6 instead of swish, and with the stem and head
kept at their base width across the family. The module names follow the layout of the pip-installed
weight files (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` …) so that a file loads with
``strict=True``: a silently half-loaded backbone would produce plausible-looking but meaningless
features, which is the worst failure mode for an anomaly detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._layers import Conv2dSame, fold_pairs

# TF's batch-norm epsilon for the EfficientNet family (PyTorch's default 1e-5 would shift every feature).
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    out_ch: int


# The EfficientNet-B0 stage table (the Lite family shares it and scales width/depth from it).
_BASE_STAGES = (
    _Stage(1, 3, 1, 1, 16),
    _Stage(2, 3, 2, 6, 24),
    _Stage(2, 5, 2, 6, 40),
    _Stage(3, 3, 2, 6, 80),
    _Stage(3, 5, 1, 6, 112),
    _Stage(4, 5, 2, 6, 192),
    _Stage(1, 3, 1, 6, 320),
)

# variant → (width multiplier, depth multiplier, native input size)
VARIANTS: dict[str, tuple[float, float, int]] = {
    "lite0": (1.0, 1.0, 224),
    "lite1": (1.0, 1.1, 240),
    "lite2": (1.1, 1.2, 260),
}

# Output of stage 2 is at stride 8, of stage 4 at stride 16 (stem stride 2, stages 1/2/3 stride 2).
TAP_STAGES = {"s8": 2, "s16": 4}


def _round_channels(ch: int, width: float, divisor: int = 8) -> int:
    """Channel count scaled by ``width`` and snapped to a multiple of 8 the way the TF builder does."""
    if width == 1.0:
        return ch
    scaled = ch * width
    snapped = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if snapped < 0.9 * scaled:
        snapped += divisor
    return int(snapped)


def _stages(width: float, depth: float) -> list[_Stage]:
    """Stage table of one variant; Lite keeps the first and last stage's depth unscaled."""
    last = len(_BASE_STAGES) - 1
    out = []
    for i, st in enumerate(_BASE_STAGES):
        repeats = st.repeats if i in (0, last) else math.ceil(depth * st.repeats)
        out.append(_Stage(repeats, st.kernel, st.stride, st.expand, _round_channels(st.out_ch, width)))
    return out


class MBConv(nn.Module):
    """Inverted-residual block: 1×1 expand → k×k depthwise → 1×1 project, skip when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(in_ch, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = Conv2dSame(mid, out_ch, 1)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y

    def fold_bn(self) -> None:
        pairs = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
        if self.has_expand:
            pairs.append(("_expand_conv", "_bn0"))
        fold_pairs(self, pairs)


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier whose feature path can stop at an intermediate stage."""

    def __init__(self, variant: str = "lite0", num_classes: int = 1000) -> None:
        super().__init__()
        width, depth, self.input_size = VARIANTS[variant]
        stages = _stages(width, depth)
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks: list[nn.Module] = []
        self.stage_end: list[int] = []  # index of the last block of each stage
        in_ch = STEM_CHANNELS
        for st in stages:
            for r in range(st.repeats):
                blocks.append(MBConv(in_ch, st.out_ch, st.kernel, st.stride if r == 0 else 1, st.expand))
                in_ch = st.out_ch
            self.stage_end.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(in_ch, HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.act = nn.ReLU6(inplace=True)
        self.taps = {name: self.stage_end[i] for name, i in TAP_STAGES.items()}
        self.tap_channels = {name: stages[i].out_ch for name, i in TAP_STAGES.items()}

    def features(self, x: torch.Tensor, levels: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Requested stage outputs; blocks after the deepest requested tap are never run."""
        want = {self.taps[lv]: lv for lv in levels}
        last = max(want)
        out: dict[str, torch.Tensor] = {}
        x = self.act(self._bn0(self._conv_stem(x)))
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in want:
                out[want[i]] = x
            if i == last:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (used to prove that the pretrained weights are really in use)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(x.mean((-2, -1)), 1))

    def fold_bn(self) -> None:
        """Fold every batch norm into its convolution (inference only; changes the state-dict keys)."""
        fold_pairs(self, [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")])
        for block in self._blocks:
            block.fold_bn()
