"""One device resolver shared by the CLI flag, the viewer's device picker and the tests."""

from __future__ import annotations

import torch

from anomalens.engine.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device names that work on this machine, ``auto`` first (what the viewer offers)."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda[:N]``/``mps`` into a usable ``torch.device``.

    ``auto`` prefers CUDA, then MPS, then CPU. Asking for a backend this machine lacks raises a
    ``DeviceError`` that says what is available instead of failing later inside a kernel.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but this torch build or machine has no CUDA device "
                f"(available: {', '.join(available_devices())})"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{name} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        return dev
    if kind == "mps":
        if not _mps_available():
            raise DeviceError(
                f"MPS was requested but is not available here (available: {', '.join(available_devices())})"
            )
        return torch.device("mps")
    raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
