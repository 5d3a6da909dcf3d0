"""The `focalnet` command line: a thin layer over the library, one module per group of commands.

Each module in COMMAND_MODULES defines `register(subparsers)`, which adds its subcommands and sets
`func` on each; heavy imports happen inside the commands, so that `focalnet list` starts fast.
Errors, for every command alike (`main` applies the rule once): a `focalnet.errors.FocalNetError` (any
project error type) is printed as one line and exits with status 2, and so are the few outside errors a
user fixes alone: an existing output (pass --force), a missing optional package (the message names the
extra to install) and running out of memory. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
from typing import Optional, Sequence

from ..errors import FocalNetError

COMMAND_MODULES = ("models", "train", "inspect", "dense", "deploy")
# the extra of pyproject.toml each group of commands mostly needs: named first when it has a missing package
COMMAND_EXTRAS = {"models": "hub", "train": "train", "inspect": "viz", "dense": "dense", "deploy": "export"}


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


# import names that differ from their package's name on PyPI
_DISTRIBUTIONS = {"yaml": "pyyaml", "PIL": "pillow", "sklearn": "scikit-learn", "skimage": "scikit-image"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def install_hint(module: str, prefer: Optional[str] = None) -> str:
    """`pip install 'focalnet[EXTRA]'` for the extra that provides the top-level module `module`: `prefer`
    (the command's) when it does, else the smallest that does (read from the installed package's metadata,
    so pyproject.toml is the one list); `pip install PACKAGE` when no extra has it."""
    from importlib import metadata

    top = module.split(".")[0]
    wanted = _normalise(_DISTRIBUTIONS.get(top, top))
    extras: dict[str, set[str]] = {}
    try:
        requires = metadata.requires("focalnet") or []
    except metadata.PackageNotFoundError:  # run from a source tree without installing
        requires = []
    for req in requires:
        found = re.match(r"\s*([A-Za-z0-9_.\-]+).*extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if found:
            extras.setdefault(found.group(2), set()).add(_normalise(found.group(1)))
    providers = [e for e, names in extras.items() if wanted in names and e not in ("all", "dev")]
    if not providers:
        return f"pip install {_DISTRIBUTIONS.get(top, top)}"
    extra = prefer if prefer in providers else min(providers, key=lambda e: (len(extras[e]), e))
    return f"pip install 'focalnet[{extra}]'"


def _is_out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # no command that never loaded torch can run out of its memory
    return isinstance(e, MemoryError) or (torch is not None and isinstance(e, torch.OutOfMemoryError))


def user_message(e: BaseException, args: argparse.Namespace) -> Optional[str]:
    """The one line for an error the user can fix; None for a bug, which keeps its traceback."""
    if isinstance(e, FocalNetError):  # the project's own errors carry a message for a person
        return str(e)
    if isinstance(e, FileExistsError):
        text = str(e)
        return text + ("; pass --force to overwrite" if hasattr(args, "force") and "--force" not in text else "")
    if isinstance(e, ModuleNotFoundError) and e.name and e.name.split(".")[0] != "focalnet":
        group = getattr(getattr(args, "func", None), "__module__", "").rpartition(".")[2]
        return f"{e}; {install_hint(e.name, COMMAND_EXTRAS.get(group))}"  # our own module missing is a bug
    if _is_out_of_memory(e):
        return f"out of memory ({type(e).__name__}); use smaller images (--img-size) or a smaller batch"
    return None


class StandardOutputError(FocalNetError, OSError):
    """What a command prints could not be written (standard output is a full disk, /dev/full, ...)."""


class _PipeClosed(Exception):
    """The reader of standard output went away (`focalnet list | head`): it has all it wanted."""


class _GuardedStdout:
    """sys.stdout while a command runs: a failed write or flush of standard output is told apart from every other
    OSError (a file the command writes has its own OutputError), so that it becomes one line, not a traceback."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _guard(self, method: str, *a):
        try:
            return getattr(self._stream, method)(*a)
        except BrokenPipeError as e:
            raise _PipeClosed() from e
        except OSError as e:
            raise StandardOutputError(f"cannot write to standard output: {e.strerror or e}; "
                                      f"redirect it to a file on a disk with space") from e

    def write(self, text: str) -> int:
        return self._guard("write", text)

    def flush(self) -> None:
        self._guard("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    # what is still buffered would fail again at interpreter exit ('Exception ignored ...'): send it nowhere
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _run(args: argparse.Namespace) -> int:
    """The command, with what it prints flushed inside, so a failing standard output is this command's error."""
    real, sys.stdout = sys.stdout, _GuardedStdout(sys.stdout)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
        return status
    finally:
        sys.stdout = real


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return _run(args)
    except _PipeClosed:
        _silence_stdout()
        return 0
    except StandardOutputError as e:
        _silence_stdout()
        print(f"focalnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"focalnet {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_message(e, args)
        if message is None or args.verbose:  # -v: every error with its traceback
            raise
        print(f"focalnet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
