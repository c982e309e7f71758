"""The plumbing every detector plugin shares: heatmap tail, batched loop, training loop (issue #17).

The detectors must differ only in their networks, losses and scoring rules; these tests pin the shared
helpers' behaviour and check that no plugin carries a private copy of them again.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalens.engine.batching import batch_stage, batches
from anomalens.engine.errors import Cancelled
from anomalens.engine.patchmaps import patch_centers, patch_slice_index, slice_sigma, to_heatmap, to_slice_grid
from anomalens.engine.preprocess.resize import resize_back
from anomalens.engine.preprocess.smooth import gaussian_smooth
from anomalens.engine.progress import CancelToken
from anomalens.engine.training import TrainLog, shuffled_batches, train_loop

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
DETECTOR_FILES = sorted(PLUGINS.glob("*/detector.py"))
TRAINERS = ("lorentz", "curved_heads", "d2ue", "invdetect")


# -- the heatmap tail ------------------------------------------------------------------------------
def _halve(maps: np.ndarray) -> np.ndarray:
    return F.avg_pool2d(torch.as_tensor(maps)[:, None], 2)[:, 0].numpy()


@pytest.mark.parametrize("kind", ["point", "random"])
def test_one_patch_grid_gives_one_map_at_any_slice_size(kind: str) -> None:
    """The blur is fixed in input pixels, so a 128² slice's map is the 64² map sampled twice as finely."""
    if kind == "point":
        grid = np.zeros((1, 12, 12), np.float32)
        grid[0, 5, 6] = 1.0
    else:
        grid = np.random.default_rng(0).random((2, 12, 12)).astype(np.float32)
    small = to_heatmap(grid, (64, 64), sigma=2.0, input_size=32)
    large = to_heatmap(grid, (128, 128), sigma=2.0, input_size=32)
    assert small.shape == (len(grid), 64, 64) and large.shape == (len(grid), 128, 128)
    assert small.dtype == np.float32
    inner = (slice(None), slice(8, -8), slice(8, -8))  # reflect padding sits half a pixel apart at the edges
    err = np.abs(small - _halve(large))[inner].max()
    contrast = small.max() - small.min()
    assert err < 0.01 * contrast
    assert np.abs(small - _halve(large)).mean() < 0.01 * contrast
    # A sigma in slice pixels (PatchCore's old rule) blurs the two sizes differently: ten times worse.
    old = [gaussian_smooth(torch.as_tensor(resize_back(grid, s)), 2.0).numpy() for s in ((64, 64), (128, 128))]
    assert np.abs(old[0] - _halve(old[1]))[inner].max() > 10 * err


def test_sigma_is_in_input_pixels_and_scales_with_the_slice() -> None:
    assert slice_sigma(4.0, (256, 200), 224) == pytest.approx(4.0 * 256 / 224)
    assert slice_sigma(4.0, (256, 256), None) == 4.0  # a detector working on the slice grid itself
    assert slice_sigma(0.0, (256, 256), 64) == 0.0
    grid = np.random.default_rng(1).random((1, 10, 10)).astype(np.float32)
    heat = to_heatmap(grid, (80, 60), sigma=3.0, input_size=40)
    by_hand = gaussian_smooth(torch.as_tensor(resize_back(grid, (80, 60))), 3.0 * 80 / 40).numpy()
    np.testing.assert_array_equal(heat, by_hand)
    # a larger sigma blurs more: lower peak, same mass
    sharper = to_heatmap(grid, (80, 60), sigma=1.0, input_size=40)
    assert heat.std() < sharper.std()
    assert heat.mean() == pytest.approx(sharper.mean(), rel=0.02)
    # sigma 0: resampling only, which is also what to_slice_grid does
    np.testing.assert_array_equal(to_heatmap(grid, (80, 60), 0.0, 40), to_slice_grid(grid, (80, 60)))
    np.testing.assert_array_equal(to_slice_grid(grid, (10, 10)), grid)


def test_patch_centres_are_cell_centres_on_the_slice_grid_slice_major() -> None:
    c = patch_centers((2, 4), (8, 16), n=2)
    assert c.shape == (16, 2) and c.dtype == np.float32
    np.testing.assert_array_equal(c[:8], [[2, 2], [2, 6], [2, 10], [2, 14], [6, 2], [6, 6], [6, 10], [6, 14]])
    np.testing.assert_array_equal(c[8:], c[:8])
    np.testing.assert_array_equal(patch_slice_index((2, 4), 2), [0] * 8 + [1] * 8)


