"""`focalnet bench`: inference and training speed, ours and, with --compare, the usual peers, side by side."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure inference / training speed (with --compare: against timm, Hugging Face, Swin-T, ConvNeXt-T)",
        description="Interleaved timing (A B A B ...) after warm-up, in one process; medians, min-max and ratios "
        "to timm's FocalNet. Run it on an idle machine and keep the allocator setting in mind (it is printed).",
    )
    p.add_argument("--model", default="focalnet_tiny_srf", help="registered variant (default: focalnet_tiny_srf)")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    p.add_argument("--batch-size", type=int, default=16, help="batch of the throughput run (default 16)")
    p.add_argument("--latency", action="store_true", help="also measure inference at batch 1")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="float32, or bf16/fp16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile every implementation")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs and weights for every implementation")
    p.add_argument("--impl", action="append", default=None,
                   help="implementation(s) to run: ours, ours-fused, timm, hf, swin_t, convnext_t (repeatable)")
    p.add_argument("--compare", action="store_true", help="run ours, ours-fused, timm, hf, swin_t and convnext_t")
    p.add_argument("--no-recompute", action="store_true",
                   help="train ours without selective activation recompute (set_activation_recompute)")
    p.add_argument("--peak-memory", action="store_true",
                   help="training: also measure peak memory, one fresh subprocess per implementation")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each implementation (interleaved)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the raw figures to PATH")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from .. import bench
    from ..registry import get_spec

    get_spec(args.model)  # unknown names: a clear error with suggestions
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if args.batch_size < 1 or args.rounds < 1 or args.warmup < 0 or args.img_size < 1:
        raise UserError("--batch-size, --rounds and --img-size must be positive and --warmup not negative")
    if args.dtype == "float16" and args.device == "cpu":
        raise UserError("float16 autocast is for CUDA; on CPU use --dtype bfloat16")
    if args.json and Path(args.json).exists() and Path(args.json).is_dir():
        raise UserError(f"--json {args.json} is a folder; give a file path")
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = list(bench.IMPLEMENTATIONS) if args.compare else (args.impl or ["ours", "ours-fused", "timm"])
    unknown = [i for i in impls if i not in bench.IMPLEMENTATIONS]
    if unknown:
        raise UserError(f"unknown implementation(s) {', '.join(unknown)}; choose from {', '.join(bench.IMPLEMENTATIONS)}")

    state = bench.machine_state()
    print(f"machine: {state['cpu']} ({state['cpu_capability']}, oneDNN bf16: {state['onednn_bf16']}), "
          f"torch {state['torch']}, {state['threads']} threads, allocator: {state['allocator']}")
    print(f"model {args.model}, {args.img_size} px, {args.dtype}, device {args.device}"
          + (", compiled" if args.compile else "") + (", channels-last" if args.channels_last else ""))
    common = dict(variant=args.model, img_size=args.img_size, dtype=args.dtype, device=args.device,
                  compile=args.compile, channels_last=args.channels_last, log=print)
    results = []
    if args.mode in ("infer", "both"):
        batches = ([1] if args.latency else []) + [args.batch_size]
        for b in dict.fromkeys(batches):
            results += bench.run_inference(impls, batch_size=b, warmup=args.warmup, rounds=args.rounds, **common)
    if args.mode in ("train", "both"):
        train_impls = [i for i in impls if i != "ours-fused"]
        res = bench.run_training(train_impls, batch_size=args.batch_size, recompute=not args.no_recompute,
                                 warmup=min(args.warmup, 2), rounds=args.rounds, **common)
        if args.peak_memory:
            for r in res:
                print(f"peak memory of {r.impl} (fresh process) ...")
                r.peak_bytes = bench.peak_training_memory(
                    r.impl, variant=args.model, batch_size=args.batch_size, img_size=args.img_size, dtype=args.dtype,
                    device=args.device, compile=args.compile, channels_last=args.channels_last,
                    recompute=not args.no_recompute,
                )
        results += res
    print()
    print(bench.format_table(results))
    if args.json:
        from ..checkpoint import atomic_json

        payload = dict(machine=state, args={k: v for k, v in vars(args).items() if k != "func"},
                       results=[r.to_dict() for r in results])
        atomic_json(payload, args.json)
        print(f"\nwrote {args.json}")
    return 0
