"""Files in: the one gate every reader of a user's file goes through, and the one way text from a file is shown.

A path a user gives may name anything: a FIFO (reading it blocks forever), /dev/zero (never ends), a device,
a socket, a symlink loop, a folder, a file of many gigabytes, JSON nested ten thousand deep or a YAML "billion
laughs" whose aliases expand a few hundred bytes into gigabytes. Each is refused here, with one line naming the
file, before anything is read or allocated:

- `open_regular` opens regular files only: the kind is checked with `os.stat` first and again with `fstat` on
  the descriptor, which is opened with O_NONBLOCK so that even a FIFO swapped in between cannot block;
- `read_bytes` / `read_text` / `read_json` / `read_yaml` bound the size (`max_text_bytes()`, default 64 MiB,
  $FOCALNET_MAX_TEXT_BYTES), the nesting depth (MAX_DEPTH) and, for YAML, the size with every alias expanded
  (MAX_YAML_NODES); an error never prints the expanded value;
- `present` says whether a path holds anything, a dangling symlink or a loop included, so that a broken file
  is reported instead of being taken for an absent one (and replaced by a default);
- `walk_files` lists a data folder without following folder symlinks (no loops, no image counted twice);
- `printable` escapes control characters, lone surrogates and other invisible characters, so that a class
  name or a folder name from a file can never forge a line of output.

This module is in the base layer: it imports only `focalnet.errors` (and PyYAML inside `loads_yaml`).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import reprlib
import stat
import unicodedata
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional, Union

from .errors import FocalNetError, limit_from_env

__all__ = [
    "InputError",
    "MAX_DEPTH",
    "MAX_TEXT_BYTES",
    "MAX_YAML_NODES",
    "check_regular",
    "describe",
    "loads_json",
    "loads_yaml",
    "max_text_bytes",
    "open_regular",
    "present",
    "printable",
    "read_bytes",
    "read_json",
    "read_text",
    "read_yaml",
    "walk_files",
]

PathLike = Union[str, os.PathLike]
ErrorType = type  # a FocalNetError subclass: the caller's own (CheckpointError, ImageError, ...)

# a JSON or YAML file of settings, a config.json or a sidecar is kilobytes; 64 MiB is far above any real one
MAX_TEXT_BYTES = 64 * 2**20
# nesting of JSON / YAML: real configs nest 3-5 deep; Python's parsers recurse and overflow near 1000
MAX_DEPTH = 64
# YAML nodes once every alias is expanded: a config has hundreds; a billion-laughs file has billions
MAX_YAML_NODES = 100_000


class InputError(FocalNetError, ValueError):
    """A file that cannot be read safely (not a regular file, too large, too deep), or text that is not valid."""


def max_text_bytes() -> int:
    """$FOCALNET_MAX_TEXT_BYTES if set, else MAX_TEXT_BYTES."""
    return limit_from_env("FOCALNET_MAX_TEXT_BYTES", MAX_TEXT_BYTES, "bytes", InputError)


def printable(text: Any) -> str:
    """`text` as one printable line: control characters (newline, escape, NUL, ...), format characters
    (bidirectional overrides), lone surrogates and unassigned code points written as Python escapes."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):  # Cc, Cf, Cs, Co, Cn; line and paragraph separators
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 60, 60


def describe(value: Any) -> str:
    """A short, printable repr of a value from a file, for an error message (never megabytes, never raw
    control characters, never deeper than three levels)."""
    return printable(_SHORT.repr(value))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: PathLike, what: str = "file", error: ErrorType = InputError) -> os.stat_result:
    """The stat of `path` (symlinks followed) if it is a regular file; else `error` naming it: missing, a
    symlink loop, a folder, a FIFO, a device or a socket (reading one could block forever or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        why = "is a dangling symlink" if os.path.islink(path) else "does not exist"
        raise error(f"{what} {printable(path)} {why}") from None
    except OSError as e:
        why = "is a symlink loop" if e.errno == errno.ELOOP else f"cannot be read: {e.strerror or e}"
        raise error(f"{what} {printable(path)} {why}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {printable(path)} is {_kind(st.st_mode)}, not a regular file: refused")
    return st


def open_regular(path: PathLike, what: str = "file", error: ErrorType = InputError,
                 max_bytes: Optional[int] = None) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file of at most `max_bytes` (None: no bound);
    anything else is `error` naming it, raised before a byte is read."""
    check_regular(path, what, error)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check opens at once instead of waiting for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot open {what} {printable(path)}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {printable(path)} is {_kind(st.st_mode)}, not a regular file: refused")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{what} {printable(path)} has {st.st_size} bytes, above the limit of {max_bytes}: refused")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: PathLike, what: str = "file", error: ErrorType = InputError,
               max_bytes: Optional[int] = None) -> bytes:
    """The bytes of regular file `path`, at most `max_bytes` (default `max_text_bytes()`); a file that grows
    past the bound while read is refused too."""
    cap = max_text_bytes() if max_bytes is None else max_bytes
    with open_regular(path, what, error, cap) as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise error(f"{what} {printable(path)} grew past the limit of {cap} bytes while read: refused")
    return data


