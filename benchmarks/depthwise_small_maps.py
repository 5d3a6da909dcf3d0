"""Depthwise convolutions on small maps: focalnet.layers.DepthwiseConv2d vs nn.Conv2d, forward + backward, CPU.

    python benchmarks/depthwise_small_maps.py [--threads 2] [--repeats 15]

For each (batch, channels, map, kernel): PyTorch's padded depthwise convolution against an explicit zero
pad followed by an unpadded one (what DepthwiseConv2d does while gradients are recorded, when the padding
reaches half the map). Prints medians of interleaved runs, and the ratio; then a training step of the main
job's model with each (all other layers equal).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import focalnet
from focalnet.layers import DepthwiseConv2d


def fwd_bwd(m: nn.Module, x: torch.Tensor) -> float:
    xx = x.detach().requires_grad_()
    t = time.perf_counter()
    y = m(xx)
    y.backward(torch.ones_like(y))
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} threads; depthwise conv forward+backward, channels-last, ms (median)")
    print(f"{'B, C, H=W, k':>20} {'pad>=H/2':>9} {'nn.Conv2d':>10} {'focalnet':>9} {'ratio':>6}")
    for B, C, H, k in [(128, 128, 4, 5), (128, 128, 4, 3), (128, 128, 2, 3), (128, 256, 4, 7), (32, 768, 7, 9),
                       (32, 768, 7, 7), (128, 64, 7, 5), (128, 32, 14, 5)]:
        ours = DepthwiseConv2d(C, k)
        ref = nn.Conv2d(C, C, k, padding=k // 2, groups=C, bias=False)
        ref.weight = ours.weight
        x = torch.randn(B, C, H, H).contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)
        t = {"ref": [], "ours": []}
        for i in range(args.repeats + 3):
            t["ref"].append(fwd_bwd(ref, x))
            t["ours"].append(fwd_bwd(ours, x))
        a, b = (statistics.median(t[s][3:]) * 1e3 for s in ("ref", "ours"))
        print(f"{f'{B}, {C}, {H}, {k}':>20} {'yes' if 2 * (k // 2) >= H else 'no':>9} {a:10.2f} {b:9.2f} {a / b:6.2f}")

    ours = focalnet.create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, embed_dim=32, depths=(1, 2, 2),
                                 focal_levels=(2, 2, 2), focal_windows=(3, 3, 3), patch_size=2, drop_path_rate=0.0)
    plain = copy.deepcopy(ours)
    for m in list(plain.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, DepthwiseConv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, padding=child.padding,
                                 groups=child.groups, bias=False)
                conv.weight = child.weight
                setattr(m, name, conv)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ours, plain)}

    def step(m: nn.Module) -> float:
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opts[id(m)].zero_grad(set_to_none=True)
        loss.backward()
        opts[id(m)].step()
        return time.perf_counter() - t

    times = {"plain": [], "ours": []}
    for i in range(args.repeats + 2):
        for name, m in (("plain", plain), ("ours", ours)):
            dt = step(m)
            if i >= 2:
                times[name].append(dt)
    a, b = (statistics.median(times[k]) * 1e3 for k in ("plain", "ours"))
    print(f"\ntraining step of the main job's model (batch 128, 28 px; its last stage is 4x4 with 5x5 kernels), "
          f"ms (median of {args.repeats}, interleaved):")
    print(f"nn.Conv2d {a:.1f} ({128 / a * 1e3:.0f} img/s) | DepthwiseConv2d {b:.1f} ({128 / b * 1e3:.0f} img/s) | ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
