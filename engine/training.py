"""The optimisation loop every trainable detector runs: seeded batch order, cancel, progress, train/eval mode.

Each detector keeps what makes it itself (its network, its loss, how it samples a batch); the loop around
them (a seeded generator for the batch order, the optimiser, train mode and back to eval even when the
user cancels, one cancel check per optimiser step, progress per epoch or per step, per-epoch mean losses)
is written once here, so every detector cancels, reports and reproduces the same way.

Randomness: the batch order comes from a ``torch.Generator`` (``seed``, or the caller's own ``generator``
when its stream must continue across calls or into a later subsample), never from torch's global state,
so a detector's numbers do not depend on what else ran before. Initial weights are the detector's
business (it builds its network before calling this).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch

from .progress import CancelToken, ProgressCallback, check, report

#: What a training step returns: the loss to minimise, or named values of which ``"loss"`` is minimised and
#: all are averaged per epoch for the log and the progress message (e.g. ``{"loss": l, "rec": r, "cka": s}``).
StepResult = torch.Tensor | Mapping[str, torch.Tensor | float]
#: Called once per epoch with the loop's generator: the index batches of that epoch, in order.
EpochBatches = Callable[[torch.Generator], Sequence[torch.Tensor]]


@dataclasses.dataclass
class TrainLog:
    """Per-epoch means of what the step returned (``history[e]["loss"]`` …), and optimiser steps per epoch."""

    history: list[dict[str, float]]
    steps: int

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's means (empty when no epoch ran)."""
        return dict(self.history[-1]) if self.history else {}

    @property
    def final_loss(self) -> float:
        """The last epoch's mean loss (NaN when no epoch ran)."""
        return self.final.get("loss", math.nan)


