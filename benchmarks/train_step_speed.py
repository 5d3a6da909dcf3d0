"""Training-step throughput of small FocalNets at 28 px: how the main job's model was chosen, and whether
compiling its training step pays on this machine (the rule behind `focalnet train --compile auto`).

    PYTHONPATH=src python benchmarks/train_step_speed.py [--batch-sizes 128 256] [--precision fp32 bf16]
    PYTHONPATH=src python benchmarks/train_step_speed.py --only "1-2-2" --batch-sizes 128 --compile
    for m in default keep default keep; do PYTHONPATH=src python benchmarks/train_step_speed.py --only 1-2-2 \
        --batch-sizes 128 --precision fp32 bf16 --malloc $m; done      # the allocator, in alternating runs

For each resized focalnet_tiny_srf: forward + cross-entropy + backward + AdamW step on random (B, 1, 28, 28)
batches, float32 (or bf16 autocast), in blocks of consecutive steps interleaved between the models (and, with
--compile, between the eager and the torch.compile'd step of each), steady state after warm-up; and inference
throughput at batch 256 (eager). With --compile the first compiled step's extra time (compilation) is printed,
and how many seconds of a 600 s run it would take to pay it back. Run it on an idle machine: another process on
the cores changes the figures several-fold.
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import focalnet  # noqa: E402
from focalnet.allocator import keep_freed_memory  # noqa: E402
from focalnet.deploy.bench import machine_line, machine_state, time_in_blocks  # noqa: E402
from focalnet.flops import try_count_macs  # noqa: E402
from focalnet.precision import precision_name  # noqa: E402
from focalnet.registry import fit_stage_lists  # noqa: E402
from focalnet.train.optim import build_optimizer  # noqa: E402
from focalnet.train.recipes import get_recipe  # noqa: E402

CONFIGS = {
    "dim 32, depths 2-2-2, patch 2": dict(embed_dim=32, depths=[2, 2, 2], patch_size=2),
    "dim 32, depths 1-2-2, patch 2": dict(embed_dim=32, depths=[1, 2, 2], patch_size=2),
    "dim 24, depths 2-3-2, patch 2": dict(embed_dim=24, depths=[2, 3, 2], patch_size=2),
    "dim 32, depths 2-2, patch 2": dict(embed_dim=32, depths=[2, 2], patch_size=2),
    "dim 48, depths 2-4-2, patch 4": dict(embed_dim=48, depths=[2, 4, 2], patch_size=4),
}


def make_step(arch: dict, batch: int, precision: str, compiled: bool, adamw: str = "fused"):
    """(model, one training step) of a resized focalnet_tiny_srf on a fixed random batch, with the optimizer
    `focalnet train` builds (AdamW, fused) or, adamw="loop", torch's one-tensor-at-a-time AdamW."""
    torch.manual_seed(0)
    model = focalnet.create_model("focalnet_tiny_srf", in_chans=1, num_classes=10, drop_path_rate=0.05,
                                  **fit_stage_lists("focalnet_tiny_srf", dict(arch)))
    fn = torch.compile(model) if compiled else model
    opt = build_optimizer(model, get_recipe("small"), 4e-3)
    if adamw == "loop":
        for group in opt.param_groups:
            group["fused"] = None
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(fn(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step


def eval_rate(model: torch.nn.Module) -> float:
    model.eval()
    xe = torch.randn(256, 1, 28, 28)
    times = []
    with torch.no_grad():
        for _ in range(4):
            t0 = time.perf_counter()
            model(xe)
            times.append(time.perf_counter() - t0)
    model.train()
    return 256 / statistics.median(times[1:])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--precision", nargs="+", default=["fp32"],
                   help="fp32 and/or bf16 (autocast), each timed interleaved with the others; --amp is the old spelling")
    p.add_argument("--amp", dest="precision", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--only", default=None, help="only the configurations whose name contains this text")
    p.add_argument("--compile", action="store_true", help="also time each step through torch.compile")
    p.add_argument("--adamw", nargs="+", default=["fused"], choices=("fused", "loop"),
                   help="AdamW as focalnet train runs it (fused) and/or torch's per-tensor loop, interleaved")
    p.add_argument("--malloc", choices=("default", "keep"), default="default",
                   help="keep: glibc keeps freed memory, as focalnet train does on the CPU (focalnet.allocator); "
                        "a process-wide setting, so compare the two in alternating runs of this script")
    p.add_argument("--rounds", type=int, default=10, help="timed steps of each (default 10)")
    p.add_argument("--block", type=int, default=5, help="consecutive timed steps per block (default 5)")
    args = p.parse_args()
    args.precision = [precision_name(x) for x in args.precision]
    if "fp16" in args.precision:
        p.error("fp16 autocast is for CUDA; on the CPU use --precision fp32 and/or bf16")
    if args.malloc == "keep":
        print(keep_freed_memory())
    print(f"machine: {machine_line(machine_state())}; precision {' and '.join(args.precision)}")
    configs = {k: v for k, v in CONFIGS.items() if args.only is None or args.only in k}
    for batch in args.batch_sizes:
        calls, models = {}, {}
        for name, arch in configs.items():
            for precision, adamw in itertools.product(args.precision, args.adamw):
                for compiled in (False, True) if args.compile else (False,):
                    key = (name + (f", {precision}" if len(args.precision) > 1 else "")
                           + (f", adamw {adamw}" if len(args.adamw) > 1 else "") + (", compiled" if compiled else ""))
                    models[key], calls[key] = make_step(arch, batch, precision, compiled, adamw)
        timed = time_in_blocks(calls, torch.device("cpu"), warmup=2, rounds=args.rounds, block=args.block)
        for key, t in timed.items():
            step_s = statistics.median(t["times"])
            extra = t["first"] - step_s
            params = sum(q.numel() for q in models[key].parameters())
            macs = try_count_macs(models[key], 1, 28)
            line = (f"batch {batch:>3} | {key:<46} | {params / 1e6:5.2f} M params | {macs / 1e6:5.1f} M MACs | "
                    f"train {batch / step_s:5.0f} img/s [{batch / max(t['times']):.0f}-{batch / min(t['times']):.0f}]")
            if key.endswith("compiled"):
                eager_s = statistics.median(timed[key.replace(", compiled", "")]["times"])
                gain = eager_s / step_s
                payback = extra / max(1e-9, 1 - step_s / eager_s) if gain > 1 else float("inf")
                line += f" | {gain:.2f}x eager | first step +{extra:.0f} s | pays back after {payback:.0f} s"
            else:
                line += f" | eval {eval_rate(models[key]):5.0f} img/s"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
