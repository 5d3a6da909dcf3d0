"""The two CPU fixes of the default forward, measured: GELU on the NHWC view of channels-last maps, and an
explicit zero pad for depthwise convolutions on small maps (focalnet.layers.GELU, DepthwiseConv2d).

    python benchmarks/training_layers.py [--threads 2] [--repeats 15]

1. forward + backward of GELU alone, channels-last maps of the main job's model (batch 128): nn.GELU vs ours;
2. forward + backward of a depthwise convolution alone for several (batch, channels, map, kernel): nn.Conv2d
   with padding vs ours (which pre-pads only while recording gradients, when the padding reaches half the map);
3. a training step (forward, backward, AdamW) of the main job's model (configs/fashion-mnist.yaml's
   architecture at 28 px, batch 128) with torch's layers, with each fix alone, and with both (ours).
Every comparison is interleaved (A B A B ...) after warm-up; medians and ratios are printed. The values agree
up to float rounding (vectorised vs scalar erf), checked here.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import focalnet
from focalnet.layers import GELU, DepthwiseConv2d


def interleaved(fns: dict[str, Callable[[], float]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds of each timed call, run A B C A B C ... after `warmup` untimed rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for k, fn in fns.items():
            dt = fn()
            if i >= warmup:
                times[k].append(dt)
    return {k: statistics.median(v) for k, v in times.items()}


def fwd_bwd(m: nn.Module, x: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        xx = x.detach().requires_grad_()
        t = time.perf_counter()
        y = m(xx)
        y.backward(torch.ones_like(y))
        return time.perf_counter() - t

    return run


def with_torch_layers(model: nn.Module, gelu: bool, conv: bool) -> nn.Module:
    """A copy of `model` whose focalnet GELU / DepthwiseConv2d modules are the plain torch ones (same weights)."""
    model = copy.deepcopy(model)
    for m in list(model.modules()):
        for name, child in list(m.named_children()):
            if gelu and isinstance(child, GELU):
                setattr(m, name, nn.GELU())
            elif conv and isinstance(child, DepthwiseConv2d):
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, padding=child.padding,
                                  groups=child.groups, bias=False)
                plain.weight = child.weight
                setattr(m, name, plain)
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads, channels-last maps; medians in ms, interleaved")

    print(f"\n1. GELU forward+backward\n{'shape':>22} {'nn.GELU':>9} {'focalnet':>9} {'ratio':>6}")
    for shape in [(128, 128, 14, 14), (128, 256, 7, 7), (128, 512, 4, 4), (128, 64, 7, 7), (128, 32, 14, 14)]:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(GELU()(x), nn.GELU()(x), rtol=1e-5, atol=1e-6)
        t = interleaved({"torch": fwd_bwd(nn.GELU(), x), "ours": fwd_bwd(GELU(), x)}, args.repeats)
        print(f"{str(shape):>22} {t['torch'] * 1e3:9.2f} {t['ours'] * 1e3:9.2f} {t['torch'] / t['ours']:6.2f}")

    print(f"\n2. depthwise convolution forward+backward\n{'B, C, H=W, k':>20} {'pad>=H/2':>9} {'nn.Conv2d':>10} "
          f"{'focalnet':>9} {'ratio':>6}")
    for B, C, H, k in [(128, 128, 4, 5), (128, 128, 4, 3), (128, 128, 2, 3), (128, 256, 4, 7), (32, 768, 7, 9),
                       (32, 768, 7, 7), (128, 64, 7, 5), (128, 32, 14, 5)]:
        ours = DepthwiseConv2d(C, k)
        ref = nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=False)
        ref.weight = ours.weight
        x = torch.randn(B, C, H, H).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        t = interleaved({"torch": fwd_bwd(ref, x), "ours": fwd_bwd(ours, x)}, args.repeats)
        print(f"{f'{B}, {C}, {H}, {k}':>20} {'yes' if 2 * (k // 2) >= H else 'no':>9} {t['torch'] * 1e3:10.2f} "
              f"{t['ours'] * 1e3:9.2f} {t['torch'] / t['ours']:6.2f}")

    ours = focalnet.create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, embed_dim=32, depths=(1, 2, 2),
                                 focal_levels=(2, 2, 2), focal_windows=(3, 3, 3), patch_size=2, drop_path_rate=0.0)
    models = {
        "torch layers": with_torch_layers(ours, gelu=True, conv=True),
        "GELU fix only": with_torch_layers(ours, gelu=False, conv=True),
        "pad fix only": with_torch_layers(ours, gelu=True, conv=False),
        "focalnet (both)": ours,
    }
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    with torch.no_grad():
        for m in models.values():
            torch.testing.assert_close(m(x), ours(x), rtol=1e-5, atol=1e-6)

    def step(m: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], float]:
        def run() -> float:
            t = time.perf_counter()
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - t

        return run

    t = interleaved({k: step(m, torch.optim.AdamW(m.parameters(), lr=1e-3)) for k, m in models.items()},
                    args.repeats, warmup=2)
    base = t["torch layers"]
    print(f"\n3. training step of the main job's model (batch 128, 28 px; last stage 4x4 with 5x5 kernels)")
    for k, v in t.items():
        print(f"{k:>16}: {v * 1e3:6.1f} ms  {128 / v:5.0f} img/s  {base / v:5.3f}x")


if __name__ == "__main__":
    main()
