"""Detectors are found through the ``anomalens.detectors`` entry-point group.

A third party adds a detector by declaring, in its own package metadata::

    [project.entry-points."anomalens.detectors"]
    mydetector = "mypackage.detector:MyDetector"
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import ConfigError, ModelError
from .base import Detector

GROUP = "anomalens.detectors"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_detectors() -> list[str]:
    """Names of every registered detector, sorted."""
    return sorted(_entry_points())


def get_detector_class(name: str) -> type[Detector]:
    """Load a registered detector class by name, with a clear error for unknown or broken plugins."""
    eps = _entry_points()
    if name not in eps:
        raise ConfigError(f"unknown detector {name!r}; installed: {', '.join(sorted(eps)) or 'none'}")
    try:
        cls = eps[name].load()
    except Exception as exc:  # a broken third-party plugin must not take the app down
        raise ModelError(f"the detector plugin {name!r} failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise ModelError(f"the entry point {name!r} does not point to a Detector subclass")
    return cls


def create_detector(name: str, config: dict[str, Any] | None = None, device: str = "cpu",
                    seed: int = 0) -> Detector:
    """Instantiate a registered detector."""
    return get_detector_class(name)(config=config, device=device, seed=seed)


def detector_choices() -> list[tuple[str, str, dict[str, Any]]]:
    """(label, detector name, config) for every detector and each of its variants, for pickers.

    A detector with ``variants`` appears once per variant as ``name (variant)``; a broken plugin is left
    out here (``anomalens detectors`` still lists it with its error).
    """
    out: list[tuple[str, str, dict[str, Any]]] = []
    for name in available_detectors():
        try:
            cls = get_detector_class(name)
        except (ConfigError, ModelError):
            continue
        out.append((name, name, {}))
        out.extend((f"{name} ({v})", name, {"variant": v}) for v in cls.variants)
    return out
