"""`focalnet list`, `focalnet info CHECKPOINT`, `focalnet convert IN OUT --to FORMAT`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the registered models with their published numbers")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. '*iso*'")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="what a checkpoint holds: layout, variant, classes, parameters")
    p.add_argument("checkpoint", help="a checkpoint file or folder in any supported layout")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a checkpoint between the focalnet, official, timm and hf layouts")
    p.add_argument("input", help="a checkpoint file or folder in any supported layout")
    p.add_argument("output", help="where to write (.safetensors for focalnet, .pth for official, a folder for hf/timm)")
    p.add_argument("--to", required=True, choices=("focalnet", "official", "timm", "hf"), help="layout to write")
    p.add_argument("--model", default=None, help="registered variant, when the file's architecture is ambiguous")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=cmd_convert)


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import get_spec, list_models

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no registered model matches {args.pattern!r}; `focalnet list` shows them all")
    rows = []
    for name in names:
        spec = get_spec(name)
        pub = spec.published
        rows.append(dict(
            name=name, family=spec.family, params_m=pub.params_m, gmacs=pub.gmacs, top1=pub.top1,
            img_size=pub.img_size, num_classes=pub.num_classes,
            weights=[s for s in ("official", "timm", "hf") if getattr(spec.weights, s)],
        ))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = "{:<22} {:<12} {:>9} {:>7} {:>6} {:>5} {:>7}  {}"
    print(fmt.format("model", "family", "params M", "GMACs", "top-1", "px", "classes", "weights"))
    for r in rows:
        print(fmt.format(
            r["name"], r["family"], _num(r["params_m"]), _num(r["gmacs"]), _num(r["top1"]), r["img_size"],
            r["num_classes"], ",".join(r["weights"]) or "-",
        ))
    return 0


def _num(v) -> str:
    return "-" if v is None else f"{v:g}"


def cmd_info(args: argparse.Namespace) -> int:
    from ..checkpoints import read_checkpoint
    from ..factory import resolve_variant

    ckpt = read_checkpoint(args.checkpoint)
    variant, arch = resolve_variant(ckpt)
    info = dict(
        path=str(args.checkpoint), format=ckpt.source_format, variant=variant, family=ckpt.family,
        num_classes=ckpt.num_classes, in_chans=ckpt.in_chans, num_params=ckpt.num_params,
        class_names=(ckpt.class_names[:5] + ["..."]) if ckpt.class_names and len(ckpt.class_names) > 5 else ckpt.class_names,
        arch=arch,
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint   {info['path']}")
    print(f"format       {info['format']}")
    print(f"variant      {variant or 'custom (no registered variant has these shapes)'}")
    print(f"family       {ckpt.family}")
    print(f"classes      {ckpt.num_classes}" + (" (authors' reordered ImageNet-22K)" if ckpt.num_classes == 21842 else ""))
    print(f"in_chans     {ckpt.in_chans}")
    print(f"parameters   {ckpt.num_params:,} ({ckpt.num_params / 1e6:.2f} M)")
    if ckpt.class_names:
        print(f"class names  {', '.join(map(str, info['class_names']))}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoints import read_checkpoint, write_checkpoint
    from ..factory import resolve_variant
    from ..registry import get_spec

    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    if out.resolve() == Path(args.input).resolve():
        raise UserError("the output would overwrite the input; choose another output path")
    ckpt = read_checkpoint(args.input)
    if args.model:
        variant = args.model
        arch = {**get_spec(args.model).arch, "num_classes": ckpt.num_classes, "in_chans": ckpt.in_chans}
    else:
        variant, arch = resolve_variant(ckpt)
    write_checkpoint(ckpt.state_dict, arch, out, fmt=args.to, variant=variant, class_names=ckpt.class_names,
                     preprocessing=ckpt.preprocessing if args.to == "focalnet" else None)
    print(f"wrote {out} ({args.to} layout, {variant or 'custom architecture'}, {ckpt.num_classes} classes)")
    return 0
