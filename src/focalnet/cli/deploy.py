"""`focalnet export`, `focalnet quantize` and `focalnet bench`: thin over focalnet.deploy (export, int8, and the
speed benchmark)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import UserError
from .common import build_from_args, parse_hw


def register(sub: argparse._SubParsersAction) -> None:
    _register_export(sub)
    _register_quantize(sub)
    _register_bench(sub)


def _register_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to ONNX or TorchScript and check it against PyTorch")
    p.add_argument("name", nargs="?", default=None,
                   help="registered model name (default: the architecture the --checkpoint holds)")
    p.add_argument("--checkpoint", default=None, help="weights in any supported layout (default: random weights)")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width (ONNX)")
    p.add_argument("--out", "-o", default=None, help="output file (default: NAME.onnx / NAME.torchscript.pt, NAME "
                   "being the model name or the checkpoint's file name)")
    p.add_argument("--img-size", type=int, nargs="+", default=None, metavar="PX",
                   help="example input H [W] (default: the size the checkpoint was trained at, else 224)")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="ONNX exporter: dynamo (default, current) or torchscript (legacy, much faster)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted difference from PyTorch")
    p.add_argument("--no-verify", action="store_true", help="skip running the export against PyTorch")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_export)


def _register_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize", help="int8 post-training quantization (PT2E, for CPUs with VNNI), calibrated on your images",
        description="Quantize a trained FocalNet to int8 with PyTorch's PT2E flow and the X86 Inductor quantizer, "
        "calibrated on a few hundred images; writes a torch.export program that loads without recalibration "
        "(focalnet.deploy.load_quantized), checks it against float32 on other images of the same source, and "
        "optionally writes ONNX (QDQ).",
    )
    p.add_argument("--checkpoint", required=True, help="the trained model (any supported layout)")
    p.add_argument("--calibrate", required=True, metavar="FOLDER|DATASET",
                   help="calibration images: a folder of image files (searched recursively) or a built-in data set "
                   "(fashion-mnist, digits: its training split)")
    p.add_argument("--output", "-o", required=True, help="the int8 program to write (.pt2)")
    p.add_argument("--num-images", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--keep-float", default=None, metavar="GROUP[,GROUP]",
                   help="groups of convolutions left in float (stem, downsample, head, context, gates, depthwise, "
                   "modulator, proj, mlp; '' for none; default: the measured choice in docs/speed.md)")
    p.add_argument("--onnx", default=None, metavar="PATH", help="also write ONNX in the QDQ form")
    p.add_argument("--seed", type=int, default=0, help="which images are sampled (default 0)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=cmd_quantize)


def _register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure inference / training speed (with --compare: against timm, Hugging Face, Swin-T, ConvNeXt-T)",
        description="Steady-state timing in one process: blocks of consecutive calls per implementation, the blocks "
        "interleaved (A A A B B B A A A ...), each block after one re-warming call; medians, min-max and ratios to "
        "timm's FocalNet; GFLOP/s and the fraction of the device's peak (a CPU's measured once per run on a 2048^2 "
        "matmul). Prints the CPU, its ISA and the allocator setting. Run it on an idle machine. The Fashion-MNIST "
        "model of configs/fashion-mnist.yaml: --mode train --impl ours --arch embed_dim=32 depths=[1,2,2] "
        "patch_size=2 --in-chans 1 --num-classes 10 --img-size 28 --batch-size 128",
    )
    p.add_argument("--model", default="focalnet_tiny_srf", help="registered variant (default: focalnet_tiny_srf)")
    p.add_argument("--arch", nargs="+", default=None, metavar="KEY=VALUE",
                   help="resize the variant as `focalnet train --arch` does, e.g. embed_dim=32 depths=[1,2,2] "
                   "patch_size=2 (our implementations only: ours, ours-fused, ...)")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3; 1 for Fashion-MNIST)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the head (default 1000)")
    p.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    p.add_argument("--batch-size", type=int, default=16, help="batch of the throughput run (default 16)")
    p.add_argument("--latency", action="store_true", help="also measure inference at batch 1 (warm, steady state)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", default=None, metavar="{fp32,bf16,fp16}",
                   help="fp32 (default), or bf16 / fp16 autocast")
    p.add_argument("--dtype", default=None, help="the old spelling of --precision (float32, bfloat16, float16)")
    p.add_argument("--compile", action="store_true",
                   help="also run each implementation through torch.compile (inductor; fullgraph for ours), beside "
                   "the eager one; or name compiled variants directly: --impl timm-compiled")
    p.add_argument("--no-freezing", action="store_true",
                   help="compiled inference without inductor's freezing (the default freezes weights: conv+GELU, "
                   "conv+add fused)")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs and weights for every implementation")
    p.add_argument("--impl", action="append", default=None,
                   help="implementation(s) to run, each also as NAME-compiled (repeatable; default: ours, ours-fused, "
                   "timm; an unknown name lists those registered in focalnet.deploy.bench.implementations)")
    p.add_argument("--compare", action="store_true",
                   help="run every registered implementation (ours, ours-fused, timm, hf, swin_t, convnext_t, ...) "
                   "but the reduced-precision rows, which --impl names: ours-fused-bf16, ours-int8 (compiled by "
                   "construction)")
    p.add_argument("--no-recompute", action="store_true",
                   help="train ours without selective activation recompute (set_activation_recompute)")
    p.add_argument("--peak-memory", action="store_true",
                   help="training: also measure peak memory, one fresh subprocess per implementation")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each implementation first (default 3)")
    p.add_argument("--rounds", type=int, default=10, help="timed calls of each implementation (default 10)")
    p.add_argument("--block", type=int, default=5,
                   help="consecutive timed calls per block, after one re-warming call (default 5)")
    p.add_argument("--cold", action="store_true",
                   help="also report the re-warming calls (the first call after another implementation ran), labelled")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the raw figures to PATH")
    p.set_defaults(func=cmd_bench)


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..deploy import DEFAULT_VERIFY_SIZES, ExportError, export_model, verify_export

    args.device = "cpu"
    model = build_from_args(args)  # a checkpoint alone: its own architecture (a resized model included)
    # the size the model was trained at travels with it (model.safetensors' preprocessing)
    trained = (getattr(model, "preprocessing", None) or {}).get("img_size") if args.checkpoint else None
    h, w = parse_hw(args.img_size or [int(trained or 224)])
    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    stem = args.name or Path(args.checkpoint).name.split(".")[0]
    out = Path(args.out) if args.out else Path(f"{stem}{suffix}")
    dynamic = args.dynamic or args.format == "torchscript"
    # a dynamic export is checked at the example size (the one a checkpoint was trained at) and the usual ones
    sizes = tuple(dict.fromkeys([(h, w), *DEFAULT_VERIFY_SIZES])) if dynamic else ((h, w),)
    batches = (1, 2) if dynamic else (1,)
    rows: list = []
    # checked before it replaces anything: a failed check leaves an existing output as it was
    check = None if args.no_verify else (lambda new: rows.extend(
        verify_export(new, model, args.format, sizes=sizes, batch_sizes=batches, atol=args.atol)))
    try:
        path = export_model(model, out, args.format, img_size=(h, w), dynamic=args.dynamic, exporter=args.exporter,
                            opset=args.opset, overwrite=args.force, check=check)
    except ExportError as e:
        if check is not None and args.format == "onnx" and args.exporter == "dynamo" and dynamic:
            raise ExportError(f"{e}; {out} was not written (or kept as it was). The dynamo exporter of torch "
                              f"{torch.__version__} may have fixed a shape: try --exporter torchscript") from None
        raise
    size_mb = sum(p.stat().st_size for p in out.parent.glob(out.name + "*")) / 1e6
    how = f"{args.exporter} exporter, " if args.format == "onnx" else "traced, "
    print(f"wrote {path} ({args.format}, {how}{'dynamic batch/height/width' if dynamic else f'fixed {h}x{w}'}, {size_mb:.1f} MB)")
    if args.no_verify:
        return 0
    runner = "onnxruntime" if args.format == "onnx" else "torch.jit.load"
    worst = max(r["max_abs_diff"] for r in rows)
    print(f"checked with {runner} against PyTorch: max |diff| {worst:.2e} (tolerance {args.atol:g}) at "
          f"{', '.join(f'{a}x{b}' for a, b in sizes)}, batch {' and '.join(map(str, batches))}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# quantize
# ----------------------------------------------------------------------------------------------------------


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..deploy.quantize import (
        DEFAULT_KEEP_FLOAT, QuantizationError, agreement, calibration_images, export_quantized_onnx, quantize_model,
        save_quantized,
    )
    from ..inspect import preprocessing_for
    from ..utils import check_output

    for out in filter(None, (args.output, args.onnx)):  # before any work
        check_output(out, kind="file", overwrite=args.force)
    keep = DEFAULT_KEEP_FLOAT if args.keep_float is None else tuple(filter(None, map(str.strip, args.keep_float.split(","))))
    args.device, args.name = "cpu", None
    model = build_from_args(args)  # the checkpoint's own architecture
    pre = preprocessing_for(model)  # what the checkpoint was trained with
    images = calibration_images(pre, args.calibrate, num_images=args.num_images, seed=args.seed)
    q = quantize_model(model, images.split(64), keep_float=keep, source=str(args.calibrate))
    path = save_quantized(q, args.output, overwrite=args.force)
    h, w = q.img_size
    print(f"wrote {path} (int8, {h}x{w} px, any batch; calibrated on {len(images)} images of {args.calibrate}; "
          f"kept in float: {', '.join(keep) or 'only what has no int8 kernel'})")
    try:  # the next images of the same sample: none of them calibrated the model
        held = calibration_images(pre, args.calibrate, num_images=args.num_images, seed=args.seed, skip=len(images))
    except QuantizationError:
        held = None
    if held is not None:
        a = agreement(model, q, held)
        print(f"checked on {a['images']} other images of {args.calibrate}: top-1 agrees with float32 on "
              f"{100 * a['top1_agreement']:.1f} %, logit cosine >= {a['cosine_min']:.4f}, "
              f"max |diff| {a['max_abs_diff']:.3g}")
    if args.onnx:
        print(f"wrote {export_quantized_onnx(q, args.onnx, overwrite=args.force)} (ONNX, QDQ, any batch, {h}x{w} px)")
    return 0


# ----------------------------------------------------------------------------------------------------------
# bench
# ----------------------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    from ..deploy import bench
    from ..utils import atomic_json

    impls = _bench_implementations(args)
    state = bench.machine_state()
    print(f"machine: {bench.machine_line(state)}")
    print(bench.peak_line(args.device))  # a CPU's peak is measured here, before any model is built
    resized = f" resized ({' '.join(f'{k}={v}' for k, v in args.arch.items())})" if args.arch else ""
    layout = ", channels-last" if args.channels_last else ""
    print(f"model {args.model}{resized}, {args.in_chans} input channel(s), {args.num_classes} classes, "
          f"{args.img_size} px, {args.precision}, device {args.device}{layout}")
    results = []
    if args.mode in ("infer", "both"):
        results += _bench_inference(args, impls)
    if args.mode in ("train", "both"):
        results += _bench_training(args, [i for i in impls if bench.trains(i)])
    print()
    print(bench.format_table(results, machine=state, cold=args.cold))
    if args.json:
        payload = dict(machine=state, peak_flops=bench.device_peaks(args.device),
                       args={k: v for k, v in vars(args).items() if k != "func"},
                       results=[r.to_dict() for r in results])
        atomic_json(payload, args.json)
        print(f"\nwrote {args.json}")
    return 0


def bench_variants(impls: list[str], compile: bool) -> list[str]:
    """The variants to run: with `compile`, each eager implementation followed by its compiled variant."""
    from ..deploy.bench import COMPILED_SUFFIX

    out: list[str] = []
    for name in impls:
        out.append(name)
        if compile and not name.endswith(COMPILED_SUFFIX):
            out.append(name + COMPILED_SUFFIX)
    return list(dict.fromkeys(out))


def _bench_implementations(args: argparse.Namespace) -> list[str]:
    """Check the arguments (every mistake before any model is built) and return the variants to run."""
    import torch

    from ..deploy import bench
    from ..registry import get_spec

    get_spec(args.model)  # unknown names: a clear error with suggestions
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if min(args.batch_size, args.rounds, args.img_size, args.block, args.in_chans, args.num_classes) < 1 \
            or args.warmup < 0:
        raise UserError("--batch-size, --rounds, --block, --img-size, --in-chans and --num-classes must be positive "
                        "and --warmup not negative")
    args.arch = _bench_arch(args)
    args.precision = _bench_precision(args)
    if args.precision == "fp16" and args.device == "cpu":
        raise UserError("fp16 autocast is for CUDA; on CPU use --precision bf16")
    if args.json and Path(args.json).exists() and Path(args.json).is_dir():
        raise UserError(f"--json {args.json} is a folder; give a file path")
    if args.threads:
        torch.set_num_threads(args.threads)
    impls = list(bench.IMPLEMENTATIONS) if args.compare else (args.impl or _default_implementations(args.arch))
    for name in impls:
        bench.split_variant(name)  # an unknown name: a BenchError (one line at the CLI) listing the known ones
    if args.arch:
        bench.refuse_fixed_architectures(impls)  # timm's, HF's, ... models cannot be resized: one line naming them
    return bench_variants(impls, args.compile)


def _default_implementations(arch: dict) -> list[str]:
    """ours, ours-fused and timm; with --arch only ours and ours-fused (timm's model cannot be resized)."""
    from ..deploy import bench

    return [name for name in ("ours", "ours-fused", "timm") if not arch or name in bench.arch_takers()]


def _bench_arch(args: argparse.Namespace) -> dict:
    """--arch KEY=VALUE read and checked as `focalnet train --arch` reads them (the same parser and rules), the
    variant's per-stage lists (focal levels, windows) fitted to the stages given, as training fits them."""
    if not args.arch:
        return {}
    from ..registry import fit_stage_lists
    from ..train.config import validate_arch
    from .common import parse_kv

    arch = parse_kv(args.arch)
    for key in ("in_chans", "num_classes"):
        if key in arch:
            raise UserError(f"--arch {key}={arch[key]}: give --{key.replace('_', '-')} {arch[key]} instead")
    validate_arch(arch)
    return fit_stage_lists(args.model, arch)


def _bench_precision(args: argparse.Namespace) -> str:
    """--precision in the project's spelling; --dtype (and old spellings of --precision) still read, with a note."""
    from ..precision import old_spelling_note, precision_name

    if args.precision is not None and args.dtype is not None and \
            precision_name(args.precision) != precision_name(args.dtype):
        raise UserError(f"--precision {args.precision} and --dtype {args.dtype} disagree; give --precision only")
    given, flag = (args.precision, "--precision") if args.precision is not None else (args.dtype, "--dtype")
    if given is None:
        return "fp32"
    note = old_spelling_note(given) if flag == "--precision" else f"note: --dtype is now --precision {precision_name(given)}"
    if note:
        print(note, file=sys.stderr)
    return precision_name(given)


def _workload(args: argparse.Namespace, batch_size: int):
    from ..deploy.bench import Workload

    return Workload(variant=args.model, batch_size=batch_size, img_size=args.img_size, precision=args.precision,
                    device=args.device, channels_last=args.channels_last, arch=args.arch, in_chans=args.in_chans,
                    num_classes=args.num_classes)


def _bench_inference(args: argparse.Namespace, impls: list[str]) -> list:
    from ..deploy import bench

    results = []
    batches = ([1] if args.latency else []) + [args.batch_size]
    for b in dict.fromkeys(batches):
        results += bench.run_inference(impls, _workload(args, b), warmup=args.warmup, rounds=args.rounds,
                                       block=args.block, freezing=not args.no_freezing, log=print)
    return results


def _bench_training(args: argparse.Namespace, impls: list[str]) -> list:
    from ..deploy import bench

    work = _workload(args, args.batch_size)
    results = bench.run_training(impls, work, recompute=not args.no_recompute, warmup=min(args.warmup, 2),
                                 rounds=args.rounds, block=args.block, log=print)
    if args.peak_memory:
        for r in results:
            print(f"peak memory of {r.label} (fresh process) ...")
            r.peak_bytes = bench.peak_training_memory(r.label, work, recompute=not args.no_recompute)
    return results
