"""Where a training step of the main job's model goes: torch.profiler's operator times, grouped by what they do,
beside the FLOP/s the step reaches and the machine's matmul peak.

    PYTHONPATH=src python benchmarks/profile_main_job_step.py [--precision fp32|bf16] [--malloc keep|default]

The step is what `focalnet train -c configs/fashion-mnist.yaml` runs (the model resized by the config, batch 128 of
28 px gray images, cross-entropy, backward, the project's fused AdamW; bf16 autocast or float32; glibc keeping freed
memory as focalnet.allocator sets it, or its defaults). It is timed unprofiled first (blocks of consecutive steps,
the median), then one profile of PROFILED steps is grouped into: 1x1, depthwise and stem / downsampling
convolutions, forward and backward (told apart by the weight's shape), GELU, LayerNorm,
element-wise products and sums (gating, layer scale, residuals), copies and casts (layout changes, autocast's
bf16 copies), the optimizer, and the rest. The profiler adds overhead per operator: read the shares, not the sums.
Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import focalnet  # noqa: E402
from focalnet.allocator import keep_freed_memory  # noqa: E402
from focalnet.deploy.bench import cpu_matmul_peak, machine_line, machine_state  # noqa: E402
from focalnet.flops import forward_flops  # noqa: E402
from focalnet.registry import fit_stage_lists  # noqa: E402
from focalnet.train.optim import build_optimizer  # noqa: E402
from focalnet.train.recipes import get_recipe  # noqa: E402

PROFILED = 5
GROUPS = (  # (group, does this operator belong to it), the first that matches
    ("1x1 convolution backward", lambda name, shapes: "convolution_backward" in name and _kernel(shapes, 2) == (1, 1)),
    ("depthwise convolution backward", lambda name, shapes: "convolution_backward" in name and _depthwise(shapes, 2)),
    ("stem / downsampling convolution backward", lambda name, shapes: "convolution_backward" in name),
    ("1x1 convolution forward", lambda name, shapes: "convolution" in name and _kernel(shapes, 1) == (1, 1)),
    ("depthwise convolution forward", lambda name, shapes: "convolution" in name and _depthwise(shapes, 1)),
    ("stem / downsampling convolution forward", lambda name, shapes: "convolution" in name),
    ("GELU forward and backward", lambda name, shapes: "gelu" in name),
    ("LayerNorm forward and backward", lambda name, shapes: "layer_norm" in name),
    ("optimizer (fused AdamW)", lambda name, shapes: "adam" in name.lower() or "Optimizer" in name),
    ("copies and casts", lambda name, shapes: any(k in name for k in ("copy_", "_to_copy", "contiguous", "clone"))),
    ("element-wise products and sums", lambda name, shapes: any(
        k in name for k in ("mul", "add", "div", "sum", "mean", "addcmul", "where", "fill_", "zero_"))),
)


def _weight(shapes: list, at: int) -> list:
    """The weight's shape among an operator's input shapes (forward: the 2nd input; backward: the 3rd)."""
    return list(shapes[at]) if len(shapes) > at and len(shapes[at]) == 4 else []


def _kernel(shapes: list, at: int) -> tuple:
    return tuple(_weight(shapes, at)[2:])


def _depthwise(shapes: list, at: int) -> bool:
    weight = _weight(shapes, at)
    return bool(weight) and weight[1] == 1 and weight[2] > 1  # (C, 1, k, k)


def main_job_model() -> torch.nn.Module:
    cfg = yaml.safe_load((ROOT / "configs" / "fashion-mnist.yaml").read_text())
    arch = fit_stage_lists(cfg["model"], dict(cfg["arch"]))
    return focalnet.create_model(cfg["model"], in_chans=1, num_classes=10, drop_path_rate=0.05, **arch)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--malloc", choices=("keep", "default"), default="keep")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="unprofiled timed steps (blocks of 5)")
    args = p.parse_args()
    if args.malloc == "keep":
        keep_freed_memory()
    torch.manual_seed(0)
    model = main_job_model().train()
    opt = build_optimizer(model, get_recipe("small"), 4e-3)
    x, y = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    bf16 = args.precision == "bf16"

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    blocks = []
    for _ in range(max(1, args.steps // 5)):
        t0 = time.perf_counter()
        for _ in range(5):
            step()
        blocks.append((time.perf_counter() - t0) / 5)
    step_s = statistics.median(blocks)
    flops = 3 * forward_flops(model, x[:1]) * args.batch_size  # forward + backward (2x forward)
    peak = cpu_matmul_peak(args.precision)
    print(f"machine: {machine_line(machine_state())}")
    print(f"step: batch {args.batch_size}, {args.precision}, malloc {args.malloc}: {step_s * 1e3:.1f} ms "
          f"({args.batch_size / step_s:.0f} img/s; blocks {min(blocks) * 1e3:.1f}-{max(blocks) * 1e3:.1f} ms); "
          f"{flops / step_s / 1e9:.0f} GFLOP/s counted (3 x forward)"
          + (f" = {100 * flops / step_s / peak:.0f} % of the {peak / 1e9:.0f} GFLOP/s {args.precision} matmul peak"
             if peak else ""))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(PROFILED):
            step()
    groups: dict[str, float] = defaultdict(float)
    for e in prof.key_averages(group_by_input_shape=True):
        if e.self_cpu_time_total <= 0:
            continue
        name = next((g for g, match in GROUPS if match(e.key, e.input_shapes or [])), "other")
        groups[name] += e.self_cpu_time_total / 1e3 / PROFILED
    total = sum(groups.values())
    print(f"profiled: {total:.1f} ms of operator time per step (the profiler's overhead included)")
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<42} {ms:7.1f} ms  {100 * ms / total:5.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
