"""``make bench`` runs bench/run_all.py: every benchmark script must be in its list or knowingly left out."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
NOT_BENCHMARKS = {"bench_lorentz_seeds.py", "sweep_lorentz_heads.py", "lorentz_sweep.py",
                  "check_wrn50_vs_torchvision.py", "gpu_check.py", "run_all.py"}


def _run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_bench_script_is_listed_and_exists():
    run_all = _run_all()
    listed = {b.argv[0] for b in run_all.BENCHES}
    assert all((BENCH / script).is_file() for script in listed)
    on_disk = {p.name for p in BENCH.glob("*.py")}
    assert on_disk - NOT_BENCHMARKS == listed


def test_selection_defaults_to_speed_and_rejects_unknown_names():
    run_all = _run_all()
    speed = run_all.selected(accuracy=False, only=None)
    assert speed and not any(b.accuracy for b in speed)
    assert any(b.accuracy for b in run_all.selected(accuracy=True, only=None))
    assert [b.name for b in run_all.selected(False, {"scr"})] == ["scr"]
    with pytest.raises(SystemExit, match="unknown bench"):
        run_all.selected(False, {"nope"})
