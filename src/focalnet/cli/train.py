"""`focalnet train`, `focalnet eval` and `focalnet report`: thin over focalnet.train's train and
evaluate_checkpoint, and focalnet.inspect's write_run_report (the report observes a finished run).

Every field of TrainConfig is a flag (underscores become dashes) and a key of the YAML file given with
-c/--config; flags win over the file, the file over the defaults. The same command runs under
`torchrun --nproc_per_node N` (DistributedDataParallel; RANK / LOCAL_RANK / WORLD_SIZE come from the
environment, there is no --local_rank flag).
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from typing import Any

from . import HelpFormatter, UserError
from .common import parse_kv
from ..safeio import printable


def _base_type(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _add_precision(p: argparse.ArgumentParser, *, choices: tuple = (), help_: str = "") -> None:
    """--precision fp32|bf16|fp16 (train: its TrainConfig field's choices and help, auto included), and the old
    --amp none|bf16|fp16 still read (with a note: _precision_given)."""
    from ..precision import PRECISIONS

    p.add_argument("--precision", default=None, choices=choices or PRECISIONS, help=help_ or (
        "fp32 (the default), bf16 (autocast; CPU and GPU) or fp16 (autocast with a GradScaler; GPU)"))
    p.add_argument("--amp", default=None, help=argparse.SUPPRESS)  # the old spelling


def _precision_given(args: argparse.Namespace) -> Any:
    """The precision the command line asks for: --precision, else the old --amp (said in a note), else None."""
    from ..precision import precision_name

    if args.amp is None:
        return args.precision
    try:
        name = precision_name(args.amp)
    except ValueError as e:
        raise UserError(f"--amp: {e}") from None
    if args.precision is not None and args.precision != name:
        raise UserError(f"--amp {args.amp} and --precision {args.precision} disagree: give only --precision")
    print(f"note: --amp {args.amp} is now spelled --precision {name}", file=sys.stderr)
    return name


def register(sub: argparse._SubParsersAction) -> None:
    from ..train import TrainConfig, config_field_types

    p = sub.add_parser(
        "train",
        help="train or fine-tune a FocalNet (Fashion-MNIST, digits or an image folder); also under torchrun",
        description="Train or fine-tune a FocalNet. Writes config.yaml, metrics.jsonl, summary.json, curves.png, "
        "confusion.png, model.safetensors and checkpoints/ into --output. Example: focalnet train --data fashion-mnist "
        "--arch embed_dim=32 depths=[2,2,2] patch_size=2 --time-budget 600 --output runs/fmnist",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-c", "--config", default=None, help="YAML file whose keys are these flags (dashes or underscores)")
    types = config_field_types()
    defaults = TrainConfig()
    for f in TrainConfig.fields():
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = getattr(defaults, f.name)
        if default not in (None, {}, []) and not f.metadata.get("recipe"):
            help_ += f" (default: {default})"
        tp = _base_type(types[f.name])
        if f.name == "precision":
            _add_precision(p, choices=f.metadata["choices"](), help_=help_)
        elif tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.name == "arch":
            p.add_argument(flag, nargs="*", default=None, metavar="KEY=VALUE", help=help_)
        elif tp is list:  # a recipe's tuple (betas): numbers
            p.add_argument(flag, nargs="+", type=float, default=None, help=help_)
        else:
            p.add_argument(flag, type=tp if tp in (int, float) else str, default=None, help=help_)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="top-1/top-5 and per-class accuracy of a checkpoint (any layout) on a data set, with its confusion matrix",
        formatter_class=HelpFormatter,
    )
    p.add_argument("checkpoint", help="a checkpoint in any supported layout, or a training run's checkpoints/*.pth")
    p.add_argument("--data", required=True, help="'fashion-mnist', 'digits', or a folder with val/CLASS/*.jpg (and train/)")
    p.add_argument("--model", default=None, help="registered variant, when the file does not say its architecture")
    p.add_argument("--data-dir", default=None, help="where Fashion-MNIST's IDX files are")
    p.add_argument("--img-size", type=int, default=None, help="evaluation size (default: the run's, else 224 for folders)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="center-crop ratio: resize to img_size / crop_pct (bicubic), then crop (default: the variant's, 0.875)")
    p.add_argument("--interpolation", default=None, help="resize interpolation (default bicubic)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0)
    _add_precision(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (counted) instead of stopping")
    p.add_argument("--output", default=None, help="folder for eval.json, confusion.png and confusion.csv")
    p.add_argument("--force", action="store_true", help="replace the eval.json of an earlier evaluation in --output")
    p.add_argument("--progress", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "report",
        help="report.md and modulation pictures of test images for a finished training run",
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", help="the output folder of `focalnet train`")
    p.add_argument("--pictures", type=int, default=4, help="test images to picture, one per class (0: none)")
    p.add_argument("--force", action="store_true", help="overwrite an existing report.md and pictures/")
    p.set_defaults(func=cmd_report)


def config_from_args(args: argparse.Namespace) -> Any:
    """TrainConfig from defaults < YAML file < flags given on the command line."""
    from ..precision import precision_name
    from ..train import TrainConfig, TrainingError, load_yaml_config

    values: dict = {}
    if args.config:
        values.update({k.replace("-", "_"): v for k, v in load_yaml_config(args.config).items()})
        if "amp" in values:
            print(f"note: the key amp: {values['amp']} of {args.config} is now spelled precision: "
                  f"{precision_name(values['amp'])}", file=sys.stderr)
    args.precision = _precision_given(args)
    for f in TrainConfig.fields():
        given = getattr(args, f.name, None)
        if given is None:
            continue
        if f.name == "arch":
            given = {**(values.get("arch") or {}), **parse_kv(given)}
        values[f.name] = given
    try:
        return TrainConfig.from_dict(values)
    except TypeError as e:
        raise TrainingError(f"bad configuration: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import CheckpointSaveError, NonFiniteLossError, train

    cfg = config_from_args(args)
    try:
        train(cfg)
    except (NonFiniteLossError, CheckpointSaveError) as e:
        raise UserError(str(e.args[-1] if isinstance(e, OSError) and len(e.args) > 1 else e)) from None
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..train import evaluate_checkpoint, per_class_table

    r = evaluate_checkpoint(
        args.checkpoint, args.data, model_name=args.model, data_dir=args.data_dir, img_size=args.img_size,
        crop_pct=args.crop_pct, interpolation=args.interpolation, batch_size=args.batch_size, workers=args.workers,
        amp=_precision_given(args) or "fp32", device=args.device, use_ema=args.ema, limit=args.limit, skip_bad_images=args.skip_bad_images,
        output=args.output, progress=args.progress, overwrite=args.force,
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"{r['model']} ({r['weights']} weights, {r['num_params'] / 1e6:.2f} M parameters) on {r['data']} "
          f"{r['split']}: {r['images']} images at {r['img_size']} px"
          + (f", {r['interpolation']} resize to {r['img_size']}/{r['crop_pct']} and center crop" if r.get("kind") == "folder" else "") + f"; head: {r['head']}")
    print(f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    if r.get("bad_images"):
        print(f"{r['bad_images']} unreadable images skipped")
    if len(r["class_names"]) <= 100:
        print(per_class_table([printable(n) for n in r["class_names"]], r["per_class"], r["confusion"]))
    if args.output:
        print(f"wrote {args.output}/eval.json, confusion.png, confusion.csv")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..inspect import RunReportError, write_run_report

    if args.pictures < 0:
        raise UserError(f"--pictures must be 0 or more, got {args.pictures}")
    try:
        path = write_run_report(args.run, num_pictures=args.pictures, overwrite=args.force)
    except FileExistsError as e:
        raise UserError(f"{e}".replace("overwrite=True (CLI: --force)", "--force")) from None
    except RunReportError as e:
        raise UserError(str(e)) from None
    print(f"wrote {path}" + (f" and {path.parent / 'pictures'}/" if args.pictures else ""))
    return 0
