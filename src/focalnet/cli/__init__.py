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
import re
import sys
from typing import Optional, Sequence

from ..errors import FocalNetError

COMMAND_MODULES = ("models", "train", "inspect", "dense", "deploy")


class UserError(FocalNetError):
    """An error the user can fix; printed as one line, without a traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' once: not for flags without a default (None, False, SUPPRESS), nor where the
    help text already states its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # a literal '%' in a help text ('90 % of ...') would break argparse's %-formatting of the help
        text = re.sub(r"%(?!\()", "%%", action.help or "")
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def configure_logging(verbose: bool) -> None:
    """The CLI decides what is shown: the `focalnet` logger's messages (INFO, DEBUG with -v), as plain lines.

    Other libraries' log records and Python warnings (timm's scheduler, torch's deprecations) are hidden
    unless -v asks for them; the library itself never configures logging."""
    import warnings

    log = logging.getLogger("focalnet")
    log.handlers[:] = [h for h in log.handlers if not getattr(h, "_focalnet_cli", False)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._focalnet_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    log.propagate = False
    root = logging.getLogger()
    if verbose:
        logging.captureWarnings(True)
        if not root.handlers:
            root.addHandler(logging.StreamHandler(sys.stderr))
        root.setLevel(logging.WARNING)
    else:
        # a NullHandler on the root stops logging's last-resort printing of third-party WARNINGs
        if not root.handlers:
            root.addHandler(logging.NullHandler())
        warnings.filterwarnings("ignore")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="focalnet", formatter_class=HelpFormatter,
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
    configure_logging(args.verbose)
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
