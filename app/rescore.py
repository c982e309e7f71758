"""After the loaded model changed under a shown result (fine-tune, recalibration, rollback): score it again.

A heatmap and mask made by the previous model would otherwise stay on screen beside a Calibration dock
that already describes the new one (λ 2.1 → 39, with the old mask still drawn). So every shown result of
the previous model is scored again with the new one, on the same slices, in a worker with progress and
Cancel; the new model's layers appear (named with its label) and the previous model's are hidden, not
deleted (hand edits stay). If the user cancels, or scoring fails, the previous layers stay visible and are
renamed "(stale: model changed)", with a status line saying so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.errors import Cancelled
from ..engine.progress import stage
from .messages import notify_warning
from .results import publish, result_layers, score_work, set_stale, set_visible, show_legend

if TYPE_CHECKING:
    import napari

    from ..engine.detectors import Detector
    from .jobs import JobRunner
    from .results import ScanResults
    from .state import AnomaLensState

JOB_NAME = "Re-scoring with the new model"


def shown_results(viewer: napari.Viewer, state: AnomaLensState, detector: Detector | None) -> list[ScanResults]:
    """The results of ``detector`` whose layers are in the viewer."""
    return [r for r in state.results_made_by(detector) if result_layers(viewer, r)]


def rescore_shown(viewer: napari.Viewer, state: AnomaLensState, jobs: JobRunner, previous: Detector | None) -> bool:
    """Make what ``previous`` showed the loaded model's result; True when a re-scoring job started.

    Results the loaded model already made for the same slices (a rollback to a version scored before) are
    shown again instead of scoring anew.
    """
    new = state.detector
    if new is None or previous is None or previous is new:
        return False
    old = shown_results(viewer, state, previous)
    todo: list[ScanResults] = []
    for r in old:
        mine = state.results_for(r.volume, new)
        if mine is not None and mine.layer_name == r.layer_name and bool(mine.scored[r.scored].all()):
            set_stale(viewer, mine, False)
            set_visible(viewer, mine, True)
            set_visible(viewer, r, False)
        else:
            todo.append(r)
    state.follow()
    show_legend(viewer, state.results)
    if not todo:
        return False
    plan = [(r.layer_name, r.volume, np.flatnonzero(r.scored)) for r in todo]

    def work(progress: Any, cancel: Any) -> list[tuple[str, Any]]:
        out = []
        for k, (name, volume, idx) in enumerate(plan):
            part = stage(progress, k / len(plan), (k + 1) / len(plan))
            out.append((name, score_work(new, volume, idx, None, part, cancel).result))
        return out

    def done(value: list[tuple[str, Any]]) -> None:
        for (name, result), r in zip(value, todo, strict=True):
            publish(viewer, state, name, result, new)
            set_visible(viewer, r, False)
        label = state.results.label if state.results is not None else "the new model"
        jobs.status.setText(f"{JOB_NAME}: done; the layers shown are now {label}'s result")

    def failed(exc: BaseException) -> None:
        mark_stale(viewer, state, todo, "cancelled" if isinstance(exc, Cancelled) else "failed")

    return jobs.start(JOB_NAME, work, done, failed)


def mark_stale(viewer: napari.Viewer, state: AnomaLensState, results: list[ScanResults], why: str) -> str:
    """Rename the layers of results the loaded model did not make again, and say so; returns the message."""
    for r in results:
        set_stale(viewer, r, True)
    names = ", ".join(r.title for r in results)
    text = (f"Re-scoring {why}: the layers of {names} were made by the previous model and are marked "
            "'(stale: model changed)'; score the image again to see the loaded model's result")
    notify_warning(text)
    state.message.emit(text)
    if state.results is None and results:
        show_legend(viewer, results[0])
    return text
