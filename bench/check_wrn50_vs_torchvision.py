"""Check our plain-torch WideResNet-50-2 against torchvision's, on the same random weights.

    python bench/check_wrn50_vs_torchvision.py [--device cpu|cuda]

Needs torchvision (e.g. on a GPU machine); without it, it says so and exits 0. No weights are
downloaded: torchvision's network is built with ``weights=None``, given random batch-norm statistics
(so that our batch-norm folding is really exercised), and its state dict is loaded strictly into ours.

Two comparisons, each printing the max abs difference of layer2 (s8), layer3 (s16) and logits:

* float64: the architectures must agree to < 1e-5 (in practice ~1e-12); this is the pass/fail test.
* float32 (our production path; bf16 autocast on CUDA): reported relative to the feature scale, for
  information, since rounding of a 100-magnitude activation alone exceeds 1e-5 in float32.

Exit status 0 on success or when torchvision is missing, 1 when the float64 check fails.
"""

from __future__ import annotations

import argparse
import sys

import torch

TOLERANCE = 1e-5


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _reference(tv_model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """torchvision's layer2/layer3 outputs and logits, captured with forward hooks."""
    out: dict[str, torch.Tensor] = {}
    hooks = [tv_model.layer2.register_forward_hook(lambda _m, _i, o: out.__setitem__("s8", o)),
             tv_model.layer3.register_forward_hook(lambda _m, _i, o: out.__setitem__("s16", o))]
    try:
        with torch.no_grad():
            out["logits"] = tv_model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def compare(tv_model: torch.nn.Module, device: str, dtype: torch.dtype) -> dict[str, tuple[float, float]]:
    """{name: (max abs diff, max abs reference value)} of our backbone vs ``tv_model`` in ``dtype``."""
    from anomalens.engine.backbones import build_backbone

    tv_model = tv_model.to(device=device, dtype=dtype).eval()
    state = {k: v.detach().cpu() for k, v in tv_model.state_dict().items()}
    ours = build_backbone("wrn50", state, device=device, source="torchvision's random weights", dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    x = ours.prepare(torch.rand(2, 3, 224, 224, generator=gen, dtype=torch.float64).to(dtype))
    ref = _reference(tv_model, x)
    got = dict(ours.extract(x))
    got["logits"] = ours.classify(x)
    return {k: (float((got[k].to(ref[k].dtype) - ref[k]).abs().max()), float(ref[k].abs().max()))
            for k in ref}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    try:
        import torchvision
    except ImportError:
        print("torchvision is not installed here, so there is nothing to compare against; "
              "run this script where torchvision is available (e.g. the GPU machine).")
        return 0
    torch.manual_seed(0)
    tv_model = torchvision.models.wide_resnet50_2(weights=None)
    _randomise_bn(tv_model)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {args.device}")

    ok = True
    for dtype, device in ((torch.float64, "cpu"), (torch.float32, args.device)):
        diffs = compare(tv_model, device, dtype)
        for name, (diff, scale) in diffs.items():
            line = (f"{str(dtype)[6:]:8s} {device:4s} {name:7s} max|diff| {diff:.3e}  "
                    f"(max|ref| {scale:.3e}, relative {diff / max(scale, 1e-12):.3e})")
            if dtype == torch.float64:
                passed = diff < TOLERANCE
                ok &= passed
                line += "  OK" if passed else f"  FAIL (>= {TOLERANCE})"
            print(line)
    print("PASS: our WRN-50-2 matches torchvision" if ok else "FAIL: our WRN-50-2 differs from torchvision")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
