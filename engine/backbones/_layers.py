"""Building blocks shared by the backbones: TensorFlow "same" convolutions and batch-norm folding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's ``padding="SAME"`` along one axis.

    TF pads so that the output has ``ceil(size / stride)`` samples and puts the odd extra pixel *after*;
    ported TF weights were trained with that grid, and a symmetric PyTorch pad shifts every stride-2
    sample by half a pixel, which measurably degrades the pretrained features.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TF "same" padding computed from the actual input size.

    Computed per call (not fixed at construction) so any input size works. TF's padding is either
    symmetric or has one extra pixel after; that extra pixel is obtained without padding the input
    (a full copy, which on the 112² stride-2 layer costs ten times the convolution itself): the kernel
    gets one leading zero tap and the convolution pads symmetrically by the larger amount, which yields
    exactly the same windows.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False) -> None:
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        weight = self.weight
        extra_h, extra_w = bottom - top, right - left
        if (extra_h or extra_w) and self.dilation == (1, 1):
            weight = F.pad(weight, (extra_w, 0, extra_h, 0))
            return F.conv2d(x, weight, self.bias, self.stride, (bottom, right), 1, self.groups)
        if extra_h or extra_w:
            x = F.pad(x, (left, right, top, bottom))
            return F.conv2d(x, weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, weight, self.bias, self.stride, (top, left), self.dilation, self.groups)


@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode batch norm into the preceding convolution, in place.

    A frozen backbone never updates its statistics, so ``bn(conv(x))`` is one affine map per channel;
    folding it saves a full pass over every activation map, which is a sizeable share of CPU time for
    the depthwise-heavy EfficientNet. The caller replaces ``bn`` by ``nn.Identity`` afterwards.
    """
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = bn.bias - bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def fold_pairs(module: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Fold each named (conv, bn) child pair of ``module`` and drop the batch norm."""
    for conv_name, bn_name in pairs:
        conv, bn = getattr(module, conv_name), getattr(module, bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            fold_bn(conv, bn)
            setattr(module, bn_name, nn.Identity())
