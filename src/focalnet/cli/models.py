"""`focalnet list`, `focalnet info CHECKPOINT`, `focalnet convert IN OUT --to FORMAT`."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from . import UserError
from ..safeio import printable


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

    p = sub.add_parser("verify", help="check a file's tensors and outputs against the record it was written with")
    p.add_argument("checkpoint", help="a file or folder written by focalnet (any layout), or hf-hub:ORG/REPO")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("push", help="publish a model to the Hugging Face hub (transformers' and timm's files, model card)")
    p.add_argument("source", help="a training run's folder (focalnet train --output) or a checkpoint in any layout")
    p.add_argument("repo_id", help="the hub repo, ORG/NAME (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--folder", default=None, metavar="DIR",
                   help="only write what would be uploaded into DIR (no upload; check it, then push)")
    p.set_defaults(func=cmd_push)


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

    from ..registry import describe_arch

    ckpt = read_checkpoint(args.checkpoint)
    variant, arch = resolve_variant(ckpt)
    info = dict(
        path=str(args.checkpoint), format=ckpt.source_format, variant=variant,
        # a resized model is not the variant it was built from: "custom, from VARIANT: what differs"
        architecture=describe_arch(arch, variant), family=ckpt.family,
        num_classes=ckpt.num_classes, in_chans=ckpt.in_chans, num_params=ckpt.num_params,
        class_names=(ckpt.class_names[:5] + ["..."]) if ckpt.class_names and len(ckpt.class_names) > 5 else ckpt.class_names,
        arch=arch,
    )
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"checkpoint   {info['path']}")
    print(f"format       {info['format']}")
    print(f"architecture {info['architecture']}")
    print(f"family       {ckpt.family}")
    print(f"classes      {ckpt.num_classes}" + (" (authors' reordered ImageNet-22K)" if ckpt.num_classes == 21842 else ""))
    print(f"in_chans     {ckpt.in_chans}")
    print(f"parameters   {ckpt.num_params:,} ({ckpt.num_params / 1e6:.2f} M)")
    if ckpt.class_names:
        print(f"class names  {', '.join(map(printable, info['class_names']))}")  # text from a file: escaped
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..checkpoints import read_checkpoint, write_checkpoint
    from ..factory import resolve_variant
    from ..registry import describe_arch, get_spec
    from ..utils import check_output

    out = Path(args.output)
    # before reading anything: an existing output needs --force, and a file never replaces a folder (or back)
    folder = args.to == "hf" or (args.to == "timm" and out.suffix not in (".safetensors", ".pth", ".pt", ".bin"))
    try:
        check_output(out, kind="folder" if folder else "file", overwrite=args.force)
    except FileExistsError:
        raise UserError(f"{out} exists; pass --force to overwrite it") from None
    if os.path.realpath(out) == os.path.realpath(args.input):  # realpath: a symlink loop is not an error here
        raise UserError("the output would overwrite the input; choose another output path")
    ckpt = read_checkpoint(args.input)
    if args.model:
        variant = args.model
        arch = {**get_spec(args.model).arch, "num_classes": ckpt.num_classes, "in_chans": ckpt.in_chans}
    else:
        variant, arch = resolve_variant(ckpt)
    write_checkpoint(ckpt.state_dict, arch, out, fmt=args.to, variant=variant, class_names=ckpt.class_names,
                     preprocessing=ckpt.preprocessing)
    gray_as_rgb = ""
    if args.to == "hf" and arch.get("in_chans") == 1:  # what transformers' folder of a grayscale model is
        gray_as_rgb = " (takes RGB: the grayscale conversion is in its stem)"
    print(f"wrote {out} ({args.to} layout, {describe_arch(arch, variant)}, {ckpt.num_classes} classes){gray_as_rgb}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..factory import verify

    v = verify(args.checkpoint)
    if args.json:
        print(json.dumps(v.to_dict(), indent=2))
        return 0 if v.ok else 1

    def said(ok, yes: str, no: str) -> str:
        return "not checked (no record)" if ok is None else (yes if ok else no)

    print(f"checkpoint   {v.path}")
    print(f"fingerprint  {v.fingerprint}")
    if v.release:
        print(f"release      {v.release} (sha256 matches the registry)")
    print(f"tensors      {said(v.fingerprint_ok, 'as written', 'CHANGED since written')}")
    if v.flags_ok is not None:
        print(f"flags        {'config and record agree' if v.flags_ok else 'config and record DISAGREE'}")
    diff = f" (max |diff| {v.max_abs_diff:.2e})" if v.max_abs_diff is not None else ""
    print(f"outputs      {said(v.outputs_ok, 'this library reproduces them', 'this library does NOT reproduce them')}{diff}")
    for line in v.diagnosis:
        print(f"  - {line}")
    print("OK: file, flags and library agree" if v.ok and v.has_record else ("MISMATCH" if not v.ok else "no record to check"))
    return 0 if v.ok else 1


def cmd_push(args: argparse.Namespace) -> int:
    from .. import load_model
    from ..hub import build_hub_folder, push_to_hub

    source = Path(args.source)
    run_dir = source if (source / "summary.json").exists() and (source / "model.safetensors").exists() else None
    model = load_model(source / "model.safetensors" if run_dir else args.source)
    if args.folder:
        out = build_hub_folder(model, args.folder, run_dir=run_dir, repo_id=args.repo_id)
        print(f"wrote {out} (not uploaded): " + ", ".join(sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())))
        return 0
    url = push_to_hub(model, args.repo_id, run_dir=run_dir, private=args.private)
    print(f"pushed to https://huggingface.co/{args.repo_id} ({url})")
    return 0