def shuffled_batches(n: int, batch_size: int, even: bool = False, min_size: int = 1) -> EpochBatches:
    """Each epoch a fresh permutation of ``range(n)`` from the loop's generator, cut into batches.

    Args:
        n: number of training items.
        batch_size: items per batch; the last batch may be smaller (``even=False``).
        even: cut into ``ceil(n / batch_size)`` near-equal batches instead (no runt batch).
        min_size: with ``even``, use fewer batches if one would hold fewer items (batch norm needs 2).
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"need at least one item and batch_size ≥ 1, got n={n}, batch_size={batch_size}")

    def epoch(gen: torch.Generator) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=gen)
        if not even:
            return list(perm.split(batch_size))
        k = max(1, math.ceil(n / batch_size))
        if n // k < min_size:
            k = max(1, n // min_size)
        return list(torch.tensor_split(perm, k))

    return epoch


def train_loop(module: torch.nn.Module, step: Callable[[torch.Tensor], StepResult], batches: EpochBatches,
               epochs: int, *, optimizer: torch.optim.Optimizer | None = None, lr: float = 1e-3, seed: int = 0,
               generator: torch.Generator | None = None, train_mode: bool = True, freeze: bool = False,
               progress: ProgressCallback | None = None, cancel: CancelToken | None = None, start: float = 0.0,
               stop: float = 1.0, message: str = "epoch {epoch}/{epochs} loss {loss:.3f}",
               report_every: Literal["epoch", "step"] = "epoch") -> TrainLog:
    """Minimise ``step``'s loss over ``epochs`` epochs of ``batches`` and return the per-epoch means.

    Runs with autograd on (also inside ``torch.inference_mode``, where scoring code may call it), puts
    ``module`` in train mode (``train_mode=False`` keeps eval mode, e.g. to leave batch-norm statistics
    alone while fine-tuning on a few slices), and always leaves it in eval mode, also when cancelled.

    Args:
        module: the network; its parameters are optimised unless ``optimizer`` is given.
        step: one batch of indices → loss (or a mapping with ``"loss"``); the loop does zero_grad,
            backward and the optimiser step.
        batches: the epoch's index batches, drawn from the loop's generator (see :func:`shuffled_batches`).
        epochs: passes over ``batches``; 0 trains nothing.
        optimizer: a ready optimiser (its own settings); default Adam(module.parameters(), ``lr``).
        lr: Adam's learning rate when no ``optimizer`` is given.
        seed: seeds a fresh ``torch.Generator`` for the batch order, unless ``generator`` is given.
        generator: the caller's generator, when its stream continues across calls or after the loop.
        train_mode: ``module.train()`` during the loop (else ``module.eval()``).
        freeze: afterwards (also when cancelled), parameters stop requiring gradients: frozen for scoring
            that differentiates with respect to the input only.
        progress: callback; gets ``start``–``stop`` mapped over the loop.
        cancel: checked before every optimiser step.
        start: progress fraction at the loop's start.
        stop: progress fraction at its end.
        message: progress message, formatted with ``epoch``, ``epochs``, ``step``, ``steps`` (1-based) and
            the running means of the step's values (``loss`` …) over the epoch so far.
        report_every: ``"epoch"`` (after each epoch) or ``"step"`` (after each optimiser step).
    """
    if report_every not in ("epoch", "step"):
        raise ValueError(f"report_every must be 'epoch' or 'step', got {report_every!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    history: list[dict[str, float]] = []
    n_steps = 0
    try:
        with torch.inference_mode(False), torch.enable_grad():
            opt = optimizer if optimizer is not None else torch.optim.Adam(module.parameters(), lr=lr)
            module.train(train_mode)
            for epoch in range(epochs):
                idx_batches = batches(gen)
                n_steps = len(idx_batches)
                totals: dict[str, float] = {}
                for s, idx in enumerate(idx_batches):
                    check(cancel)
                    values = _as_values(step(idx))
                    opt.zero_grad(set_to_none=True)
                    values["loss"].backward()
                    opt.step()
                    for k, v in values.items():
                        totals[k] = totals.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)
                    if report_every == "step":
                        means = {k: t / (s + 1) for k, t in totals.items()}
                        report(progress, start + (stop - start) * (epoch + (s + 1) / n_steps) / epochs,
                               message.format(epoch=epoch + 1, epochs=epochs, step=s + 1, steps=n_steps, **means))
                means = {k: t / max(n_steps, 1) for k, t in totals.items()}
                history.append(means)
                if report_every == "epoch":
                    report(progress, start + (stop - start) * (epoch + 1) / epochs,
                           message.format(epoch=epoch + 1, epochs=epochs, step=n_steps, steps=n_steps, **means))
    finally:
        module.eval()
        if freeze:
            for p in module.parameters():
                p.requires_grad_(False)
    return TrainLog(history, n_steps)


def _as_values(result: StepResult) -> dict[str, torch.Tensor | float]:
    if isinstance(result, torch.Tensor):
        return {"loss": result}
    values = dict(result)
    if not isinstance(values.get("loss"), torch.Tensor):
        raise TypeError("a training step must return the loss tensor, or a mapping with a 'loss' tensor")
    return values


def step_batches(n: int, batch_size: int, steps: int, round_steps: int = 100, even: bool = False,
                 min_size: int = 1) -> tuple[EpochBatches, int]:
    """Batches for exactly ``steps`` optimiser steps over ``n`` items, as (epoch function, number of rounds).

    A network needs a number of optimiser steps, not a number of passes over however many slices or patches a
    site happens to have (20 passes over brain1's patches were 740 steps of a diffusion model; 250 passes over
    its 48 slices, 250 steps of an autoencoder). Pass the epoch function and the round count to ``train_loop``
    as ``batches`` and ``epochs``: round k gets ``min(round_steps, steps left)`` batches, from consecutive seeded
    permutations (``shuffled_batches(n, batch_size, even, min_size)`` with the loop's generator), so the
    per-epoch log holds one mean loss per round and the last round's mean is the final loss.
    """
    if steps < 1 or round_steps < 1:
        raise ValueError(f"steps and round_steps must be ≥ 1, got {steps} and {round_steps}")
    passes = shuffled_batches(n, batch_size, even=even, min_size=min_size)
    left = [steps]
    queue: list[torch.Tensor] = []

    def epoch(gen: torch.Generator) -> Sequence[torch.Tensor]:
        take = min(round_steps, left[0])
        while len(queue) < take:
            queue.extend(passes(gen))
        out, queue[:] = queue[:take], queue[take:]
        left[0] -= take
        return out

    return epoch, math.ceil(steps / round_steps)
