"""Helpers shared by the command modules: building a model from --model/--checkpoint, image sizes, and turning
the errors a user can fix (an existing file, a missing optional package, out of memory) into one line."""
from __future__ import annotations

import argparse
import functools
import logging
from typing import Callable

from ..errors import FocalNetError
from . import UserError

log = logging.getLogger("focalnet")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="registered model name (optional with --checkpoint)")
    p.add_argument("--checkpoint", default=None, help="weights in any supported layout")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")


def user_errors(fn: Callable) -> Callable:
    """Turn the errors a user can fix into one line (the CLI's UserError), never a traceback."""

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        import torch

        try:
            return fn(args)
        except FocalNetError:  # already one line with what to do (OutputExistsError says --force itself)
            raise
        except FileExistsError as e:
            raise UserError(f"{e.args[0] if e.args else e}; pass --force to overwrite") from None
        except ModuleNotFoundError as e:
            if (e.name or "").split(".")[0] == "focalnet":  # our own module missing: a bug, keep the traceback
                raise
            raise UserError(f"{e}; install the extra that provides it (pip install 'focalnet[all]')") from None
        except (torch.OutOfMemoryError, MemoryError) as e:
            raise UserError(f"out of memory ({type(e).__name__}); use smaller images (--img-size) or a smaller batch") from None

    return wrapper


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
    device = getattr(args, "device", "cpu")
    try:
        model = model.to(torch.device(device))
    except (RuntimeError, AssertionError) as e:
        raise UserError(f"cannot use device {device!r}: {e}") from None
    return model.eval()


def parse_hw(values: list[int], flag: str = "--img-size") -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) < 1:
        raise UserError(f"{flag} takes one or two positive sizes (H [W]), got {' '.join(map(str, values))}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


# ----------------------------------------------------------------------------------------------------------
# visualize
# ----------------------------------------------------------------------------------------------------------
