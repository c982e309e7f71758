"""One device resolver shared by the CLI flag, the viewer's device picker and the tests."""

from __future__ import annotations

import torch

from .errors import DeviceError

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


THREADS_ENV = "ANOMALENS_THREADS"


def configure_threads(threads: int | str | None = None) -> int | None:
    """Set torch's CPU thread count from ``threads`` or, when None, from ``$ANOMALENS_THREADS``.

    On a workstation shared with other jobs (or a batch node running several workers), torch's default of
    one thread per core makes its threads spin against the other processes: on this project's shared 2-core
    machine the Lorentz fit took 186–567 s with 2 threads and 28 s with one (plugins/lorentz/README.md).
    Neither set: torch's default stays. Returns the count set, or None.
    """
    import os

    from .errors import ConfigError

    raw = os.environ.get(THREADS_ENV) if threads is None else threads
    if raw is None or str(raw).strip() == "":
        return None
    try:
        n = int(str(raw).strip())
    except ValueError:
        n = 0
    if n < 1:
        where = f"${THREADS_ENV}" if threads is None else "--threads"
        raise ConfigError(f"{where} must be a whole number of threads ≥ 1, got {raw!r}")
    torch.set_num_threads(n)
    return n
