"""The `focalnet` command line: a thin layer over the library, one module per group of commands.

Each module in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands and sets
`func` on each; heavy imports happen inside the commands, so that `focalnet list` starts fast.
Errors: a `focalnet.errors.FocalNetError` (any project error type) is printed as one line and exits with
status 2; any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

from ..errors import FocalNetError

COMMAND_MODULES = ("models", "train", "inspect", "dense", "deploy")


class UserError(FocalNetError):
    """An error the user can fix; printed as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="focalnet",
        description="Focal Modulation Networks: models, checkpoints, training, pictures, export.",
    )
    parser.add_argument("--version", action="version", version=f"focalnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except FocalNetError as e:
        # the project's own errors carry a message for a person; any other exception is a bug and keeps
        # its traceback
        if args.verbose:
            raise
        print(f"focalnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"focalnet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