def read_text(path: PathLike, what: str = "file", error: ErrorType = InputError,
              max_bytes: Optional[int] = None) -> str:
    """`read_bytes` decoded as UTF-8; other bytes (a binary file) are `error` naming the file."""
    data = read_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {printable(path)} is not UTF-8 text (byte {e.start}): a binary or damaged file") from None


def _depth(value: Any) -> int:
    """Nesting depth of lists and dicts, without recursion (a crafted value may be deeper than Python's stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (list, tuple, dict)):
            deepest = max(deepest, d)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads_json(text: Union[str, bytes], where: str, error: ErrorType = InputError) -> Any:
    """JSON `text` (from `where`, for messages), refused when invalid or nested deeper than MAX_DEPTH."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where} is JSON nested deeper than {MAX_DEPTH} levels: refused") from None
    except (ValueError, TypeError) as e:  # JSONDecodeError, a bad encoding
        raise error(f"cannot read {where} as JSON: {printable(e)}") from None
    if _depth(value) > MAX_DEPTH:
        raise error(f"{where} is JSON nested deeper than {MAX_DEPTH} levels: refused")
    return value


def read_json(path: PathLike, what: str = "JSON file", error: ErrorType = InputError) -> Any:
    """The JSON value in regular file `path`, bounded in size (`max_text_bytes()`) and depth (MAX_DEPTH)."""
    return loads_json(read_text(path, what, error), f"{what} {printable(path)}", error)


def _yaml_children(node: Any) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_nodes(root: Any) -> int:
    """How many nodes a composed YAML graph holds with every alias expanded (a shared node counted at each
    use), computed once per distinct node, without recursion: linear in the file, whatever the expansion.
    A recursive alias (a node inside itself) expands without end: more than MAX_YAML_NODES."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids = _yaml_children(node)
        if done:
            open_nodes.discard(id(node))
            size[id(node)] = min(1 + sum(size[id(k)] for k in kids), MAX_YAML_NODES + 1)
            continue
        if id(node) in open_nodes or any(id(k) in open_nodes or k is node for k in kids):
            return MAX_YAML_NODES + 1  # a cycle
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
    return size.get(id(root), 0)


def _yaml_depth(root: Any) -> int:
    """Nesting depth of a composed YAML graph, stopping past MAX_DEPTH (walks the expanded graph: call it
    once `_expanded_nodes` has bounded that)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, d = stack.pop()
        kids = _yaml_children(node)
        if kids:
            deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((k, d + 1) for k in kids)
    return deepest


def loads_yaml(text: str, where: str, error: ErrorType = InputError) -> Any:
    """YAML `text` read with PyYAML's safe loader (no tags that build objects), refused when invalid, nested
    deeper than MAX_DEPTH or larger than MAX_YAML_NODES nodes once its aliases are expanded. The message
    never shows the (expanded) value."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise error(f"{where} is YAML nested deeper than {MAX_DEPTH} levels: refused") from None
    except yaml.YAMLError as e:
        raise error(f"{where} is not valid YAML: {printable(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None
    if root is None:
        return None
    if _expanded_nodes(root) > MAX_YAML_NODES:
        raise error(f"{where} expands to more than {MAX_YAML_NODES} YAML nodes through its aliases "
                    "(an alias bomb?): refused")
    if _yaml_depth(root) > MAX_DEPTH:
        raise error(f"{where} is YAML nested deeper than {MAX_DEPTH} levels: refused")
    try:
        return yaml.SafeLoader(text).construct_document(root)
    except RecursionError:
        raise error(f"{where} is YAML nested deeper than {MAX_DEPTH} levels: refused") from None
    except yaml.YAMLError as e:
        raise error(f"{where} is not valid YAML: {printable(str(e).splitlines()[0] if str(e) else type(e).__name__)}") from None


def read_yaml(path: PathLike, what: str = "YAML file", error: ErrorType = InputError) -> Any:
    """The YAML value in regular file `path`, bounded as `loads_yaml` says, and in size (`max_text_bytes()`)."""
    return loads_yaml(read_text(path, what, error), f"{what} {printable(path)}", error)


def present(path: PathLike) -> bool:
    """Whether anything is at `path`, including a dangling symlink or a symlink loop (which `Path.exists`
    reports as absent): a reader then reports the broken file instead of falling back to a default."""
    return os.path.lexists(path)


def walk_files(root: PathLike, skipped_links: Optional[list] = None) -> Iterator[Path]:
    """Regular files under `root` (symlinks to regular files included), in sorted order, without following
    folder symlinks: a symlink loop cannot hang the walk, a linked folder cannot count images twice. The
    folder symlinks passed over are appended to `skipped_links` when given (for a note to the user)."""
    stack = [Path(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:  # unreadable sub-folder: nothing to list (the caller counts what it found)
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(Path(entry.path))
                elif entry.is_symlink() and entry.is_dir():
                    if skipped_links is not None:
                        skipped_links.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=True):  # a FIFO, device, dangling link or loop is skipped
                    yield Path(entry.path)
            except OSError:
                continue
        stack.extend(reversed(subfolders))
