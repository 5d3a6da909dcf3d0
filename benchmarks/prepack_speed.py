"""What packing the fused model's weights once buys: `fuse_for_inference(model)` against
`fuse_for_inference(model, prepack=False)` (oneDNN reorders each weight on every call), and timm's FocalNet.

    PYTHONPATH=src python benchmarks/prepack_speed.py [--model focalnet_tiny_srf] [--rounds 12 --block 4]

Batch 1 and batch 16 at 224 px, float32, inference mode; every variant timed in blocks of consecutive calls,
blocks interleaved (A A A B B B C C C ...) in one process after warm-up; medians in img/s and their ratios.
Run it alone on the machine: the figures are wall-clock.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from focalnet.deploy import fuse_for_inference
from focalnet.deploy.bench import build_implementation, machine_line, machine_state, time_in_blocks
from focalnet.registry import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="focalnet_tiny_srf")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--block", type=int, default=4)
    args = ap.parse_args()
    print(f"machine: {machine_line(machine_state())}")
    torch.manual_seed(0)
    model = build_model(args.model).eval()
    _, timm_fn = build_implementation("timm", variant=args.model, img_size=224)
    impls = {"fused, packed once": fuse_for_inference(model), "fused, reorder per call": fuse_for_inference(model, prepack=False),
             "timm": timm_fn}
    calls = {}
    for b in args.batch_sizes:
        x = torch.randn(b, 3, 224, 224)
        for name, fn in impls.items():
            def call(fn=fn, x=x):
                with torch.inference_mode():
                    return fn(x)
            calls[f"{name} | b{b}"] = call
    with torch.inference_mode():  # the two fused variants compute the same numbers
        x = torch.randn(2, 3, 224, 224)
        diff = (impls["fused, packed once"](x) - impls["fused, reorder per call"](x)).abs().max().item()
    print(f"max |packed - per call| on 2 images: {diff:.1e}")
    timed = time_in_blocks(calls, torch.device("cpu"), warmup=3, rounds=args.rounds, block=args.block)
    for b in args.batch_sizes:
        rate = {name: b / statistics.median(timed[f"{name} | b{b}"]["times"]) for name in impls}
        print(f"batch {b}:")
        for name, r in rate.items():
            print(f"  {name:<24} {r:7.2f} img/s   x timm {r / rate['timm']:.2f}   "
                  f"x per-call {r / rate['fused, reorder per call']:.2f}")


if __name__ == "__main__":
    main()
