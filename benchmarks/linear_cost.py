"""Cost grows linearly with pixels: time per image at 896 px against 16 x the time per image at 224 px.

    flock /work/cpu.lock env PYTHONPATH=src python benchmarks/linear_cost.py [--model focalnet_tiny_srf]

Each implementation runs at 224 px (batch 1 and batch 16, per image) and at 896 px (batch 1), in blocks of
consecutive calls interleaved in one process after warm-up (steady state); medians are compared. FocalNet's cost is O(HW) (paper Sec. 3.2): the ratio should be 1
up to cache effects (a 896-px stage-1 map is 16x larger and no longer fits in cache).
"""
from __future__ import annotations

import argparse
import statistics

import torch

from focalnet.deploy.bench import build_implementation, machine_line, machine_state, time_in_blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="focalnet_tiny_srf")
    ap.add_argument("--impl", action="append", default=None, help="ours, ours-fused, timm (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=3, help="consecutive timed calls per block")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = args.impl or ["ours", "ours-fused", "timm"]
    print(f"machine: {machine_line(machine_state())}")
    shapes = {"224 b1": (1, 224), "224 b16": (16, 224), "896 b1": (1, 896)}
    inputs = {k: torch.randn(b, 3, s, s) for k, (b, s) in shapes.items()}
    calls = {}
    for impl in impls:
        _, fn = build_implementation(impl, variant=args.model, img_size=224)
        if hasattr(fn, "eval"):
            fn.eval()
        for key, x in inputs.items():
            def call(fn=fn, x=x):
                with torch.inference_mode():
                    return fn(x)
            calls[(impl, key)] = call
    keyed = {f"{impl} {key}": fn for (impl, key), fn in calls.items()}
    timed = time_in_blocks(keyed, torch.device("cpu"), warmup=1, rounds=args.rounds, block=args.block)
    per_img = {(impl, key): statistics.median(timed[f"{impl} {key}"]["times"]) / shapes[key][0] for impl, key in calls}
    print(f"{'impl':<12} {'224 b1 ms/img':>14} {'224 b16 ms/img':>15} {'896 b1 ms/img':>14} {'896/(16*224 b1)':>16} {'896/(16*224 b16)':>17}")
    for impl in impls:
        a, b, c = (per_img[(impl, k)] * 1e3 for k in shapes)
        print(f"{impl:<12} {a:>14.1f} {b:>15.1f} {c:>14.1f} {c / (16 * a):>16.3f} {c / (16 * b):>17.3f}")


if __name__ == "__main__":
    main()
