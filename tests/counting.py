"""Counting torch optimiser steps, for the tests that pin training length to ``train_steps``."""

from __future__ import annotations

from torch.optim.optimizer import register_optimizer_step_post_hook


class StepCounter:
    """Counts every ``Optimizer.step()`` in the process (torch's global post-step hook)."""

    def __enter__(self) -> StepCounter:
        self.n = 0
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def _hook(self, *_: object) -> None:
        self.n += 1

    def __exit__(self, *_: object) -> None:
        self._handle.remove()
