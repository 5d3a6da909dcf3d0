"""GELU on channels-last maps: focalnet.layers.GELU (NHWC view) vs torch.nn.GELU, on the CPU.

    python benchmarks/gelu_layout.py [--threads 2] [--repeats 15]

1. forward + backward of GELU alone on the channels-last maps of the main job's model (batch 128);
2. one training step (forward, backward, AdamW) of the main job's model (configs/fashion-mnist.yaml's
   architecture at 28 px, batch 128) with each GELU, interleaved A B A B, median per side and the ratio.
Both sides give the same values up to float rounding (vectorised vs scalar erf; checked here).
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
from focalnet.layers import GELU


def gelu_alone(shape: tuple, repeats: int) -> tuple[float, float]:
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    times = {"torch": [], "focalnet": []}
    for _ in range(repeats + 3):
        for name, fn in (("torch", nn.GELU()), ("focalnet", GELU())):
            xx = x.detach().requires_grad_()
            t = time.perf_counter()
            y = fn(xx)
            y.backward(torch.ones_like(y))
            times[name].append(time.perf_counter() - t)
    return tuple(statistics.median(times[k][3:]) * 1e3 for k in ("torch", "focalnet"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {args.threads} threads; forward+backward of GELU, channels-last, ms (median)")
    print(f"{'shape':>22} {'nn.GELU':>9} {'focalnet':>9} {'ratio':>6}")
    for shape in [(128, 128, 14, 14), (128, 256, 7, 7), (128, 512, 4, 4), (128, 64, 7, 7), (128, 32, 14, 14)]:
        a, b = gelu_alone(shape, args.repeats)
        print(f"{str(shape):>22} {a:9.2f} {b:9.2f} {a / b:6.2f}")

    ours = focalnet.create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, embed_dim=32, depths=(1, 2, 2),
                                 focal_levels=(2, 2, 2), focal_windows=(3, 3, 3), patch_size=2, drop_path_rate=0.0)
    plain = copy.deepcopy(ours)
    for name, m in list(plain.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, GELU):
                setattr(m, child_name, nn.GELU())
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-6)  # vectorised vs scalar erf: ulps
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ours, plain)}

    def step(m: nn.Module) -> float:
        t = time.perf_counter()
        loss = F.cross_entropy(m(x), y)
        opts[id(m)].zero_grad(set_to_none=True)
        loss.backward()
        opts[id(m)].step()
        return time.perf_counter() - t

    times = {"torch": [], "focalnet": []}
    for i in range(args.repeats + 2):
        for name, m in (("torch", plain), ("focalnet", ours)):
            dt = step(m)
            if i >= 2:
                times[name].append(dt)
    a, b = (statistics.median(times[k]) * 1e3 for k in ("torch", "focalnet"))
    print(f"\ntraining step of the main job's model (batch 128, 28 px), ms (median of {args.repeats}, interleaved):")
    print(f"nn.GELU {a:.1f} ({128 / a * 1e3:.0f} img/s) | focalnet GELU {b:.1f} ({128 / b * 1e3:.0f} img/s) | ratio {a / b:.3f}")


if __name__ == "__main__":
    main()