# -- the batched loop ------------------------------------------------------------------------------
def test_batches_cover_every_item_once_and_report_monotone_progress() -> None:
    seen: list[int] = []
    reports: list[tuple[float, str]] = []
    for b in batches(10, 3, lambda f, m: reports.append((f, m)), None, "scored {done}/{total}", 0.2, 0.6):
        seen.extend(range(10)[b])
    assert seen == list(range(10))
    fractions = [f for f, _ in reports]
    assert len(reports) == 4 and fractions == sorted(fractions)
    assert fractions[0] > 0.2 and fractions[-1] == pytest.approx(0.6)
    assert reports[0][1] == "scored 3/10" and reports[-1][1] == "scored 10/10"
    assert list(batches(0, 4)) == []
    with pytest.raises(ValueError):
        list(batches(5, 0))


def test_batches_stop_at_the_next_batch_once_cancelled() -> None:
    token = CancelToken()
    done: list[slice] = []
    with pytest.raises(Cancelled):
        for b in batches(20, 4, cancel=token):
            done.append(b)
            if len(done) == 2:
                token.cancel()
    assert len(done) == 2


def test_progress_inside_a_batch_stays_within_its_share() -> None:
    got: list[float] = []
    stage = batch_stage(lambda f, m: got.append(f), slice(4, 8), 16, start=0.5, stop=1.0)
    stage(0.0, "")
    stage(1.0, "")
    assert got == pytest.approx([0.625, 0.75])


# -- the training loop -----------------------------------------------------------------------------
def _problem(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64, generator=g)
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1)), x, y


def _fit(seed: int, **kwargs) -> tuple[torch.nn.Module, TrainLog]:
    module, x, y = _problem()
    modes: list[bool] = []

    def step(idx: torch.Tensor) -> torch.Tensor:
        modes.append(module.training)
        return F.mse_loss(module(x[idx]).squeeze(1), y[idx])

    log = train_loop(module, step, shuffled_batches(len(x), 16), 3, lr=1e-2, seed=seed, **kwargs)
    module.modes = modes  # type: ignore[attr-defined]
    return module, log


def test_training_is_reproducible_from_its_seed_and_the_seed_matters() -> None:
    a, log_a = _fit(seed=5)
    b, log_b = _fit(seed=5)
    c, _ = _fit(seed=6)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert log_a.history == log_b.history
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    assert len(log_a.history) == 3 and log_a.steps == 4
    assert log_a.final_loss == log_a.history[-1]["loss"] < log_a.history[0]["loss"]


def test_training_runs_in_train_mode_and_leaves_eval_mode() -> None:
    module, _ = _fit(seed=0)
    assert module.modes and all(module.modes) and not module.training  # type: ignore[attr-defined]
    module, _ = _fit(seed=0, train_mode=False)
    assert not any(module.modes) and not module.training  # type: ignore[attr-defined]
    module, _ = _fit(seed=0, freeze=True)
    assert not any(p.requires_grad for p in module.parameters())


def test_training_honours_cancel_before_every_step_and_still_restores_eval() -> None:
    module, x, y = _problem()
    token = CancelToken()
    steps: list[int] = []

    def step(idx: torch.Tensor) -> torch.Tensor:
        steps.append(len(idx))
        if len(steps) == 3:
            token.cancel()
        return F.mse_loss(module(x[idx]).squeeze(1), y[idx])

    with pytest.raises(Cancelled):
        train_loop(module, step, shuffled_batches(len(x), 16), 5, cancel=token, freeze=True)
    assert len(steps) == 3 and not module.training
    assert not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("every", ["epoch", "step"])
def test_training_reports_monotone_progress_with_the_running_loss(every: str) -> None:
    reports: list[tuple[float, str]] = []
    _, log = _fit(seed=0, progress=lambda f, m: reports.append((f, m)), start=0.25, stop=0.75, report_every=every,
                  message="epoch {epoch}/{epochs} step {step}/{steps} loss {loss:.6f}")
    fractions = [f for f, _ in reports]
    assert len(reports) == (3 if every == "epoch" else 12)
    assert fractions == sorted(fractions) and fractions[0] > 0.25 and fractions[-1] == pytest.approx(0.75)
    assert reports[-1][1] == f"epoch 3/3 step 4/4 loss {log.final_loss:.6f}"


