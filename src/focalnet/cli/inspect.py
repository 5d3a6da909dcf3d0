"""`focalnet visualize`, `focalnet profile`, `focalnet predict`: thin over focalnet.inspect,
focalnet.inspect.complexity and focalnet.inspect.predict. (`focalnet export` is in cli/deploy.py.)"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Optional

from . import UserError
from ..safeio import printable
from .common import build_from_args, parse_hw, add_model_args

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


def cmd_profile(args: argparse.Namespace) -> int:
    if args.sweep:
        return _profile_sweep(args)
    if args.all:
        return _profile_all(args)
    if not args.name:
        raise UserError("name a model (`focalnet list` shows them), or pass --all or --sweep")
    from ..inspect.complexity import profile_lines, profile_model, published_figures

    h, w = parse_hw(args.img_size)
    model, label = _meta_model(args.name, args.num_classes)
    prof = profile_model(model, (h, w), batch_size=args.batch_size)
    prof["variant"] = label
    if published_figures(label) is not None:
        prof["published"] = published_figures(label)
    if args.json:
        print(json.dumps(prof, indent=2))
        return 0
    print("\n".join(profile_lines(prof, num_classes=model.arch.get("num_classes"))))
    return 0


def _profile_all(args: argparse.Namespace) -> int:
    from ..inspect.complexity import published_lines, published_table

    h, w = parse_hw(args.img_size)
    if h != w:
        raise UserError("--all compares with the paper's square 224 px numbers; pass one size")
    rows = published_table(h, num_classes=1000 if args.num_classes is None else args.num_classes, pattern=args.name)
    if not rows:
        raise UserError(f"no registered model matches {args.name!r}; `focalnet list` shows them all")
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("\n".join(published_lines(rows, h)))
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
            print(f"  {t['rank']:>2}. {100 * t['probability']:6.2f}%  {printable(t['label'])} ({t['index']}){note}")
    return 0
