"""Helpers shared by the command modules: building a model from --model/--checkpoint, and image sizes.
(Which errors become one line is decided once, for every command, in `focalnet.cli.main`.)"""
from __future__ import annotations

import argparse
import logging

from . import UserError

log = logging.getLogger("focalnet")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered model name (optional with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="weights in any supported layout")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")


def build_from_args(args: argparse.Namespace, need_weights: bool = False):
    import torch

    from .. import create_model, load_model

    name, ckpt = getattr(args, "model", None) or getattr(args, "name", None), args.checkpoint
    if ckpt:
        model = create_model(name, pretrained=ckpt) if name else load_model(ckpt)
    elif name:
        if need_weights:
            log.info("no --checkpoint: downloading the released weights of %s", name)
            model = create_model(name, pretrained=True)
        else:
            log.warning("no --checkpoint: %s has random weights", name)
            model = create_model(name)
    else:
        raise UserError("pass --model NAME, --checkpoint PATH, or both")
    from ..utils import check_device

    device = getattr(args, "device", "cpu")
    try:
        model = model.to(check_device(device))  # a device this machine has, else one escaped line
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"cannot use device {device!r}: {e}") from None
    return model.eval()


def parse_hw(values: list[int], flag: str = "--img-size") -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) < 1:
        raise UserError(f"{flag} takes one or two positive sizes (H [W]), got {' '.join(map(str, values))}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def parse_kv(items: list[str]) -> dict:
    """--arch KEY=VALUE ... as a dict, each value read as YAML (depths=[2,2,2] is a list)."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--arch takes KEY=VALUE pairs (e.g. embed_dim=32 depths=[2,2,2]), got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise UserError(f"--arch {item!r}: cannot read {value!r} ({e})") from None
    return out
