"""Where a training step of FocalNet-T goes: torch.profiler's table of one step (forward, cross-entropy,
backward, AdamW) of ours or timm's FocalNet, after warm-up.

    PYTHONPATH=src python benchmarks/profile_train_step.py ours|timm [--batch-size 16] [--model focalnet_tiny_srf]

Prints the time per step (two steps, unprofiled) and the operators sorted by their own CPU time, then by
input shape. The profiler adds overhead: read its shares, not its absolute times.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from focalnet.deploy.bench import machine_line, machine_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("impl", choices=("ours", "timm"))
    ap.add_argument("--model", default="focalnet_tiny_srf")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    print(f"machine: {machine_line(machine_state())}")
    torch.manual_seed(0)
    if args.impl == "ours":
        import focalnet

        model = focalnet.create_model(args.model)
    else:
        import timm

        model = timm.create_model(args.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch_size, 3, 224, 224), torch.randint(0, 1000, (args.batch_size,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step(), step()
    t0 = time.perf_counter()
    step(), step()
    print(f"{args.impl}: {(time.perf_counter() - t0) / 2:.3f} s per step of {args.batch_size} images")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40))
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20,
                                                             max_name_column_width=35, max_shapes_column_width=90))


if __name__ == "__main__":
    main()
