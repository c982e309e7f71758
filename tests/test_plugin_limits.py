"""Every numeric option of every shipped detector has a range, and a forged one is refused before allocation.

Issue #18: a bundle whose ``bundle.json`` asks for a network of gigabytes (D2UE ``mid = 2**20``) used to be
built by ``load_state_dict`` before a weight was read. The ranges (``detectors.schema.COMMON_LIMITS`` and
each config class's ``LIMITS``) and the parameter cap (``schema.MAX_PARAMETERS``) refuse such values in one
line naming the option; the introspection test fails if a numeric option is added without a range.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import torch

from anomalens.engine.detectors import get_detector_class, load_bundle
from anomalens.engine.detectors.schema import COMMON_LIMITS, MAX_PARAMETERS, check_parameters
from anomalens.engine.errors import ConfigError, ModelError
from tests.phantoms import phantom_slices

PLUGINS = ("patchcore", "lorentz", "curved", "d2ue", "invdetect")
#: The largest patch features a backbone gives (wrn50: s8 512 + s16 1024 channels).
WIDEST = {"s8": 512, "s16": 1024}


def _numeric(hint: Any) -> type | None:
    """int or float if the annotation is a number, an optional number or a tuple of numbers; else None."""
    origin = get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        options = [a for a in get_args(hint) if a is not type(None)]
        return _numeric(options[0]) if len(options) == 1 else None
    if origin is tuple:
        return _numeric(get_args(hint)[0]) if get_args(hint) else None
    return hint if hint in (int, float) else None


def _numeric_fields(config_class: type) -> dict[str, type]:
    hints = typing.get_type_hints(config_class)
    return {f.name: kind for f in dataclasses.fields(config_class) if (kind := _numeric(hints[f.name])) is not None}


def _limits(config_class: type) -> dict[str, tuple[float, float]]:
    fields = {f.name for f in dataclasses.fields(config_class)}
    merged = {**COMMON_LIMITS, **getattr(config_class, "LIMITS", {})}
    return {k: v for k, v in merged.items() if k in fields}


def _is_tuple(config_class: type, name: str) -> bool:
    return get_origin(typing.get_type_hints(config_class)[name]) is tuple


@pytest.mark.parametrize("name", PLUGINS)
def test_every_numeric_option_has_a_range(name: str) -> None:
    config_class = get_detector_class(name).config_class
    numeric = _numeric_fields(config_class)
    assert numeric, "the introspection found no numeric option at all"
    unbounded = sorted(set(numeric) - set(_limits(config_class)))
    assert not unbounded, f"{config_class.__name__}: give {', '.join(unbounded)} a range in LIMITS"
    fields = {f.name for f in dataclasses.fields(config_class)}
    stray = sorted(set(getattr(config_class, "LIMITS", {})) - fields)
    assert not stray, f"{config_class.__name__}.LIMITS names no option: {stray}"
    for key, (lo, hi) in _limits(config_class).items():
        assert lo < hi, (key, lo, hi)


@pytest.mark.parametrize("name", PLUGINS)
def test_defaults_and_the_test_config_are_within_range(name: str) -> None:
    """Both round-trip as a bundle stores them: every option, checked (InvDetect's default b = 32 was refused)."""
    cls = get_detector_class(name)
    for values in ({}, cls.test_config()):
        config = cls.make_config(values)
        again = cls.make_config(json.loads(json.dumps(dataclasses.asdict(config))))
        assert dataclasses.asdict(again) == dataclasses.asdict(config)


def _past(lo: float, hi: float, kind: type) -> list[float]:
    if kind is int:
        return [int(lo) - 1, int(hi) + 1]
    return [lo - max(abs(lo) * 0.5, 1e-6), hi + max(abs(hi) * 0.5, 1e-6)]


@pytest.mark.parametrize("name", PLUGINS)
def test_a_value_just_past_each_range_is_refused_naming_the_option(name: str) -> None:
    cls = get_detector_class(name)
    numeric = _numeric_fields(cls.config_class)
    checked = 0
    for key, (lo, hi) in _limits(cls.config_class).items():
        for value in _past(lo, hi, numeric[key]):
            forged = (value,) if _is_tuple(cls.config_class, key) else value
            with pytest.raises(ConfigError) as err:
                cls.make_config({**cls.test_config(), key: forged})
            message = str(err.value)
            assert f"option {key} must" in message and "\n" not in message, message
            checked += 1
    assert checked == 2 * len(numeric)


def test_choice_options_are_checked_when_the_config_is_made() -> None:
    lorentz = get_detector_class("lorentz")
    with pytest.raises(ConfigError, match="anomaly_kinds must be one or more of"):
        lorentz.make_config({"anomaly_kinds": ["gaussian", "lightning"]})
    with pytest.raises(ConfigError, match="anomaly_kinds must be one or more of"):
        lorentz.make_config({"anomaly_kinds": []})
    for name in ("patchcore", "lorentz", "curved"):
        with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
            get_detector_class(name).make_config({"backbone": "resnet9000"})


def test_the_d2ue_parameter_count_is_exact_and_capped() -> None:
    from anomalens.plugins.d2ue.detector import D2UEConfig, ensemble_parameters
    from anomalens.plugins.d2ue.model import EnsembleAE

    for kw in ({}, {"backbone": "ae", "n_learners": 2, "input_size": 32, "width": 3, "mid": 7, "latent": 5},
               {"n_learners": 5, "input_size": 128, "width": 6, "mid": 100, "latent": 9}):
        c = D2UEConfig(**kw)
        with torch.device("meta"):
            model = EnsembleAE(c.n_learners, c.input_size, c.backbone, c.width, c.mid, c.latent)
        assert ensemble_parameters(c) == sum(p.numel() for p in model.parameters())
    # Each option within its own range, the product far beyond the cap: refused as a whole.
    with pytest.raises(ConfigError, match=r"n_learners, input_size, width, mid and latent describe a learner "
                                          r"ensemble of [\d,]+ million parameters") as err:
        D2UEConfig(n_learners=16, input_size=512, width=128, mid=16384)
    assert "\n" not in str(err.value)
    check_parameters(MAX_PARAMETERS, "x")
    with pytest.raises(ConfigError, match="at most 268 million"):
        check_parameters(MAX_PARAMETERS + 1, "x")


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_largest_networks_within_the_ranges_fit_the_cap() -> None:
    """Where no parameter count is checked, the ranges alone bound the network (built on the meta device)."""
    from anomalens.plugins.curved_heads.detector import CurvedHeadsConfig
    from anomalens.plugins.curved_heads.heads import VARIANTS, CurvedHeads
    from anomalens.plugins.invdetect.detector import InvDetectConfig
    from anomalens.plugins.invdetect.diffusion import make_unet
    from anomalens.plugins.lorentz.detector import GEOMETRIES, LorentzConfig
    from anomalens.plugins.lorentz.head import HEADS

    lz, cv, inv = LorentzConfig.LIMITS, CurvedHeadsConfig.LIMITS, InvDetectConfig.LIMITS
    b = int(inv["patch_size"][1])
    stages = b.bit_length()  # b divisible by 2^(stages − 1)
    with torch.device("meta"):
        heads = max(_count(HEADS[g](WIDEST, int(lz["dim"][1]))) for g in GEOMETRIES) * int(lz["n_heads"][1])
        curved = max(_count(CurvedHeads(sum(WIDEST.values()), int(cv["hidden"][1]), int(cv["dim"][1]), v))
                     for v in VARIANTS)
        unet = _count(make_unet(b, (int(inv["channels"][1]),) * stages, int(inv["layers_per_block"][1]), 8))
    assert InvDetectConfig(patch_size=b, channels=(int(inv["channels"][1]),) * stages,
                           layers_per_block=int(inv["layers_per_block"][1])).patch_size == b
    for what, count in {"lorentz heads": heads, "curved head": curved, "InvDetect U-Net": unet}.items():
        assert 0 < count <= MAX_PARAMETERS, f"the largest {what} holds {count:,} parameters"


# ------------------------------------------------------------------------------------------- forged bundles

#: Per trainable plugin: what builds its network at load (patched to fail), and forged options that ask for
#: a huge network (each refused in one line naming the option).
FORGED = {
    "d2ue": ("anomalens.plugins.d2ue.detector.EnsembleAE",
             [({"mid": 2**20}, "option mid must be between"),
              ({"width": 128, "input_size": 512, "mid": 16384}, "describe a learner ensemble of")]),
    "lorentz": ("anomalens.plugins.lorentz.detector.LorentzDetector._new_head",
                [({"dim": 2**20}, "option dim must be between"), ({"bank_size": 2**30}, "option bank_size must")]),
    "curved": ("anomalens.plugins.curved_heads.detector.CurvedHeadsDetector._new_head",
               [({"hidden": 2**20}, "option hidden must be between"), ({"dim": 2**16}, "option dim must be")]),
    "invdetect": ("anomalens.plugins.invdetect.detector.InvDetectDetector._new_unet",
                  [({"channels": [2**16, 2**16]}, "option channels must hold values between"),
                   ({"layers_per_block": 10**6}, "option layers_per_block must be between")]),
}


@pytest.fixture(scope="module", params=sorted(FORGED))
def bundle(request, tmp_path_factory) -> tuple[str, Path]:
    cls = get_detector_class(request.param)
    det = cls(config=cls.test_config(), seed=0)
    det.fit(phantom_slices(3, 64, seed=0)[0])
    return request.param, det.save(tmp_path_factory.mktemp(request.param) / "good")


def _forge(bundle: Path, out: Path, changes: dict[str, Any]) -> Path:
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "bundle.json").read_text())
    manifest["config"].update(changes)
    (out / "bundle.json").write_text(json.dumps(manifest))
    return out


def test_forged_big_networks_are_refused_before_they_are_built(bundle, tmp_path, monkeypatch) -> None:
    name, path = bundle
    assert load_bundle(path).fitted  # the real bundle loads: what follows is refused for the forged option
    target, cases = FORGED[name]

    def built(*args, **kwargs):
        raise AssertionError("the network was built from a forged configuration")

    monkeypatch.setattr(target, built)
    for i, (changes, match) in enumerate(cases):
        forged = _forge(path, tmp_path / f"forged{i}", changes)
        t0 = time.perf_counter()
        with pytest.raises(ModelError, match=match) as err:
            load_bundle(forged)
        assert time.perf_counter() - t0 < 5.0
        assert "\n" not in str(err.value)
