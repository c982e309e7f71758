"""Wide ResNet-50-2 in plain torch, with torchvision's state-dict names.

This is the backbone of the PatchCore and hyperbolic-anomaly papers. Keeping torchvision's module names
(``conv1``, ``bn1``, ``layer1`` … ``layer4``, ``fc``) means the official ImageNet file a user already has
loads with ``strict=True`` without depending on torchvision (which drags in gigabytes here).
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import fold_pairs

EXPANSION = 4
WIDTH_FACTOR = 2  # "wide": the 3×3 convolutions of every bottleneck have twice ResNet-50's channels
LAYERS = (3, 4, 6, 3)
TAPS = {"s8": "layer2", "s16": "layer3"}
TAP_CHANNELS = {"s8": 128 * EXPANSION, "s16": 256 * EXPANSION}


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3×3 convolution, as in torchvision."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes * WIDTH_FACTOR
        out_ch = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)

    def fold_bn(self) -> None:
        fold_pairs(self, [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")])
        if self.downsample is not None:
            fold_pairs(self.downsample, [("0", "1")])


class WideResNet50(nn.Module):
    """WRN-50-2 classifier whose feature path stops after the deepest requested layer."""

    input_size = 224

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        for i, (blocks, planes) in enumerate(zip(LAYERS, (64, 128, 256, 512), strict=True)):
            stride = 1 if i == 0 else 2
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(in_ch, planes, stride if b == 0 else 1))
                in_ch = planes * EXPANSION
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        self.taps = dict(TAPS)
        self.tap_channels = dict(TAP_CHANNELS)

    def features(self, x: torch.Tensor, levels: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Requested layer outputs; layers after the deepest requested tap are never run."""
        want = {self.taps[lv]: lv for lv in levels}
        out: dict[str, torch.Tensor] = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            if name in want:
                out[want.pop(name)] = x
            if not want:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def fold_bn(self) -> None:
        """Fold every batch norm into its convolution (inference only; changes the state-dict keys)."""
        fold_pairs(self, [("conv1", "bn1")])
        for name in ("layer1", "layer2", "layer3", "layer4"):
            for block in getattr(self, name):
                block.fold_bn()