def test_training_logs_every_value_a_step_returns_and_takes_a_given_optimizer() -> None:
    module, x, y = _problem()
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)

    def step(idx: torch.Tensor) -> dict[str, torch.Tensor | float]:
        loss = F.mse_loss(module(x[idx]).squeeze(1), y[idx])
        return {"loss": loss, "twice": 2 * loss, "count": float(len(idx))}

    log = train_loop(module, step, shuffled_batches(len(x), 20), 2, optimizer=opt)
    assert set(log.final) == {"loss", "twice", "count"}
    assert log.final["twice"] == pytest.approx(2 * log.final["loss"]) and log.final["count"] == 16.0
    assert opt.state  # the given optimiser did the steps (its momentum buffers exist)
    with pytest.raises(TypeError):
        train_loop(module, lambda idx: {"value": 1.0}, shuffled_batches(len(x), 20), 1)
    assert math.isnan(train_loop(module, step, shuffled_batches(len(x), 20), 0).final_loss)


def test_training_works_where_scoring_runs_under_inference_mode() -> None:
    module, x, y = _problem()
    before = [p.detach().clone() for p in module.parameters()]
    with torch.inference_mode():
        train_loop(module, lambda idx: F.mse_loss(module(x[idx]).squeeze(1), y[idx]), shuffled_batches(64, 32), 1)
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters(), strict=True))


def test_a_shared_generator_continues_its_stream() -> None:
    """Curved heads draw their accuracy subsample from the generator after training, D2UE one over learners."""
    gen = torch.Generator().manual_seed(3)
    module, x, y = _problem()
    train_loop(module, lambda idx: F.mse_loss(module(x[idx]).squeeze(1), y[idx]), shuffled_batches(64, 32), 2,
               generator=gen)
    expected = torch.Generator().manual_seed(3)
    for _ in range(2):
        torch.randperm(64, generator=expected)
    assert torch.equal(torch.randperm(64, generator=gen), torch.randperm(64, generator=expected))


def test_shuffled_batches_cover_every_index_and_even_ones_keep_a_minimum() -> None:
    gen = torch.Generator().manual_seed(0)
    plain = shuffled_batches(10, 4)(gen)
    assert [len(b) for b in plain] == [4, 4, 2] and sorted(torch.cat(plain).tolist()) == list(range(10))
    even = shuffled_batches(10, 4, even=True)(gen)
    assert [len(b) for b in even] == [4, 3, 3] and sorted(torch.cat(even).tolist()) == list(range(10))
    assert [len(b) for b in shuffled_batches(3, 1, even=True, min_size=2)(gen)] == [3]
    with pytest.raises(ValueError):
        shuffled_batches(0, 4)


# -- every plugin uses them --------------------------------------------------------------------------
def test_the_five_plugins_are_checked() -> None:
    assert {p.parent.name for p in DETECTOR_FILES} >= {"patchcore", *TRAINERS}


@pytest.mark.parametrize("path", DETECTOR_FILES, ids=lambda p: p.parent.name)
def test_no_plugin_keeps_a_private_copy_of_the_shared_plumbing(path: Path) -> None:
    src = path.read_text(encoding="utf-8")
    for private in ("gaussian_smooth(", "resize_back(", "np.meshgrid(", "zero_grad(", ".backward(", "opt.step(",
                    "range(0, "):
        assert private not in src, f"{path.parent.name} carries its own {private!r}"
    assert "from ...engine.batching import" in src
    assert re.search(r"\bbatches\(", src), "every plugin's batched loop uses engine.batching.batches"
    if path.parent.name != "invdetect":  # its Gaussian-weighted patch average is its smoothing (paper)
        assert "to_heatmap(" in src
    else:
        assert "to_slice_grid(" in src
    if path.parent.name in TRAINERS:
        assert "train_loop(" in src, f"{path.parent.name} trains a network without engine.training"


def test_no_plugin_module_hand_writes_an_optimiser_step() -> None:
    for path in PLUGINS.glob("*/*.py"):
        src = path.read_text(encoding="utf-8")
        assert "zero_grad(" not in src and ".backward(" not in src, path
