"""`focalnet visualize`, `focalnet profile`, `focalnet predict`: thin over focalnet.inspect,
focalnet.inspect.complexity and focalnet.inspect.predict. (`focalnet export` is in cli/deploy.py.)"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional

from . import UserError
from .common import build_from_args, parse_hw, add_model_args, user_errors

log = logging.getLogger("focalnet")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="pictures of gates, modulators and depthwise kernels for images")
    p.add_argument("images", nargs="+", help="image files (any size; JPEG, PNG, ...)")
    add_model_args(p)
    p.add_argument("--blocks", nargs="+", default=None,
                   help="blocks to show: 'last' (default: last block of every stage), 'all', STAGE.BLOCK "
                        "(e.g. 3.1, 2.-1, 2.*) or BLOCK for isotropic models")
    p.add_argument("--out", required=True, help="folder for <image>_modulation.png, kernels.png, pictures.json")
    p.add_argument("--img-size", type=int, default=None, help="resize the shorter side to this (default: the size a "
                   "--checkpoint was trained at, else as is)")
    p.add_argument("--panel", type=int, default=224, help="longer side of each panel in pixels (default 224)")
    p.add_argument("--no-kernels", action="store_true", help="skip the picture of the depthwise kernels")
    p.add_argument("--force", action="store_true", help="overwrite existing pictures")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("profile", help="parameters, MACs (measured and by the paper's formula), memory, receptive fields")
    p.add_argument("name", nargs="?", default=None,
                   help="registered model name, or a checkpoint file/folder (with --all: a pattern, e.g. '*tiny*')")
    p.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="PX", help="H [W] (default 224)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the activation memory (default 1)")
    p.add_argument("--num-classes", type=int, default=None, help="head size (default: 1000, as the paper counts)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--all", action="store_true", help="every registered variant beside its published numbers")
    p.add_argument("--sweep", action="store_true",
                   help="cost and time vs image size: FocalNet vs timm's Swin (window) and ViT (global attention)")
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512, 768, 1024], help="sweep sizes (px, square)")
    p.add_argument("--models", nargs="+", default=None,
                   help="sweep models (default: focalnet_tiny_srf swin_tiny_patch4_window7_224 vit_small_patch16_224)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per model and size (median reported)")
    p.add_argument("--out", default="profile_sweep", help="folder for sweep.csv and sweep.png")
    p.add_argument("--force", action="store_true", help="overwrite an existing sweep.csv / sweep.png")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("predict", help="top-k classes with probabilities for images")
    p.add_argument("images", nargs="+", help="image files")
    add_model_args(p)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--img-size", type=int, default=None, help="crop size (default: the variant's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)


@user_errors
def cmd_visualize(args: argparse.Namespace) -> int:
    from ..inspect import resolve_blocks, write_pictures

    model = build_from_args(args)
    resolve_blocks(model, args.blocks)  # a wrong block fails before any image is read
    img_size = args.img_size
    if img_size is None and args.checkpoint:
        # a trained model sees images at the size it was trained at (model.safetensors carries it): a 28 px
        # model shown a photo at 1000 px would picture a scale it never saw
        img_size = (getattr(model, "preprocessing", None) or {}).get("img_size")
        if img_size:
            print(f"input: shorter side resized to {img_size} px, as the checkpoint was trained (--img-size to change)")
    paths = write_pictures(
        model, args.images, args.out, blocks=args.blocks, img_size=img_size, panel=args.panel,
        kernels=not args.no_kernels, overwrite=args.force,
    )
    for p in paths:
        print(f"wrote {p}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# profile
# ----------------------------------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _g(n: float) -> str:
    return f"{n / 1e9:.3f} G"


def _meta_model(name: str, num_classes: Optional[int]):
    import torch

    from ..checkpoints.io import read_checkpoint
    from ..inspect.complexity import meta_from_arch
    from ..factory import resolve_variant
    from ..registry import build_model, list_models

    if name in list_models():
        with torch.device("meta"):
            model = build_model(name, num_classes=1000 if num_classes is None else num_classes)
        return model, name
    if Path(name).exists():
        ckpt = read_checkpoint(name)
        variant, arch = resolve_variant(ckpt)
        if num_classes is not None:
            arch = {**arch, "num_classes": num_classes}
        return meta_from_arch(arch), variant or name
    from ..registry import get_spec

    get_spec(name)  # raises the registry's "unknown model ... did you mean" error
    raise UserError(f"unknown model {name!r}")


@user_errors
def cmd_profile(args: argparse.Namespace) -> int:
    if args.sweep:
        return _profile_sweep(args)
    if args.all:
        return _profile_all(args)
    if not args.name:
        raise UserError("name a model (`focalnet list` shows them), or pass --all or --sweep")
    from ..inspect.complexity import profile_model
    from ..registry import get_spec, list_models

    h, w = parse_hw(args.img_size)
    model, label = _meta_model(args.name, args.num_classes)
    prof = profile_model(model, (h, w), batch_size=args.batch_size)
    prof["variant"] = label
    pub = get_spec(label).published if label in list_models() else None
    if pub is not None:
        prof["published"] = dict(params_m=pub.params_m, gmacs=pub.gmacs, top1=pub.top1, img_size=pub.img_size)
    if args.json:
        print(json.dumps(prof, indent=2))
        return 0
    print(f"{label} at {h}x{w} px, batch {args.batch_size}, {model.arch.get('num_classes')}-class head")
    pub_p = f"   (published {pub.params_m:g} M)" if pub and pub.params_m else ""
    print(f"  parameters       {prof['params']:,} ({prof['params'] / 1e6:.2f} M){pub_p}")
    pub_g = f"   (published {pub.gmacs:g} G at 224 px)" if pub and pub.gmacs else ""
    print(f"  MACs measured    {_g(prof['macs_measured'])}  FlopCounterMode: convolutions and matmuls{pub_g}")
    print(f"  MACs by formula  {_g(prof['macs_formula'])}  paper's block term + proj + MLP + stem/downsampling/head"
          f" = measured + {_g(prof['macs_elementwise'])} element-wise (gated sum, q*M)")
    print(f"  activations      {_mib(prof['saved_bytes'])} saved for backward (training-mode forward), "
          f"{_mib(prof['peak_live_bytes'])} peak live (inference forward); ATen-level tensors, parameters excluded")
    print()
    print(f"  {'stage':<6}{'map':>9}{'C':>6}{'L':>3}  {'kernels':<10}{'blocks':>6}{'mod/blk':>11}{'proj/blk':>11}"
          f"{'MLP/blk':>11}{'stage total':>13}{'measured':>12}")
    for s in prof["stages"]:
        print(f"  {s['stage']:<6}{s['height']:>4}x{s['width']:<4}{s['dim']:>6}{s['focal_level']:>3}  "
              f"{','.join(map(str, s['kernel_sizes'])):<10}{s['depth']:>6}{_g(s['modulation']):>11}{_g(s['proj']):>11}"
              f"{_g(s['mlp']):>11}{_g(s['total']):>13}{_g(s['measured']):>12}")
    print(f"  {'head':<6}{'':>9}{'':>6}{'':>3}  {'':<10}{'':>6}{'':>11}{'':>11}{'':>11}{_g(prof['head_macs']):>13}")
    print("  (mod/blk: HW(3C^2 + C(2L+3) + C sum k^2); stage total includes the stem or downsampling conv;")
    print("   measured = FlopCounterMode, which does not see the element-wise HW C(L+2) per block)")
    print()
    print("  receptive field of each focal level")
    print(f"  {'stage':<6}{'level':>6}{'kernel':>8}{'map px':>8}{'input px':>10}{'theoretical px':>16}")
    for r in prof["receptive_fields"]:
        k = "-" if r["kernel"] is None else r["kernel"]
        print(f"  {r['stage']:<6}{r['level']:>6}{k:>8}{r['rf_map_px']:>8}{r['span_px']:>10}{r['theoretical_px']:>16}")
    print("  (map px: r_l = 1 + sum (k_i - 1); input px: r_l x stride; theoretical: through the stem, earlier")
    print("   blocks and downsampling, in the stage's last block; the last level is the global context)")
    return 0


def _num(v) -> str:
    return "-" if v is None else f"{v:g}"


def _profile_all(args: argparse.Namespace) -> int:
    from ..inspect.complexity import published_table

    h, w = parse_hw(args.img_size)
    if h != w:
        raise UserError("--all compares with the paper's square 224 px numbers; pass one size")
    rows = published_table(h, num_classes=1000 if args.num_classes is None else args.num_classes, pattern=args.name)
    if not rows:
        raise UserError(f"no registered model matches {args.name!r}; `focalnet list` shows them all")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"every variant at {h} px with a 1000-class head (as the paper counts); measured on the meta device")
    print(f"{'model':<22}{'params M':>10}{'published':>11}{'GMACs':>9}{'formula':>9}{'published':>11}{'top-1':>7}{'weights px':>12}")
    for r in rows:
        print(f"{r['name']:<22}{r['params_m']:>10.2f}{_num(r['params_m_published']):>11}{r['gmacs']:>9.2f}"
              f"{r['gmacs_formula']:>9.2f}{_num(r['gmacs_published']):>11}{_num(r['top1_published']):>7}{r['weights_img_size']:>12}")
    print("(GMACs: FlopCounterMode; formula: the paper's per-block term + proj + MLP + stem/downsampling/head,")
    print(" which also counts the element-wise gated sum; published: the paper's table, multiply-adds)")
    return 0


def _profile_sweep(args: argparse.Namespace) -> int:
    import torch

    from ..inspect.complexity import DEFAULT_SWEEP_MODELS, scaling_sweep, sweep_model, write_sweep

    if any(s < 32 or s % 32 for s in args.sizes):
        raise UserError("sweep sizes must be multiples of 32 (timm's Swin and ViT need whole patches and windows)")
    models = [sweep_model(m) for m in args.models] if args.models else list(DEFAULT_SWEEP_MODELS)
    out = Path(args.out)
    for f in ("sweep.csv", "sweep.png"):
        if (out / f).exists() and not args.force:
            raise UserError(f"{out / f} exists; pass --force to overwrite it or choose another --out")
    print(f"sweep: {', '.join(m.name for m in models)} at {', '.join(map(str, args.sizes))} px, batch 1, "
          f"{args.repeats} timed calls each (median), {torch.get_num_threads()} threads")
    rows = scaling_sweep(args.sizes, models, repeats=args.repeats, progress=print)
    csv_path, png_path = write_sweep(rows, out, overwrite=args.force)
    if args.json:
        print(json.dumps(rows, indent=2))
    print(f"wrote {csv_path}\nwrote {png_path}")
    return 0


# ----------------------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------------------


@user_errors
def cmd_predict(args: argparse.Namespace) -> int:
    from ..inspect.predict import class_names_for, predict, preprocessing_for
    from ..registry import describe_arch

    if args.topk < 1:
        raise UserError("--topk must be at least 1")
    model = build_from_args(args, need_weights=True)
    results = predict(model, args.images, topk=args.topk, img_size=args.img_size)
    names = class_names_for(model)
    pre = preprocessing_for(model, args.img_size)
    if args.json:
        print(json.dumps(dict(
            model=describe_arch(model), labels=names.source, num_classes=len(names),
            input_size=pre.img_size, predictions=[r.to_dict() for r in results],
        ), indent=2))
        return 0
    print(f"labels: {names.source}; input {pre.img_size} px (resize {int(pre.img_size / pre.crop_pct)}, "
          f"{pre.interpolation}, center crop)")
    for r in results:
        print(r.image)
        for t in r.top:
            note = f"  [{t['note']}]" if "note" in t else ""
            print(f"  {t['rank']:>2}. {100 * t['probability']:6.2f}%  {t['label']} ({t['index']}){note}")
    return 0
